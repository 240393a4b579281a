"""Latent composition, "LatentCompose" (LMD-REFERENCE.md 2.5), and the per-step transfer references (2.6).

Step 1 (per-box generation) leaves, for every box, its denoising trajectory z_0..z_F (F = the
frozen steps), a mask at latent resolution and its word token's attention, all already moved
onto the layout box (`types.BoxLatents`). Step 2 needs them as one canvas per step:

- initial canvas (index 0): the shared background noise, with each box's initial latent z_0
  pasted inside the *bounding box of its mask* (the per-box noise differs from the background
  only inside the box it was drawn for, so this carries the box's own noise along);
- for every index t (0 included): canvas_t = canvas_t * (1 - m_i) + z_t^(i) * m_i, the masks
  applied **largest first**, so a smaller object overwrites a larger one where they overlap;
- the owner map records which box owns each latent cell (-1: background).

Overall generation then replaces the foreground with canvas_{i+1} after each scheduler step
i < F; with {0, 1} masks the replacement is exact (inside a mask the canvas *is* that box's
latent, bit for bit, where no smaller mask overlaps it).
"""

from __future__ import annotations

from typing import Sequence

import torch

from lmd_batch.grounding.types import BoxLatents


def paste_order(boxes: Sequence[BoxLatents]) -> list[int]:
    """Positions in `boxes`, largest mask first (ties: the layout's box order)."""
    areas = [float(torch.as_tensor(b.mask).float().sum()) for b in boxes]
    return sorted(range(len(boxes)), key=lambda i: (-areas[i], boxes[i].index, i))


def mask_bbox(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1), end-exclusive, of the cells where mask > 0.5; None for an empty mask."""
    on = mask > 0.5
    rows = torch.nonzero(on.any(dim=1)).flatten()
    cols = torch.nonzero(on.any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def compose_trajectory(background_noise: torch.Tensor, boxes: Sequence[BoxLatents], frozen_steps: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Compose the per-box trajectories into the canvas trajectory of the first `frozen_steps` steps.

    background_noise: (1, C, h, w), the shared background noise (any float dtype/device);
    boxes:            each with latents (>= frozen_steps + 1, C, h, w) and a {0, 1} mask (h, w);
    returns:          (canvas (frozen_steps + 1, 1, C, h, w) fp32 on the noise's device,
                       owner (h, w) long: the `BoxLatents.index` owning each cell, -1 = background).
    """
    if background_noise.ndim != 4 or background_noise.shape[0] != 1:
        raise ValueError(f"background noise must be (1, C, h, w); got {tuple(background_noise.shape)}")
    if frozen_steps < 0:
        raise ValueError(f"frozen_steps must be >= 0; got {frozen_steps}")
    device = background_noise.device
    bg = background_noise.detach().to(torch.float32)
    _, c, h, w = bg.shape
    n = frozen_steps + 1
    owner = torch.full((h, w), -1, dtype=torch.long, device=device)

    initial = bg.clone()
    latents, masks = [], []
    for b in boxes:
        z = torch.as_tensor(b.latents)
        m = torch.as_tensor(b.mask)
        if z.ndim != 4 or tuple(z.shape[1:]) != (c, h, w):
            raise ValueError(f"box {b.index} ({b.caption!r}): latents must be (steps, {c}, {h}, {w}); "
                             f"got {tuple(z.shape)}")
        if z.shape[0] < n:
            raise ValueError(f"box {b.index} ({b.caption!r}): {z.shape[0]} latents, but {frozen_steps} frozen "
                             f"steps need {n}")
        if tuple(m.shape) != (h, w):
            raise ValueError(f"box {b.index} ({b.caption!r}): mask must be ({h}, {w}); got {tuple(m.shape)}")
        latents.append(z[:n].to(device=device, dtype=torch.float32))
        masks.append(m.to(device=device, dtype=torch.float32))

    order = paste_order(boxes)
    # initial canvas: each box's initial latent inside the bounding box of its mask, largest first
    for i in order:
        bbox = mask_bbox(masks[i])
        if bbox is None:
            continue
        y0, y1, x0, x1 = bbox
        initial[0, :, y0:y1, x0:x1] = latents[i][0, :, y0:y1, x0:x1]

    canvas = initial.unsqueeze(0).repeat(n, 1, 1, 1, 1)  # (n, 1, C, h, w)
    for i in order:
        m = masks[i]
        canvas = canvas * (1 - m) + latents[i].unsqueeze(1) * m
        owner = torch.where(m > 0.5, torch.full_like(owner, boxes[i].index), owner)
    return canvas, owner


def foreground_mask(boxes: Sequence[BoxLatents], shape: tuple[int, int], device=None) -> torch.Tensor:
    """(h, w) fp32: 1 where any box's mask is on (the cells frozen during the first steps)."""
    out = torch.zeros(shape, dtype=torch.float32, device=device)
    for b in boxes:
        out = torch.maximum(out, torch.as_tensor(b.mask).to(device=device, dtype=torch.float32))
    return out


def reference_attention(box: BoxLatents, layers: Sequence[str], step_index: int
                        ) -> tuple[torch.Tensor, ...] | None:
    """The box run's word-token attention at `step_index`, one (heads, h_l, w_l) map per layer in
    `layers` order (what `energy.TransferTarget.reference` wants); None when the box has no map
    for some layer or step (LMD+ without saved attention, or a shorter per-box trajectory)."""
    maps = []
    for name in layers:
        a = box.attn.get(name) if box.attn else None
        if a is None or step_index >= a.shape[0]:
            return None
        maps.append(torch.as_tensor(a[step_index]).float())
    return tuple(maps)


def composed_reference_attention(boxes: Sequence[BoxLatents], layers: Sequence[str], step_index: int
                                 ) -> list[tuple[torch.Tensor, ...] | None]:
    """`reference_attention` of every box at one step, in `boxes` order.

    Attention transfer compares each box's own map inside its own box (the L1 distance of the
    two maps, each normalised inside the box), so the reference is kept per box rather than
    pasted into one canvas: overlapping boxes keep their own references.
    """
    return [reference_attention(b, layers, step_index) for b in boxes]
