"""Shared initial noise (LMD-REFERENCE.md 2.1).

LMD starts every per-box run and the final run from (nearly) the same noise: a background noise
shared by all of them, and per box a foreground noise mixed in *inside that box only*:

    initial_i = bg * sqrt(1 - r) + fg_i * sqrt(r)   inside box i,   bg elsewhere

(variance-preserving), with r = fg_blending_ratio: 0.01 for LMD, 0.1 for LMD+. Sharing the noise
is what lets per-box latents be pasted into the final canvas without seams.

Seeds are derived, not drawn (DESIGN.md, seeds and determinism): from (job seed, prompt id,
sample, box), through `lmd_batch.seeds.derive_seed`, under a "noise" namespace so they never
coincide with seeds drawn for other purposes (the layout stage derives ("layout", prompt, sample)).
The reference's bg/fg seed-collision rule (+12345) becomes: a box seed equal to the background
seed is re-derived with an extra part.

Noise is drawn in fp32 by a CPU `torch.Generator` and then moved/cast, so the same seed gives the
same bytes on any device and for any model dtype (the reference drew in the model dtype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from lmd_batch.grounding.boxes import Box, box_mask
from lmd_batch.seeds import derive_seed

LMD_BLENDING_RATIO = 0.01
LMD_PLUS_BLENDING_RATIO = 0.1


def default_blending_ratio(method: str, configured: float | None = None) -> float:
    """`fg_blending_ratio` from the config, or LMD's default for the method (0.1 for LMD+)."""
    if configured is not None:
        return float(configured)
    return LMD_PLUS_BLENDING_RATIO if method in ("lmd_plus", "gligen") else LMD_BLENDING_RATIO


def background_seed(job_seed: int, prompt_id, sample: int) -> int:
    """Seed of the noise shared by the final image and every per-box run of (prompt, sample)."""
    return derive_seed(job_seed, "noise", prompt_id, sample, "background")


def box_seed(job_seed: int, prompt_id, sample: int, box: int) -> int:
    """Seed of box `box`'s foreground noise (box index in the layout's name-sorted order)."""
    seed = derive_seed(job_seed, "noise", prompt_id, sample, "box", box)
    if seed == background_seed(job_seed, prompt_id, sample):
        seed = derive_seed(job_seed, "noise", prompt_id, sample, "box", box, "again")
    return seed


def gaussian_noise(seed: int, shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise from a CPU generator (fp32), then moved to `device` and `dtype`."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float32, device="cpu")
    return x.to(device=device, dtype=dtype) if device is not None or dtype != torch.float32 else x


def blend_box_noise(background: torch.Tensor, foreground: torch.Tensor, box: Box, ratio: float,
                    canvas=512) -> torch.Tensor:
    """bg * sqrt(1 - r) + fg * sqrt(r) inside `box` (canvas [x, y, w, h]), bg outside.

    Tensors are (..., C, h, w); the box is scaled to (h, w) with LMD's rounding (boxes.box_cells).
    """
    h, w = background.shape[-2:]
    m = box_mask(box, h, w, canvas, device=background.device, dtype=background.dtype)
    mixed = background * math.sqrt(1.0 - ratio) + foreground.to(background.dtype) * math.sqrt(ratio)
    return background * (1 - m) + mixed * m


@dataclass
class SharedNoise:
    """background: (1, C, h, w), shared by the final image and every per-box run;
    foreground:  (N, C, h, w), one independent noise per box;
    initial:     (N, C, h, w), each per-box run's initial latent (foreground blended in its box);
    seeds:       {"background": int, "boxes": [int, ...]} for records and debugging.
    """

    background: torch.Tensor
    foreground: torch.Tensor
    initial: torch.Tensor
    seeds: dict


def shared_noise(job_seed: int, prompt_id, sample: int, boxes: Sequence[Box], *, ratio: float,
                 latent_shape: Sequence[int] = (4, 64, 64), canvas=512, device=None,
                 dtype=torch.float32) -> SharedNoise:
    """All initial noise of one (prompt, sample): background, per-box noise, per-box initial latents.

    `boxes` are where each per-box run puts its object (for LMD the centred per-box box, for
    LMD+ the layout box), in the layout's box order; `latent_shape` is (C, h, w).
    """
    c, h, w = latent_shape
    bg_seed = background_seed(job_seed, prompt_id, sample)
    fg_seeds = [box_seed(job_seed, prompt_id, sample, i) for i in range(len(boxes))]
    bg = gaussian_noise(bg_seed, (1, c, h, w))
    fg = (torch.cat([gaussian_noise(s, (1, c, h, w)) for s in fg_seeds]) if fg_seeds
          else torch.zeros(0, c, h, w))
    init = (torch.cat([blend_box_noise(bg, fg[i:i + 1], b, ratio, canvas) for i, b in enumerate(boxes)])
            if fg_seeds else torch.zeros(0, c, h, w))
    move = dict(device=device, dtype=dtype)
    return SharedNoise(bg.to(**move), fg.to(**move), init.to(**move), {"background": bg_seed, "boxes": fg_seeds})
