"""Layout boxes as cell masks on a grid (an attention map or the latent).

Layouts are [x, y, w, h] boxes on LMD's 512x512 canvas (top-left origin; LMD-REFERENCE.md 1.1).
Stage 2 needs them at several resolutions: 8x8 and 16x16 attention maps, the 64x64 latent.

The rounding follows LMD (section 2.2, "rounded with separate rounding of w and h"): the corner
and the size are rounded separately, x0 = round(x*W), x1 = x0 + round(w*W), so two boxes of the
same size cover the same number of cells wherever they are. Python's round() (half to even) is
used on purpose: 512-canvas boxes mapped to 16 or 8 cells often land exactly on .5, and matching
the reference there decides which cell a box edge owns.
"""

from __future__ import annotations

from typing import Sequence

import torch

Box = Sequence[float]  # [x, y, w, h] on the canvas


def _canvas_wh(canvas: int | tuple[int, int]) -> tuple[float, float]:
    if isinstance(canvas, (tuple, list)):
        return float(canvas[0]), float(canvas[1])
    return float(canvas), float(canvas)


def box_cells(box: Box, height: int, width: int, canvas: int | tuple[int, int] = 512) -> tuple[int, int, int, int]:
    """The box as integer cell bounds (x0, y0, x1, y1), end-exclusive, clipped to the grid.

    `canvas` is the layout's coordinate frame: 512 (LMD's), or (W, H) for a non-square one.
    """
    cw, ch = _canvas_wh(canvas)
    x, y, w, h = (float(v) for v in box)
    x0 = round(x / cw * width)
    y0 = round(y / ch * height)
    x1 = x0 + round(w / cw * width)
    y1 = y0 + round(h / ch * height)
    x0, x1 = max(0, min(width, x0)), max(0, min(width, x1))
    y0, y1 = max(0, min(height, y0)), max(0, min(height, y1))
    return x0, y0, x1, y1


def as_box_list(boxes) -> list:
    """One box ([x, y, w, h]) or several ([[...], ...], an (N, 4) array) as a list of boxes."""
    if hasattr(boxes, "tolist"):
        boxes = boxes.tolist()
    if len(boxes) and isinstance(boxes[0], (list, tuple)):
        return list(boxes)
    return [boxes] if len(boxes) else []


def box_mask(boxes: Box | Sequence[Box], height: int, width: int, canvas: int | tuple[int, int] = 512,
             device=None, dtype=torch.float32) -> torch.Tensor:
    """A (height, width) mask, 1 inside the box (or the union of several boxes), 0 outside.

    A phrase with several boxes ("two cats") is guided towards the union of its boxes (2.2).
    A box smaller than a cell can round to an empty mask; the energy then has no gradient for it,
    as in the reference.
    """
    mask = torch.zeros(height, width, device=device, dtype=dtype)
    for b in as_box_list(boxes):
        x0, y0, x1, y1 = box_cells(b, height, width, canvas)
        mask[y0:y1, x0:x1] = 1
    return mask
