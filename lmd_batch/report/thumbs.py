"""Thumbnails of one generated image, as JPEG data: URIs, for the self-contained HTML report.

Two panels per image, both small (default 160 px on the long side, a few KB each, so a report of
400+ images stays a few MB):

- layout: the image with each layout box's mask tinted and its box outlined, one colour per box
  (boxes are on LMD's 512 canvas, masks are COCO RLE at latent resolution: both scaled here);
- detections: the image with the detector's boxes (image pixels) outlined: the benchmark
  protocol's detections for a benchmark prompt, the box-caption detections otherwise.

Captions and labels are never drawn into the pixels: the HTML lists them beside the panels in the
same colours (HTML text can be escaped, searched and read at any size).
"""

from __future__ import annotations

import base64
import io

CANVAS = 512  # LMD's layout canvas
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#fabed4",
           "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000", "#aaffc3", "#000075")
MASK_ALPHA = 110  # of 255


class ThumbError(Exception):
    """The image cannot be shown (missing or undecodable); the message is the cell's reason."""


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def decode(png: bytes | None):
    """A PIL RGB image, or ThumbError with a short reason."""
    from PIL import Image

    if png is None:
        raise ThumbError("image file missing")
    try:
        im = Image.open(io.BytesIO(png))
        im.load()
        return im.convert("RGB")
    except Exception as exc:  # PIL raises many types for bad bytes; every one means "cannot show it"
        raise ThumbError(f"image undecodable ({type(exc).__name__}: {str(exc)[:120]})") from None


def _jpeg_uri(im, quality: int = 80) -> str:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def detections_of(evaluation: dict | None) -> tuple[str, list[dict]]:
    """('protocol' | 'boxes' | 'none', detections) to draw for an image's evaluation row."""
    if not evaluation:
        return "none", []
    if evaluation.get("queries"):
        return "protocol", list(evaluation.get("detections") or [])
    return "boxes", list(evaluation.get("box_detections") or [])


def thumbnails(png: bytes | None, row: dict, evaluation: dict | None, px: int = 160) -> dict:
    """{'layout': uri, 'detections': uri | None, 'box_colours': [...], 'dets': [(label, score, colour)],
    'det_kind': str, 'notes': [...], 'size': (w, h)} for one images row; ThumbError when the PNG cannot be shown."""
    from PIL import Image, ImageDraw

    from lmd_batch.pipeline.stage2_common import rle_decode

    im = decode(png)
    w, h = im.size
    s = px / max(w, h)
    tw, th = max(1, round(w * s)), max(1, round(h * s))
    base = im.resize((tw, th), Image.BILINEAR, reducing_gap=2.0)
    notes: list[str] = []

    boxes = row.get("boxes") or []
    box_colours = [colour(i) for i in range(len(boxes))]
    panel = base.convert("RGBA")
    for i, rle in enumerate(row.get("masks") or []):
        try:
            m = rle_decode(rle)
        except (ValueError, KeyError, TypeError):
            notes.append(f"mask {i} does not decode")
            continue
        alpha = Image.fromarray(m * MASK_ALPHA).resize((tw, th), Image.NEAREST)
        tint = Image.new("RGBA", (tw, th), _rgb(colour(i)) + (0,))
        tint.putalpha(alpha)
        panel = Image.alpha_composite(panel, tint)
    draw = ImageDraw.Draw(panel)
    sx, sy = w / CANVAS * s, h / CANVAS * s
    for i, b in enumerate(boxes):
        _rect(draw, b["x"] * sx, b["y"] * sy, b["w"] * sx, b["h"] * sy, colour(i), tw, th)
    out = dict(layout=_jpeg_uri(panel), detections=None, box_colours=box_colours, dets=[], notes=notes,
               size=(tw, th))

    kind, dets = detections_of(evaluation)
    out["det_kind"] = kind
    if kind != "none":
        caption_colour = {}
        for i, b in enumerate(boxes):
            caption_colour.setdefault(b["caption"], colour(i))
        labels: dict[str, str] = {}
        panel = base.copy()
        draw = ImageDraw.Draw(panel)
        for d in dets:  # a label that is a caption keeps its box's colour; others get the next colours
            c = caption_colour.get(d["label"]) or labels.setdefault(d["label"], colour(len(boxes) + len(labels)))
            _rect(draw, d["x"] * s, d["y"] * s, d["w"] * s, d["h"] * s, c, tw, th)
            out["dets"].append((d["label"], float(d["score"]), c))
        out["detections"] = _jpeg_uri(panel)
    return out


def _rect(draw, x, y, w, h, c: str, tw: int, th: int) -> None:
    """An outline kept inside the thumbnail (a box on the edge stays visible)."""
    x0, y0 = min(max(x, 0), tw - 1), min(max(y, 0), th - 1)
    x1, y1 = min(max(x + w - 1, x0), tw - 1), min(max(y + h - 1, y0), th - 1)
    draw.rectangle([x0, y0, x1, y1], outline=c, width=2)


def placeholder(reason: str) -> dict:
    """The cell data of an image that cannot be shown."""
    return dict(layout=None, detections=None, box_colours=[], dets=[], det_kind="none", notes=[], error=reason)
