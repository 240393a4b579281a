"""What an export reads from a run folder: the marked images rows, checked, with their objects.

Only images shards with a valid marker count (the run folder's rule: readers trust only marked
shards); missing or unmarked shards are counted and named in the summary, never waited for. The
evaluate stage, where the run has it, is joined on (layout_id, method) for `verify_score` and the
per-box detector scores; `--min-score` needs it. Every PNG is read and fully decoded before it is
exported, so a missing, truncated or replaced image becomes a reject line with its reason instead
of a broken dataset (or a crash half way through a long export).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from lmd_batch.errors import UserError

CANVAS = 512  # layout boxes live on LMD's 512 x 512 canvas
METHODS = ("lmd", "lmd_plus", "sd", "gligen")


@dataclass
class ExportObject:
    """One box of an image: caption, [x, y, w, h] in image pixels, RLE mask in image pixels."""

    caption: str
    bbox: list[float]
    segmentation: dict
    area: int
    mask_source: str  # "mask" (the image stage's per-box mask) | "box" (the rectangle: baselines)
    score: float | None  # detector verification of this box (evaluate stage), None when not evaluated


@dataclass
class ExportImage:
    row: dict  # the images-table row
    png: bytes
    file_name: str  # unique per (layout_id, method): '<readable layout id>.<method>-<hash>.png'
    objects: list[ExportObject]
    verify_score: float | None


@dataclass
class Selection:
    """The marked shards an export reads, and the filters it applies."""

    run: object  # RunFolder
    info: dict  # run.json
    shards_total: int
    images: dict  # {shard_id: Marker} of valid images shards
    evaluate: dict | None  # {shard_id: Marker} of valid evaluate shards; None: the run has no evaluate stage
    method: str | None = None
    min_score: float | None = None
    counts: Counter = field(default_factory=Counter)
    rejects: list = field(default_factory=list)

    @property
    def missing_images_shards(self) -> list[int]:
        return [s for s in range(self.shards_total) if s not in self.images]

    @property
    def rows_marked(self) -> int:
        return sum(m.rows for m in self.images.values())


def select(run_url: str, storage_options: dict | None = None, method: str | None = None,
           min_score: float | None = None) -> Selection:
    """Open a run folder for export; one-line UserErrors for what cannot be exported at all."""
    from lmd_batch.pipeline.registry import STAGES
    from lmd_batch.pipeline.status import valid_markers
    from lmd_batch.storage.run_folder import RunFolder

    if method is not None and method not in METHODS:
        raise UserError(f"--method must be one of {', '.join(METHODS)}, not {method!r}")
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise UserError(f"--min-score must be between 0 and 1 (a detector score), not {min_score}")
    run = RunFolder(run_url, storage_options or {})
    info = run.read_run_info()
    if info is None:
        raise UserError(f"{run_url} is not an lmd-batch run folder (no run.json)")
    stages = info["job"].get("stages") or list(STAGES)
    if "images" not in stages:
        raise UserError(f"run {run_url} has no images stage (its stages: {', '.join(stages)}); nothing to export")
    if method is not None:
        diffusion = info["job"].get("diffusion") or {}
        drawn = diffusion.get("methods") or [diffusion.get("method", "lmd")]
        if method not in drawn:
            raise UserError(f"run {run_url} has no {method} images (its methods: {', '.join(drawn)})")
    has_evaluate = "evaluate" in stages and "evaluate" in STAGES
    valid = valid_markers(run, ["images", "evaluate"] if has_evaluate else ["images"], run.manifest_sha256())
    evaluate = valid["evaluate"] if has_evaluate else None
    if min_score is not None and not evaluate:
        raise UserError(f"--min-score needs detector scores, but run {run_url} has no finished evaluate shards; "
                        f"run the job with the evaluate stage first")
    if not valid["images"]:
        raise UserError(f"nothing to export: no images shard of {run_url} is done (0 of {info['shards']} marked); "
                        f"run the job first")
    return Selection(run=run, info=info, shards_total=int(info["shards"]), images=valid["images"],
                     evaluate=evaluate, method=method, min_score=min_score)


def iter_images(sel: Selection, tick=lambda: None):
    """Yield ExportImage for every selected, readable image, in (shard, row) order.

    Counts land in `sel.counts` (rows, exported, other_method, below_min_score, not_evaluated,
    rejected) and reject lines in `sel.rejects`; `tick()` is called once per images row.
    """
    from lmd_batch.pipeline.stage2_common import safe_name

    for shard_id, marker in sorted(sel.images.items()):
        table = sel.run.read_data("images", shard_id, marker)
        scores = _evaluations(sel, shard_id)
        for row in table.to_pylist():
            tick()
            sel.counts["rows"] += 1
            if sel.method is not None and row["method"] != sel.method:
                sel.counts["other_method"] += 1
                continue
            ev = scores.get((row["layout_id"], row["method"])) if scores is not None else None
            if sel.min_score is not None:
                if ev is None:
                    sel.counts["not_evaluated"] += 1
                    continue
                if ev["verify_score"] < sel.min_score:
                    sel.counts["below_min_score"] += 1
                    continue
            png, problem = _read_png(sel.run, row)
            if problem is not None:
                reason, detail = problem
                sel.counts["rejected"] += 1
                sel.rejects.append(dict(layout_id=row["layout_id"], method=row["method"],
                                        image_path=row["image_path"], reason=reason, detail=detail))
                continue
            sel.counts["exported"] += 1
            yield ExportImage(row=row, png=png, file_name=f"{safe_name(row['layout_id'] + '.' + row['method'])}.png",
                              objects=objects(row, ev), verify_score=None if ev is None else ev["verify_score"])


def _evaluations(sel: Selection, shard_id: int) -> dict | None:
    """{(layout_id, method): evaluate row} of a shard; None when the shard is not evaluated."""
    if not sel.evaluate or shard_id not in sel.evaluate:
        return None
    table = sel.run.read_data("evaluate", shard_id, sel.evaluate[shard_id])
    cols = [c for c in ("layout_id", "method", "verify_score", "box_scores") if c in table.column_names]
    return {(r["layout_id"], r["method"]): r for r in table.select(cols).to_pylist()}


def objects(row: dict, evaluation: dict | None = None) -> list[ExportObject]:
    """The row's boxes in image pixels with their masks (upscaled latent masks, or the rectangle).

    The bbox is the layout box (what the LLM asked for and the generation was guided to). The mask
    is the image stage's per-box mask, already moved onto the box (centre of mass aligned): the
    region whose latents were pasted and frozen, the best object mask the run has, though the
    final denoising steps may move edges a little; it can reach slightly outside the bbox.
    """
    from lmd_batch.export.rle import area, box_rle, latent_mask_rle

    w_img, h_img = int(row["width"]), int(row["height"])
    sx, sy = w_img / CANVAS, h_img / CANVAS
    masks = row.get("masks") or []
    box_scores = (evaluation or {}).get("box_scores") or []
    out = []
    for i, b in enumerate(row["boxes"]):
        bbox = [round(b["x"] * sx, 2), round(b["y"] * sy, 2), round(b["w"] * sx, 2), round(b["h"] * sy, 2)]
        if i < len(masks) and masks[i]:
            seg, source = latent_mask_rle(masks[i], h_img, w_img), "mask"
        else:
            seg, source = box_rle(bbox, h_img, w_img), "box"
        out.append(ExportObject(caption=b["caption"], bbox=bbox, segmentation=seg, area=area(seg),
                                mask_source=source, score=float(box_scores[i]) if i < len(box_scores) else None))
    return out


def _read_png(run, row: dict) -> tuple[bytes | None, tuple[str, str] | None]:
    """(png bytes, None) or (None, (reason, detail)) for an image that cannot go into a dataset."""
    from PIL import Image

    rel = row["image_path"]
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith("/") or ".." in parts:
        return None, ("bad_image_path", f"image path {rel!r} is not inside the run folder")
    try:
        raw = run.loc.read_bytes(rel)
    except FileNotFoundError:
        return None, ("image_missing", f"{run.loc.display(rel)} does not exist")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            size = im.size
    except Exception as exc:  # PIL raises many types for bad bytes (UnidentifiedImageError, OSError, SyntaxError...)
        return None, ("image_unreadable", f"{run.loc.display(rel)} does not decode: {type(exc).__name__}: "
                                          f"{str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": "))
    if size != (row["width"], row["height"]):
        return None, ("image_size_mismatch", f"{run.loc.display(rel)} is {size[0]}x{size[1]}, "
                                             f"the table says {row['width']}x{row['height']}")
    if hashlib.sha256(raw).hexdigest() != row["image_sha256"]:
        return None, ("image_sha256_mismatch", f"{run.loc.display(rel)} is not the image the run wrote "
                                               f"(sha256 differs from images/data)")
    return raw, None
