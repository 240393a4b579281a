"""LMD's alignment of a per-box run with its real layout box (LMD-REFERENCE.md 2.4).

An LMD per-box run draws its object in a *centred* box (horizontal centre, bottom at 0.8 of the
canvas). Before composition the run's latents, mask and saved attention are shifted so that the
mask's centre of mass lands on the real box's centre:

- the shift is measured in latent cells (cell i spans [i, i + 1); the box centre is
  (y + h/2) / 512 * latent_h) and quantised to 1/8 of the canvas, i.e. to multiples of
  latent_h / 8 cells (8 cells at 64x64 latents, 2 at the tiny models' 16x16), rounding half
  away from zero; so the 8x8 and 16x16 attention maps of SD1.x at 512 px move by whole cells,
  consistently with the latents;
- attention maps move by the same *fraction of the canvas* at their own resolution:
  dy * h_map / latent_h cells; exact when the map side is a multiple of 8 (SD1.x: 8, 16),
  otherwise rounded to the nearest cell (the tiny models' 2x2 and 4x4 maps);
- whatever is shifted off the grid is lost and the uncovered cells are zero-filled, for the
  latents too: composition only reads a per-box latent inside its (shifted) mask, and the initial
  noise inside the mask's bounding box, and every such cell's source lies inside the grid (the
  mask's cells came from the grid, so does their bounding box); the zeros are never read.

LMD+ does not centre, so it is not aligned (shift (0, 0)).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from lmd_batch.grounding.masks import centre_of_mass
from lmd_batch.grounding.types import BoxLatents

FLOOR_PADDING = 0.2  # so_floor_padding: a centred box's bottom sits at 1 - 0.2 of the canvas


def centred_box(box, canvas: float = 512, floor_padding: float = FLOOR_PADDING) -> tuple[float, float, float, float]:
    """Where an LMD per-box run draws the object: the same size, horizontally centred, bottom at
    (1 - floor_padding) of the canvas (top clamped to 0 for boxes taller than that)."""
    x, y, w, h = (float(v) for v in box)
    cx = (canvas - w) / 2.0
    cy = max(0.0, canvas * (1.0 - floor_padding) - h)
    return cx, cy, w, h


def _round_half_away(x: float) -> int:
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def quantum_cells(latent_side: int, divisions: int = 8) -> float:
    """The shift quantum in latent cells: 1/`divisions` of the canvas (latent_side / 8)."""
    return latent_side / float(divisions)


def alignment_shift(mask: torch.Tensor, box, canvas=512, divisions: int = 8) -> tuple[int, int]:
    """(dy, dx) in latent cells that moves the mask's centre of mass onto the box centre,
    quantised to 1/`divisions` of the canvas. (0, 0) for an empty mask."""
    com = centre_of_mass(mask)
    if com is None:
        return 0, 0
    h, w = mask.shape[-2:]
    x, y, bw, bh = (float(v) for v in box)
    cw, ch = (float(canvas[0]), float(canvas[1])) if isinstance(canvas, (tuple, list)) else (float(canvas),) * 2
    target_y = (y + bh / 2.0) / ch * h
    target_x = (x + bw / 2.0) / cw * w
    qy, qx = quantum_cells(h, divisions), quantum_cells(w, divisions)
    dy = _round_half_away((target_y - com[0]) / qy) * qy
    dx = _round_half_away((target_x - com[1]) / qx) * qx
    return int(round(dy)), int(round(dx))


def shift_grid(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift the last two dims of `x` by whole cells (down/right positive); content moved off the
    grid is lost, uncovered cells are zero."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y = slice(max(0, -dy), h - max(0, dy))
    dst_y = slice(max(0, dy), h - max(0, -dy))
    src_x = slice(max(0, -dx), w - max(0, dx))
    dst_x = slice(max(0, dx), w - max(0, -dx))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


def scaled_shift(dy: int, dx: int, latent_hw: tuple[int, int], map_hw: tuple[int, int]) -> tuple[int, int]:
    """The latent shift (dy, dx) as whole cells of a map of `map_hw` (same canvas fraction)."""
    return (_round_half_away(dy * map_hw[0] / latent_hw[0]), _round_half_away(dx * map_hw[1] / latent_hw[1]))


def shift_attention(attn: torch.Tensor, dy: int, dx: int, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Shift a (..., h_map, w_map) attention map by the latent shift, at its own resolution."""
    sy, sx = scaled_shift(dy, dx, latent_hw, tuple(attn.shape[-2:]))
    return shift_grid(attn, sy, sx)


def align_box_latents(bl: BoxLatents, run_box=None, canvas=512, divisions: int = 8,
                      shift: tuple[int, int] | None = None) -> BoxLatents:
    """A copy of `bl` with latents, mask and attention shifted so the mask's centre of mass sits
    on `bl.box` (the real layout box); `shift` forces a given (dy, dx). The applied shift is added
    to `bl.shift`, and info["alignment"] records it (with the quantum and the run box)."""
    mask = bl.mask
    h, w = mask.shape[-2:]
    dy, dx = shift if shift is not None else alignment_shift(mask, bl.box, canvas, divisions)
    info = dict(bl.info)
    info["alignment"] = {"shift": [int(dy), int(dx)], "quantum_cells": [quantum_cells(h, divisions),
                                                                      quantum_cells(w, divisions)]}
    if run_box is not None:
        info["alignment"]["run_box"] = [float(v) for v in run_box]
    attn = {name: shift_attention(a, dy, dx, (h, w)) for name, a in bl.attn.items()}
    return replace(bl, latents=shift_grid(bl.latents, dy, dx), mask=shift_grid(mask, dy, dx), attn=attn,
                   shift=(bl.shift[0] + int(dy), bl.shift[1] + int(dx)), info=info)
