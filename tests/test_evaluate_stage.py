"""The evaluate stage and `lmd-batch bench images` on a real run (tiny models, real OWL-ViT code).

The tiny OWL-ViT has random weights, so what it "sees" is noise; these tests check the plumbing
against an independent computation with transformers + torchvision (label mapping, the score
threshold, class-aware NMS, pixel boxes), on images the test draws with known objects, plus the
comparison table, resume, and bad inputs (unfinished shards, broken and missing PNGs, an empty run).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _rows(run: Path, stage: str, kind: str = "data") -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in sorted((run / stage / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _bench_images(*args):
    from typer.testing import CliRunner

    from lmd_batch.cli import app

    return CliRunner().invoke(app, ["bench", "images", *[str(a) for a in args]], env={"COLUMNS": "200"})


def _copy(run: Path, tmp_path: Path, drop_evaluate: bool = True) -> Path:
    out = tmp_path / "run-copy"
    shutil.copytree(run, out)
    if drop_evaluate:
        shutil.rmtree(out / "evaluate", ignore_errors=True)
    return out


def reference_detections(image, labels: list[str], threshold: float, nms: float) -> list[tuple]:
    """OWL-ViT + class-aware NMS written directly against transformers and torchvision.

    Without ties in the scores this is `torchvision.ops.batched_nms`; with ties (see below) the
    detector's order decides, as in our stage."""
    import torch
    from torchvision.ops import box_iou
    from transformers import OwlViTForObjectDetection, OwlViTProcessor

    from lmd_batch.models.registry import builtin_dir

    path = builtin_dir("tiny-owlvit")
    proc, model = OwlViTProcessor.from_pretrained(path), OwlViTForObjectDetection.from_pretrained(path).eval()
    inputs = proc(text=[["a photo of " + lb for lb in labels]], images=image.convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    # best query by logit, then its sigmoid (the random model saturates sigmoids to 1.0, so taking
    # the max of sigmoids would tie queries that the logits tell apart)
    logits, best = out.logits[0].max(-1)                  # over queries
    scores = torch.sigmoid(logits)
    cx, cy, w, h = out.pred_boxes[0].unbind(-1)
    W, H = image.size
    xyxy = torch.stack([(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H], -1)
    # Greedy class-aware NMS over a *stable* best-first order: the random tiny model saturates
    # many scores to exactly 1.0, and torchvision's nms breaks such ties in its own order.
    order = [int(i) for i in torch.sort(scores, descending=True, stable=True).indices if scores[i] >= threshold]
    iou = box_iou(xyxy, xyxy)
    kept = []
    for i in order:
        # suppress only when IoU > nms: the random model predicts zero-area boxes, whose IoU is
        # 0/0 = NaN, never above the threshold (as in torchvision's own nms)
        if not any(best[k] == best[i] and iou[k, i] > nms for k in kept):
            kept.append(i)
    return sorted((labels[int(best[i])], round(float(scores[i]), 5), *(round(float(v), 2) for v in xyxy[i]))
                  for i in kept)


def _as_tuples(dets: list[dict]) -> list[tuple]:
    return sorted((d["label"], round(d["score"], 5), round(d["x"], 2), round(d["y"], 2), round(d["x"] + d["w"], 2),
                   round(d["y"] + d["h"], 2)) for d in dets)


def test_evaluations_of_a_whole_run(evaluated_run):
    from lmd_batch.evaluate.protocol import bench_prompt, iou, protocol_labels, queries_for

    images = _rows(evaluated_run, "images")
    evals = _rows(evaluated_run, "evaluate")
    assert len(images) == 10 and {r["method"] for r in images} == {"lmd", "sd"}  # 5 layouts x 2 methods
    assert sorted((r["layout_id"], r["method"]) for r in evals) == sorted((r["layout_id"], r["method"]) for r in images)
    by_key = {(r["layout_id"], r["method"]): r for r in images}
    cats = set()
    for ev in evals:
        img = by_key[(ev["layout_id"], ev["method"])]
        bp = bench_prompt(img["prompt"])
        if bp is None:
            assert ev["category"] is None and ev["queries"] == [] and ev["passed"] is None and ev["detections"] == []
        else:
            cats.add(ev["category"])
            assert ev["category"] == bp.category and ev["queries"] == queries_for(protocol_labels(bp))
            assert isinstance(ev["passed"], bool)
            assert {d["label"] for d in ev["detections"]} <= set(protocol_labels(bp))
        for dets in (ev["detections"], ev["box_detections"]):
            assert all(d["score"] >= 0.15 for d in dets)
            assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
            for i, a in enumerate(dets):  # class-aware NMS: no same-label pair overlaps by more than 0.15
                for b in dets[i + 1:]:
                    A, B = ((x["x"], x["y"], x["w"], x["h"]) for x in (a, b))
                    assert a["label"] != b["label"] or iou(A, B) <= 0.15 + 1e-9
        assert {d["label"] for d in ev["box_detections"]} <= {b["caption"] for b in img["boxes"]}
        assert len(ev["box_scores"]) == len(img["boxes"])
        assert ev["verify_score"] == (min(ev["box_scores"]) if ev["box_scores"] else 1.0)
        assert (ev["width"], ev["height"]) == (128, 128)
    assert cats == {"negation", "numeracy", "attribution", "spatial"}


def test_detections_match_an_independent_owlvit_on_drawn_images(evaluated_run, tmp_path):
    """Replace every PNG by a drawn scene (known shapes and colours) and evaluate again."""
    from PIL import Image, ImageDraw

    run = _copy(evaluated_run, tmp_path)
    images = _rows(run, "images")
    colours = ["red", "blue", "white", "green", "black"]
    for i, r in enumerate(images):
        im = Image.new("RGB", (128, 128), "lightgray")
        d = ImageDraw.Draw(im)
        d.ellipse((8 + 4 * i, 40, 58 + 4 * i, 90), fill=colours[i % 5])
        d.rectangle((70, 20 + 3 * i, 120, 70 + 3 * i), fill=colours[(i + 2) % 5])
        im.save(run / r["image_path"])
    res = _bench_images("--run", run, "--executor", "local", "--json")
    assert res.exit_code == 0, res.output
    evals = {(r["layout_id"], r["method"]): r for r in _rows(run, "evaluate")}
    compared = 0
    for r in images:
        ev = evals[(r["layout_id"], r["method"])]
        image = Image.open(run / r["image_path"])
        if ev["queries"]:
            labels = [q[len("a photo of "):] for q in ev["queries"]]
            assert _as_tuples(ev["detections"]) == reference_detections(image, labels, 0.15, 0.15)
            compared += 1
        captions = list(dict.fromkeys(b["caption"] for b in r["boxes"]))
        if captions:
            assert _as_tuples(ev["box_detections"]) == reference_detections(image, captions, 0.15, 0.15)
    assert compared == 8


def test_bench_images_table_compares_methods_with_the_layout_bound(evaluated_run, tmp_path):
    run = _copy(evaluated_run, tmp_path)
    res = _bench_images("--run", run, "--executor", "local", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert set(out) >= {"lmd", "sd", "layouts", "shards", "missing"}
    for m in ("lmd", "sd"):
        assert out[m]["images"] == 4  # the four benchmark prompts; the ordinary one is verification only
        for cat in ("negation", "numeracy", "attribution", "spatial"):
            assert out[m][cat] in (0.0, 100.0)
        assert out[m]["overall"] == pytest.approx(sum(out[m][c] for c in
                                                      ("negation", "numeracy", "attribution", "spatial")) / 4)
    # GPT-3.5's published layouts for these four prompts are all correct: the bound is 100
    assert out["layouts"] == dict(negation=100.0, numeracy=100.0, attribution=100.0, spatial=100.0,
                                  overall=100.0, images=4)
    assert out["missing"] == [] and out["shards"] == dict(total=3, images=3, evaluated=3)
    # The same numbers as the stored evaluations say, and a rerun evaluates nothing again.
    evals = _rows(run, "evaluate")
    lmd = [r for r in evals if r["method"] == "lmd" and r["category"] is not None]
    assert out["lmd"]["overall"] == pytest.approx(100.0 * sum(r["passed"] for r in lmd) / 4)
    before = {p: p.stat().st_mtime_ns for p in (run / "evaluate" / "done").glob("*")}
    table = _bench_images("--run", run, "--executor", "local")
    assert table.exit_code == 0, table.output
    assert "layouts (upper bound)" in table.output and "lmd" in table.output and "sd" in table.output
    assert {p: p.stat().st_mtime_ns for p in (run / "evaluate" / "done").glob("*")} == before


def test_evaluation_is_deterministic(evaluated_run, tmp_path):
    run = _copy(evaluated_run, tmp_path)
    assert _bench_images("--run", run, "--executor", "local", "--json").exit_code == 0
    for f in sorted((evaluated_run / "evaluate" / "data").glob("*.parquet")):
        assert (run / "evaluate" / "data" / f.name).read_bytes() == f.read_bytes()


def test_unfinished_shard_broken_and_missing_images(evaluated_run, tmp_path):
    run = _copy(evaluated_run, tmp_path)
    images = _rows(run, "images")
    # shard 2's images are not finished: its marker is gone
    (run / "images" / "done" / "shard-00002.json").unlink()
    shard0 = [r for r in images if r["image_path"].startswith("images/png/shard-00000/")]
    (run / shard0[0]["image_path"]).write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (run / shard0[1]["image_path"]).unlink()
    res = _bench_images("--run", run, "--executor", "local", "--json")
    assert res.exit_code == 0, res.output
    assert "images: 1 of 3 shards not finished (shards 2)" in res.output
    rejects = {r["image_path"]: r for r in _rows(run, "evaluate", "rejects")}
    assert rejects[shard0[0]["image_path"]]["reason"] == "image_unreadable"
    assert rejects[shard0[1]["image_path"]]["reason"] == "image_missing"
    assert len(rejects) == 2
    evaluated = {r["image_path"] for r in _rows(run, "evaluate")}
    assert len(evaluated) == len([r for r in images if not r["image_path"].startswith("images/png/shard-00002/")]) - 2
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["rejects"] == 2 and out["shards"]["evaluated"] == 2


def test_empty_and_foreign_runs(tmp_path, write_job):
    from lmd_batch.config import load_job
    from lmd_batch.pipeline.runner import run_job

    # A run whose only finished stage is ingest: nothing to evaluate, every shard reported missing.
    job = load_job(write_job(tmp_path, stages=["ingest"]))
    run_job(job, log=lambda *a: None)
    res = _bench_images("--run", job.run.url, "--executor", "local", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["layouts"] is None and out["shards"]["images"] == 0 and len(out["missing"]) == 2
    assert "no benchmark images evaluated" in _bench_images("--run", job.run.url, "--no-evaluate").output
    res = _bench_images("--run", tmp_path / "nowhere")
    assert res.exit_code == 1 and "not an lmd-batch run folder" in res.output
