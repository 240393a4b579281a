"""Turn a parsed layout into one stage 2 can use, or reject it with a short reason code.

Parsing (``completion.parse_completion``) only checks syntax. Here we apply the semantic rules:
tidy captions, drop boxes that cannot be drawn, apply LMD's ``filter_boxes`` (so behaviour
matches the reference), and cap sizes so one runaway completion cannot blow up stage 2's
per-box cost. Every change is recorded as a note, so a run can explain why the stored layout
differs from the raw completion. Whitespace tidying and a trailing period on the background are
cosmetic and not noted.
"""

from __future__ import annotations

import math
from dataclasses import replace

from lmd_batch.layout.completion import parse_completion
from lmd_batch.layout.lmd_text import CANVAS, Layout, LayoutParseError, filter_boxes
from lmd_batch.layout.template import MAX_BACKGROUND_CHARS, MAX_CAPTION_CHARS, MAX_NEGATIVE_CHARS


class LayoutRejected(ValueError):
    """Nothing usable is left; ``reason`` is a short code for failure records, ``detail`` says more."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _squash(text) -> str:
    return " ".join(str(text).split())


def _cut(text: str, limit: int) -> str:
    """Shorten to at most ``limit`` characters, at a word boundary when there is one."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    if text[limit] != " " and " " in head:
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" ,;:-")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _clamp(box, canvas: int):
    """Keep a rounded box inside the canvas (guards against off-by-one from rounding)."""
    x, y = min(max(box.x, 0), canvas - 1), min(max(box.y, 0), canvas - 1)
    return replace(box, x=x, y=y, w=min(box.w, canvas - x), h=min(box.h, canvas - y))


def repair_layout(layout: Layout, max_boxes: int = 16, canvas: int = CANVAS,
                  max_caption_chars: int = MAX_CAPTION_CHARS) -> tuple[Layout, list[str]]:
    """Return (repaired layout, notes). Never raises for content; see :func:`validate_layout`."""
    notes: list[str] = []
    boxes = []
    for i, b in enumerate(layout.boxes):
        caption = _squash(b.caption)
        if not caption:
            notes.append(f"dropped box {i}: empty caption")
            continue
        if len(caption) > max_caption_chars:
            caption = _cut(caption, max_caption_chars)
            notes.append(f"truncated caption of box {i} to {len(caption)} characters")
        if not all(_finite(v) for v in b.as_list()):
            notes.append(f"dropped box {i} ({caption!r}): non-finite number")
            continue
        boxes.append(replace(b, caption=caption))

    boxes, filter_notes = filter_boxes(boxes, canvas)
    notes.extend(filter_notes)

    kept = []
    for b in boxes:
        if not b.caption:  # a caption that was only "."
            notes.append("dropped a box whose caption was only '.'")
        elif b.w < 1 or b.h < 1:
            notes.append(f"dropped box {b.caption!r}: smaller than a pixel")
        else:
            fixed = _clamp(b, canvas)
            if fixed != b:
                notes.append(f"clamped box {b.caption!r} to the canvas")
            kept.append(fixed)
    if len(kept) > max_boxes:
        notes.append(f"kept the first {max_boxes} of {len(kept)} boxes")
        kept = kept[:max_boxes]

    background = _squash(layout.background)
    if background.endswith("."):
        background = background[:-1].rstrip()
    if len(background) > MAX_BACKGROUND_CHARS:
        background = _cut(background, MAX_BACKGROUND_CHARS)
        notes.append(f"truncated background prompt to {len(background)} characters")
    negative = _squash(layout.negative)
    if negative.lower() == "none":
        negative = ""
    if len(negative) > MAX_NEGATIVE_CHARS:
        negative = _cut(negative, MAX_NEGATIVE_CHARS)
        notes.append(f"truncated negative prompt to {len(negative)} characters")
    return Layout(boxes=kept, background=background, negative=negative), notes


def validate_layout(layout: Layout, raw_box_count: int) -> None:
    """Raise :class:`LayoutRejected` when a repaired layout gives stage 2 nothing to draw.

    Zero boxes with a background is a valid layout, as in LMD: "an empty beach", or a negation
    prompt whose only box covered the whole canvas (dropped as a background box, e.g. GPT-3.5's
    "a realistic scene" at [0, 0, 512, 512]); stage 2 then draws the background alone. Without a
    background there is nothing to draw.
    """
    if layout.boxes or layout.background:
        return
    if raw_box_count > 0:
        raise LayoutRejected("no_valid_boxes", f"all {raw_box_count} boxes were dropped and there is no background")
    raise LayoutRejected("empty_layout", "no boxes and no background prompt")


def read_layout(text: str, max_boxes: int = 16, canvas: int = CANVAS) -> tuple[Layout, str, list[str]]:
    """Parse, repair and validate one completion: (layout, "json" | "text", notes)."""
    try:
        raw, fmt = parse_completion(text)
    except LayoutParseError as exc:
        raise LayoutRejected("unparseable", exc.reason) from None
    layout, notes = repair_layout(raw, max_boxes=max_boxes, canvas=canvas)
    validate_layout(layout, len(raw.boxes))
    return layout, fmt, notes
