"""`lmd-batch export coco|parquet`: grounded datasets from a finished run (issue 6, item 4).

Everything runs on the shared `evaluated_run` (tiny models, methods lmd and sd, every stage) or
on a copy of it that the test damages: an unmarked shard, a PNG replaced by junk, a deleted PNG,
an empty run, a run without evaluations. The COCO file is read back with pycocotools, the
Parquet files with pyarrow and PIL; expected masks are computed here from the images table
(latent RLE decoded and upscaled with np.kron), independently of the export code.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


# helpers ------------------------------------------------------------------------------------

def _cli(*args):
    """`lmd-batch export ...` in-process, on a typer app that has only what register() adds."""
    import typer
    from typer.testing import CliRunner

    from lmd_batch.cli_export import register

    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def main():  # a group, as in the real CLI
        pass

    register(app)
    return CliRunner().invoke(app, ["export", *[str(a) for a in args]])


def _rows(run: Path, stage: str) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in sorted((run / stage / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run-copy"
    shutil.copytree(run, out)
    return out


def _expected_masks(row: dict) -> list:
    """Per box, the {0,1} mask in image pixels the export must write (computed without the export code)."""
    import numpy as np

    from lmd_batch.pipeline.stage2_common import rle_decode

    w, h = row["width"], row["height"]
    out = []
    for i, b in enumerate(row["boxes"]):
        if row["masks"]:
            small = rle_decode(row["masks"][i])
            out.append(np.kron(small, np.ones((h // small.shape[0], w // small.shape[1]), dtype=np.uint8)))
        else:  # baselines: the box rectangle, pixel centres inside the box
            m = np.zeros((h, w), dtype=np.uint8)
            sx, sy = w / 512, h / 512
            m[round(b["y"] * sy):round((b["y"] + b["h"]) * sy), round(b["x"] * sx):round((b["x"] + b["w"]) * sx)] = 1
            out.append(m)
    return out


def _bbox(row: dict, b: dict) -> list[float]:
    sx, sy = row["width"] / 512, row["height"] / 512
    return [round(b["x"] * sx, 2), round(b["y"] * sy, 2), round(b["w"] * sx, 2), round(b["h"] * sy, 2)]


def _coco(out: Path):
    from pycocotools.coco import COCO

    return COCO(str(out / "annotations.json"))


def _parquet_rows(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in sorted((out / "data").glob("train-*.parquet")) for r in pq.read_table(f).to_pylist()]


def _set_scores(run: Path, scores: dict) -> None:
    """Rewrite the run's evaluate shards with verify_score from `scores` {(layout_id, method): s}, marked
    as the stage marks them (so they stay valid): a real run with a known score distribution."""
    from lmd_batch.schemas import table_from_rows
    from lmd_batch.storage.run_folder import RunFolder

    rf = RunFolder(str(run))
    for shard_id, marker in rf.markers("evaluate").items():
        rows = rf.read_data("evaluate", shard_id, marker).to_pylist()
        for r in rows:
            r["verify_score"] = scores[(r["layout_id"], r["method"])]
        rf.write_shard("evaluate", shard_id, table_from_rows(rows, "evaluations"),
                       rf.read_rejects("evaluate", shard_id, marker), "evaluations", "evaluations_rejects",
                       marker.upstream, marker.stats)


# COCO ---------------------------------------------------------------------------------------

def test_coco_loads_in_pycocotools_masks_and_round_trip(evaluated_run, tmp_path):
    import numpy as np

    images = _rows(evaluated_run, "images")
    evals = {(r["layout_id"], r["method"]): r for r in _rows(evaluated_run, "evaluate")}
    assert {r["method"] for r in images} == {"lmd", "sd"}
    out = tmp_path / "coco"
    res = _cli("coco", evaluated_run, out)
    assert res.exit_code == 0, res.output
    assert "wrote" in res.stdout and "warning" not in res.output
    coco = _coco(out)
    assert len(coco.imgs) == len(images)
    assert (out / "rejects.jsonl").read_text() == ""
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert sorted(names.values()) == sorted({b["caption"] for r in images for b in r["boxes"]})
    by_key = {(i["layout_id"], i["method"]): i for i in coco.imgs.values()}
    for row in images:
        img = by_key[(row["layout_id"], row["method"])]
        assert (img["width"], img["height"], img["prompt"]) == (row["width"], row["height"], row["prompt"])
        png = (out / "images" / img["file_name"]).read_bytes()
        assert hashlib.sha256(png).hexdigest() == row["image_sha256"]  # the run's bytes, unchanged
        assert img["verify_score"] == evals[(row["layout_id"], row["method"])]["verify_score"]
        anns = sorted(coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])), key=lambda a: a["id"])
        # round trip: every box comes back, in order, with its caption and its box in pixels
        assert [(names[a["category_id"]], a["bbox"]) for a in anns] == \
            [(b["caption"], _bbox(row, b)) for b in row["boxes"]]
        for a, expected in zip(anns, _expected_masks(row)):
            mask = coco.annToMask(a)
            assert mask.shape == (row["height"], row["width"])
            assert np.array_equal(mask, expected)
            assert a["area"] == int(expected.sum()) > 0
            assert a["iscrowd"] == 0
            assert a["mask_source"] == ("mask" if row["method"] == "lmd" else "box")
    assert len(coco.anns) == sum(len(r["boxes"]) for r in images)


def test_coco_method_filter_and_output_folder_rules(evaluated_run, tmp_path):
    out = tmp_path / "coco"
    res = _cli("coco", evaluated_run, out, "--method", "sd")
    assert res.exit_code == 0, res.output
    coco = _coco(out)
    assert {i["method"] for i in coco.imgs.values()} == {"sd"}
    assert len(coco.imgs) == sum(r["method"] == "sd" for r in _rows(evaluated_run, "images"))
    assert {a["mask_source"] for a in coco.anns.values()} == {"box"}

    again = _cli("coco", evaluated_run, out)  # a previous export is never silently mixed with a new one
    assert again.exit_code == 1 and "not empty" in again.stderr and "--overwrite" in again.stderr
    res = _cli("coco", evaluated_run, out, "--overwrite", "--method", "lmd")
    assert res.exit_code == 0, res.output
    coco = _coco(out)
    assert {i["method"] for i in coco.imgs.values()} == {"lmd"}
    assert len(list((out / "images").iterdir())) == len(coco.imgs)  # the sd files are gone

    (out / "mine.txt").write_text("not an export")
    res = _cli("coco", evaluated_run, out, "--overwrite")
    assert res.exit_code == 1 and "mine.txt" in res.stderr and (out / "mine.txt").exists()

    for args, text in ((("--method", "gligen"), "has no gligen images"), (("--method", "dalle"), "--method must be"),
                       (("--min-score", "1.5"), "between 0 and 1")):
        res = _cli("coco", evaluated_run, tmp_path / "x", *args)
        assert res.exit_code == 1 and text in res.stderr and "Traceback" not in res.output
        assert not (tmp_path / "x").exists()
    res = _cli("coco", tmp_path / "no-run", tmp_path / "x")
    assert res.exit_code == 1 and "not an lmd-batch run folder" in res.stderr
    res = _cli("coco", evaluated_run, evaluated_run / "export")
    assert res.exit_code == 1 and "overlap" in res.stderr and not (evaluated_run / "export").exists()


# Parquet ------------------------------------------------------------------------------------

def test_parquet_schema_images_objects(evaluated_run, tmp_path):
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image
    from pycocotools import mask as mask_utils

    from lmd_batch.export.hf_parquet import arrow_schema

    images = _rows(evaluated_run, "images")
    evals = {(r["layout_id"], r["method"]): r for r in _rows(evaluated_run, "evaluate")}
    out = tmp_path / "pq"
    res = _cli("parquet", evaluated_run, out)
    assert res.exit_code == 0, res.output
    files = sorted((out / "data").glob("train-*.parquet"))
    assert len(files) == 1
    schema = pq.read_schema(files[0])
    assert schema.equals(arrow_schema(), check_metadata=False)
    assert str(schema.field("image").type) == "struct<bytes: binary, path: string>"
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    assert "split: train" in (out / "README.md").read_text() and "data/train-*" in (out / "README.md").read_text()

    rows = _parquet_rows(out)
    assert [(r["layout_id"], r["method"]) for r in rows] == [(r["layout_id"], r["method"]) for r in images]
    for src, r in zip(images, rows):
        with Image.open(io.BytesIO(r["image"]["bytes"])) as im:
            assert im.size == (src["width"], src["height"])
        assert r["image"]["path"].endswith(".png")
        assert (r["prompt"], r["method"], r["width"], r["height"]) == \
            (src["prompt"], src["method"], src["width"], src["height"])
        ev = evals[(src["layout_id"], src["method"])]
        assert r["verify_score"] == ev["verify_score"]
        obj = r["objects"]
        assert obj["category"] == [b["caption"] for b in src["boxes"]]
        assert obj["bbox"] == [[pytest.approx(v, abs=1e-3) for v in _bbox(src, b)] for b in src["boxes"]]
        assert obj["score"] == pytest.approx(ev["box_scores"])
        for m, area, expected in zip(obj["mask"], obj["area"], _expected_masks(src)):
            decoded = mask_utils.decode(mask_utils.frPyObjects(m, *m["size"]))
            assert np.array_equal(decoded, expected) and area == int(expected.sum())


def test_parquet_files_split_by_size(evaluated_run, tmp_path):
    from lmd_batch.export.hf_parquet import export_parquet
    from lmd_batch.export.source import select

    res = export_parquet(select(str(evaluated_run)), str(tmp_path / "pq"), max_file_bytes=1)
    images = _rows(evaluated_run, "images")
    assert len(res["files"]) == len(images)  # one file per row at this size
    assert [r["layout_id"] for r in _parquet_rows(tmp_path / "pq")] == [r["layout_id"] for r in images]


def test_parquet_loads_with_hf_datasets(evaluated_run, tmp_path):
    """Where the `datasets` package is installed (not a dependency of lmd-batch): load_dataset reads it."""
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "pq"
    assert _cli("parquet", evaluated_run, out).exit_code == 0
    ds = datasets.load_dataset(str(out), split="train")
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds[0]["image"].size == (ds[0]["width"], ds[0]["height"])
    assert len(ds) == len(_rows(evaluated_run, "images"))


# --min-score --------------------------------------------------------------------------------

def test_min_score_keeps_verified_images(evaluated_run, tmp_path):
    run = _copy(evaluated_run, tmp_path)
    keys = sorted((r["layout_id"], r["method"]) for r in _rows(run, "images"))
    scores = {k: round(i / len(keys), 3) for i, k in enumerate(keys)}  # spread over [0, 1)
    _set_scores(run, scores)
    threshold = 0.5
    kept = sorted(k for k, s in scores.items() if s >= threshold)
    assert 0 < len(kept) < len(keys)

    res = _cli("parquet", run, tmp_path / "pq", "--min-score", threshold)
    assert res.exit_code == 0, res.output
    rows = _parquet_rows(tmp_path / "pq")
    assert sorted((r["layout_id"], r["method"]) for r in rows) == kept
    assert all(r["verify_score"] >= threshold for r in rows)
    assert f"{len(keys) - len(kept)} images below it" in res.stderr

    res = _cli("coco", run, tmp_path / "coco", "--min-score", threshold)
    assert res.exit_code == 0, res.output
    assert sorted((i["layout_id"], i["method"]) for i in _coco(tmp_path / "coco").imgs.values()) == kept

    # the real scores of the real run: 0 keeps every evaluated image
    res = _cli("coco", evaluated_run, tmp_path / "coco0", "--min-score", 0)
    assert res.exit_code == 0 and len(_coco(tmp_path / "coco0").imgs) == len(_rows(evaluated_run, "evaluate"))


def test_min_score_with_missing_or_no_evaluations(evaluated_run, tmp_path):
    import pyarrow.parquet as pq

    run = _copy(evaluated_run, tmp_path)
    # one evaluate shard unmarked: its images have no score and cannot pass the filter
    (run / "evaluate" / "done" / "shard-00000.json").unlink()
    unscored = {(r["layout_id"], r["method"])
                for r in pq.read_table(run / "images" / "data" / "shard-00000.parquet").to_pylist()}
    res = _cli("parquet", run, tmp_path / "pq0", "--min-score", 0)
    assert res.exit_code == 0, res.output
    assert f"{len(unscored)} without an evaluation" in res.stderr
    exported = {(r["layout_id"], r["method"]) for r in _parquet_rows(tmp_path / "pq0")}
    assert exported == {(r["layout_id"], r["method"]) for r in _rows(run, "images")} - unscored and exported

    # no evaluate shard at all: a one-line error, nothing written
    shutil.rmtree(run / "evaluate" / "done")
    res = _cli("parquet", run, tmp_path / "pq", "--min-score", 0.3)
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: --min-score needs detector scores")
    assert not (tmp_path / "pq").exists()
    res = _cli("parquet", run, tmp_path / "pq")  # without the filter the run still exports, scores null
    assert res.exit_code == 0, res.output
    assert {r["verify_score"] for r in _parquet_rows(tmp_path / "pq")} == {None}


# bad inputs ---------------------------------------------------------------------------------

def test_unmarked_images_shard_exports_the_rest(evaluated_run, tmp_path):
    run = _copy(evaluated_run, tmp_path)
    markers = sorted((run / "images" / "done").glob("shard-*.json"))
    assert len(markers) >= 2
    markers[1].unlink()
    total = json.loads((run / "run.json").read_text())["shards"]
    res = _cli("coco", run, tmp_path / "coco")
    assert res.exit_code == 0, res.output
    assert f"1 of {total} images shards are missing or unmarked" in res.stderr and "(shards 1)" in res.stderr
    import pyarrow.parquet as pq

    left_out = {r["layout_id"] for r in pq.read_table(run / "images" / "data" / "shard-00001.parquet").to_pylist()}
    exported = {i["layout_id"] for i in _coco(tmp_path / "coco").imgs.values()}
    assert exported == {r["layout_id"] for r in _rows(run, "images")} - left_out and exported


def test_broken_and_missing_pngs_become_rejects(evaluated_run, tmp_path):
    run = _copy(evaluated_run, tmp_path)
    images = _rows(run, "images")
    (run / images[0]["image_path"]).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (run / images[1]["image_path"]).unlink()
    for fmt in ("coco", "parquet"):
        out = tmp_path / fmt
        res = _cli(fmt, run, out)
        assert res.exit_code == 0, res.output
        assert "warning: 2 images could not be read" in res.stderr and "image_unreadable 1" in res.stderr
        rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
        assert sorted((r["layout_id"], r["method"], r["reason"]) for r in rejects) == sorted([
            (images[0]["layout_id"], images[0]["method"], "image_unreadable"),
            (images[1]["layout_id"], images[1]["method"], "image_missing")])
    assert len(_coco(tmp_path / "coco").imgs) == len(images) - 2
    assert len(_parquet_rows(tmp_path / "parquet")) == len(images) - 2


def test_empty_runs(evaluated_run, tmp_path):
    from lmd_batch.schemas import table_from_rows
    from lmd_batch.storage.run_folder import RunFolder

    # no images shard done at all: nothing to export, a one-line error, nothing written
    run = _copy(evaluated_run, tmp_path)
    shutil.rmtree(run / "images" / "done")
    res = _cli("coco", run, tmp_path / "coco")
    assert res.exit_code == 1 and res.stderr.startswith("error: nothing to export: no images shard")
    assert not (tmp_path / "coco").exists()

    # every shard done but no image in any (e.g. every prompt rejected): valid empty datasets
    shutil.rmtree(run)
    run = _copy(evaluated_run, tmp_path)
    rf = RunFolder(str(run))
    for shard_id, marker in rf.markers("images").items():
        rf.write_shard("images", shard_id, table_from_rows([], "images"), table_from_rows([], "images_rejects"),
                       "images", "images_rejects", marker.upstream, marker.stats)
    res = _cli("coco", run, tmp_path / "coco")
    assert res.exit_code == 0 and "empty dataset" in res.stderr
    coco = _coco(tmp_path / "coco")
    assert (len(coco.imgs), len(coco.anns), len(coco.cats)) == (0, 0, 0)
    res = _cli("parquet", run, tmp_path / "pq")
    assert res.exit_code == 0 and "0 images" in res.stdout
    import pyarrow.parquet as pq

    from lmd_batch.export.hf_parquet import arrow_schema

    table = pq.read_table(tmp_path / "pq" / "data" / "train-00000.parquet")
    assert table.num_rows == 0 and table.schema.equals(arrow_schema(), check_metadata=False)


def test_run_and_output_on_fsspec_urls(evaluated_run, tmp_path):
    """A run folder and an output folder that are URLs (fsspec memory://), as on an object store."""
    import uuid

    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/export-tests/{uuid.uuid4().hex[:8]}"
    fs.put(str(evaluated_run), f"{root}/run", recursive=True)
    try:
        res = _cli("coco", f"memory://{root}/run", f"memory://{root}/coco")
        assert res.exit_code == 0, res.output
        doc = json.loads(fs.cat_file(f"{root}/coco/annotations.json"))
        assert len(doc["images"]) == len(_rows(evaluated_run, "images"))
        assert all(fs.exists(f"{root}/coco/images/{i['file_name']}") for i in doc["images"])
    finally:
        fs.rm(root, recursive=True)


def test_exports_are_deterministic(evaluated_run, tmp_path):
    """Same run, same versions: the same bytes (ids follow the run's shard and row order)."""
    for fmt, rel in (("coco", "annotations.json"), ("parquet", "data/train-00000.parquet")):
        a, b = tmp_path / f"{fmt}-a", tmp_path / f"{fmt}-b"
        assert _cli(fmt, evaluated_run, a).exit_code == 0 and _cli(fmt, evaluated_run, b).exit_code == 0
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
