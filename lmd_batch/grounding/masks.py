"""The mask of a per-box object, at latent resolution (LMD-REFERENCE.md 2.4).

Three ways, each a pure function of its inputs:

- `sam_mask`: segment-anything on the decoded per-box image, 3 multimask outputs, each resized
  bilinearly to the latent resolution and cast to bool (any non-zero is foreground), then the
  reference's "largest_over_conf" rule (`select_mask`):

      score_k = area_k - maxArea * [iou_pred_k < 0.85] - maxArea * [IoU(mask_k, coarse) < 0.25]

  with maxArea the largest of the 3 areas, and the argmax taken (first on ties). So: the largest
  mask SAM is confident in that agrees with the coarse mask.
  The prompt is a single positive point at the argmax of the smoothed word-token attention (LMD),
  or the layout box itself (LMD+; the coarse mask is then the box mask);
- `attention_mask`: the coarse mask's connected part under the attention peak (the object a
  point prompt there would segment), upsampled (nearest) to latent resolution;
- `box_mask_only`: the box.

The smoothed word-token attention (`smoothed_attention`): the word token's cond-branch attention
at the "mask" layer (SD1.x: down_blocks.2.attentions.1, 16x16 at 512 px) averaged over the steps
from `start` on (the reference: steps 10..49 of 50) and over heads, Gaussian-smoothed (sigma 1.5
cells at a 16-cell map), min-max normalised; the coarse mask is where it is > 0.25.

Resolution-independence (the tiny test models run at 128 px: a 4x4 mask-layer map, 16x16
latents): sigma is given in cells of a 16-cell map and scaled to the map's side (1.5 at 16, the
reference; 0.375 at 4), the start step is 10/50 of the run (`attention_start_step`), and the SAM
point is the argmax cell's *centre* in the image's pixel frame, (j + 0.5) * W / w_map (the
reference multiplies the index by 32, the cell's corner, half a cell up-left; we use the centre).
segment-anything's predictor maps pixel prompts from the image frame to its own input size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lmd_batch.grounding.boxes import box_cells, box_mask

SAM_CONFIDENCE = 0.85  # discourage masks whose SAM IoU prediction is below this
COARSE_IOU = 0.25  # discourage masks that overlap the coarse mask less than this
POINT_THRESHOLD = 0.25  # coarse mask: normalised smoothed attention above this
REFERENCE_SIGMA = 1.5  # Gaussian sigma in cells of a 16-cell map
REFERENCE_MAP_SIDE = 16
REFERENCE_START = (10, 50)  # attention averaged from step 10 of 50


def attention_start_step(steps: int) -> int:
    """First step index whose attention enters the SAM map: 10 of 50, proportionally otherwise."""
    start = int(round(REFERENCE_START[0] * steps / REFERENCE_START[1]))
    return max(0, min(start, steps - 1))


def default_sigma(map_side: int) -> float:
    """The reference's sigma (1.5 at a 16-cell map), scaled to a map of `map_side` cells."""
    return REFERENCE_SIGMA * map_side / REFERENCE_MAP_SIDE


def _symmetric_index(n: int, radius: int) -> torch.Tensor:
    """Indices of a length-n axis padded by `radius` on both sides, mirrored with the edge
    repeated (scipy.ndimage's "reflect" mode: d c b a | a b c d | d c b a), any radius."""
    i = torch.arange(-radius, n + radius)
    period = 2 * n
    j = torch.remainder(i, period)
    return torch.where(j >= n, period - 1 - j, j)


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian smoothing of a (..., h, w) map (scipy.ndimage.gaussian_filter's kernel:
    radius int(truncate * sigma + 0.5), normalised; "reflect" borders)."""
    if sigma <= 0:
        return x.clone()
    radius = int(truncate * sigma + 0.5)
    if radius == 0:
        return x.clone()
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype if x.is_floating_point() else torch.float32)
    out = x.float() if not x.is_floating_point() else x
    for dim in (-2, -1):
        n = out.shape[dim]
        idx = _symmetric_index(n, radius).to(out.device)
        padded = out.index_select(dim, idx)  # (..., n + 2r) along dim
        windows = padded.unfold(padded.ndim + dim, 2 * radius + 1, 1)
        out = (windows * kernel.to(out.device, out.dtype)).sum(-1)
    return out


def average_attention(maps: torch.Tensor | Sequence[torch.Tensor], start: int = 0) -> torch.Tensor:
    """Mean of word-token maps over steps >= start and over heads: (steps, heads, h, w) -> (h, w).

    Also accepts (h, w) (returned as is) or (heads, h, w) (one step). If `start` leaves no step,
    every step is used.
    """
    if not isinstance(maps, torch.Tensor):
        maps = torch.stack(list(maps))
    maps = maps.float()
    if maps.ndim == 2:
        return maps
    if maps.ndim == 3:
        return maps.mean(0)
    if maps.ndim != 4:
        raise ValueError(f"attention maps must be (steps, heads, h, w); got {tuple(maps.shape)}")
    if start < maps.shape[0]:
        maps = maps[start:]
    return maps.mean(dim=(0, 1))


def smoothed_attention(attn: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """Gaussian-smooth a (h, w) map (sigma default: `default_sigma(h)`), then min-max normalise
    to [0, 1] (a constant map gives zeros)."""
    attn = attn.float()
    sigma = default_sigma(attn.shape[-2]) if sigma is None else sigma
    s = gaussian_blur(attn, sigma)
    lo, hi = s.min(), s.max()
    if float(hi - lo) <= 0:
        return torch.zeros_like(s)
    return (s - lo) / (hi - lo)


def coarse_mask(norm_map: torch.Tensor, threshold: float = POINT_THRESHOLD) -> torch.Tensor:
    """The coarse mask of a normalised map: bool (h, w), map > threshold."""
    return norm_map > threshold


def upsample_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """A (h, w) bool/0-1 mask at (H, W) by nearest-neighbour sampling (bool)."""
    m = mask.float()[None, None]
    return F.interpolate(m, size=tuple(hw), mode="nearest")[0, 0] > 0.5


def resize_masks(masks, hw: tuple[int, int]) -> torch.Tensor:
    """(K, H, W) bool masks (numpy or torch) resized bilinearly to (K, h, w), any non-zero -> True."""
    m = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks).float()
    if m.ndim == 2:
        m = m[None]
    return F.interpolate(m[:, None], size=tuple(hw), mode="bilinear", align_corners=False)[:, 0] > 0


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each of (K, h, w) bool masks `a` with one (h, w) mask `b`: (K,) float (0 if both empty)."""
    a = a.bool()
    b = b.bool()
    if a.ndim == 2:
        a = a[None]
    inter = (a & b).sum(dim=(-2, -1)).float()
    union = (a | b).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


def selection_scores(areas, iou_preds, coarse_ious, *, confidence: float = SAM_CONFIDENCE,
                     coarse_iou: float = COARSE_IOU) -> list[float]:
    """The "largest_over_conf" score of each candidate (see the module docstring)."""
    areas = [float(a) for a in areas]
    iou_preds = [float(p) for p in iou_preds]
    coarse_ious = [float(c) for c in coarse_ious]
    max_area = max(areas) if areas else 0.0
    return [a - max_area * (p < confidence) - max_area * (c < coarse_iou)
            for a, p, c in zip(areas, iou_preds, coarse_ious)]


def select_mask(masks: torch.Tensor, iou_preds, coarse: torch.Tensor | None, *, confidence: float = SAM_CONFIDENCE,
                coarse_iou: float = COARSE_IOU) -> tuple[int, dict]:
    """Pick one of (K, h, w) candidate masks by "largest_over_conf".

    coarse: (h, w) mask the candidates should agree with, or None (then only the confidence
    penalty applies). Returns (index, details) with details = {"areas", "iou_pred", "coarse_iou",
    "scores"} as JSON-able lists. The argmax takes the first of equal scores.
    """
    masks = masks.bool()
    areas = masks.sum(dim=(-2, -1)).tolist()
    preds = [float(p) for p in (iou_preds.tolist() if hasattr(iou_preds, "tolist") else iou_preds)]
    if coarse is not None:
        cious = mask_iou(masks, coarse).tolist()
    else:
        cious = [1.0] * len(areas)
    scores = selection_scores(areas, preds, cious, confidence=confidence, coarse_iou=coarse_iou)
    index = int(np.argmax(scores)) if scores else 0
    return index, {"areas": [int(a) for a in areas], "iou_pred": preds, "coarse_iou": [float(c) for c in cious],
                   "scores": [float(s) for s in scores]}


def attention_point(norm_map: torch.Tensor, image_hw: tuple[int, int]) -> tuple[float, float]:
    """(x, y) in image pixels of the argmax cell's centre of a (h, w) map (first on ties)."""
    h, w = norm_map.shape[-2:]
    flat = int(torch.argmax(norm_map.reshape(-1)))
    i, j = divmod(flat, w)
    return (j + 0.5) * image_hw[1] / w, (i + 0.5) * image_hw[0] / h


def box_pixels(box, image_hw: tuple[int, int], canvas=512) -> tuple[float, float, float, float]:
    """A canvas [x, y, w, h] box as (x0, y0, x1, y1) in image pixels (SAM's box prompt)."""
    x, y, w, h = (float(v) for v in box)
    sx, sy = image_hw[1] / float(canvas), image_hw[0] / float(canvas)
    return x * sx, y * sy, (x + w) * sx, (y + h) * sy


# ---------------------------------------------------------------------------------------------
# the three mask modes
# ---------------------------------------------------------------------------------------------

@dataclass
class MaskResult:
    """mask:    (h, w) float32 {0, 1} at latent resolution (CPU);
    coarse:  (h, w) bool, what the candidates were compared with (attention or box), or None;
    info:    JSON-able: mode, the prompt, candidate areas / iou_pred / coarse_iou / scores, the
             chosen index, and "fallback" when the chosen mask was empty and the box was used.
    """

    mask: torch.Tensor
    coarse: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


def box_mask_only(box, latent_hw: tuple[int, int], canvas=512) -> MaskResult:
    """The box as the mask (LMD's rounding, boxes.box_cells)."""
    m = box_mask(box, latent_hw[0], latent_hw[1], canvas)
    return MaskResult(m, m.bool(), {"mode": "box", "cells": list(box_cells(box, latent_hw[0], latent_hw[1], canvas))})


def peak_component(mask: torch.Tensor, norm_map: torch.Tensor) -> torch.Tensor:
    """The 4-connected component of a (h, w) bool mask that holds the map's argmax (first on
    ties); the mask unchanged when the peak is not in it.

    Why: LMD's mask is SAM prompted with one point at the attention peak, i.e. the one object
    under the peak. A per-box run now and then draws the object twice; the thresholded map then
    covers both, and composition would paste two objects into one box.
    """
    h, w = mask.shape[-2:]
    y0, x0 = divmod(int(torch.argmax(norm_map.reshape(-1))), w)
    cells = mask.bool().tolist()
    if not cells[y0][x0]:
        return mask.bool().clone()
    keep = [[False] * w for _ in range(h)]
    keep[y0][x0] = True
    stack = [(y0, x0)]
    while stack:
        y, x = stack.pop()
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < h and 0 <= nx < w and cells[ny][nx] and not keep[ny][nx]:
                keep[ny][nx] = True
                stack.append((ny, nx))
    return torch.tensor(keep, dtype=torch.bool)


def attention_mask(attn, latent_hw: tuple[int, int], *, start: int = 0, sigma: float | None = None,
                   threshold: float = POINT_THRESHOLD, single: bool = True) -> MaskResult:
    """The coarse attention mask, upsampled to latent resolution (nearest).

    attn: the word token's maps (steps, heads, h, w) (averaged from `start`), or an averaged
    (h, w) map. single: keep only the connected part under the attention peak (`peak_component`,
    what SAM's point prompt would segment); False: every cell above the threshold.
    """
    norm = smoothed_attention(average_attention(attn, start), sigma)
    coarse = coarse_mask(norm, threshold)
    parts = int(coarse.sum())
    if single:
        coarse = peak_component(coarse, norm)
    m = upsample_mask(coarse, latent_hw)
    return MaskResult(m.float(), m, {"mode": "attention", "map_hw": list(norm.shape), "threshold": threshold,
                                     "dropped_cells": parts - int(coarse.sum())})


def predict_sam(predictor, image: np.ndarray, *, point: tuple[float, float] | None = None,
                box_xyxy: tuple[float, float, float, float] | None = None):
    """SAM's 3 multimask outputs for one prompt: (masks (3, H, W) bool numpy, iou_preds (3,) numpy).

    `predictor` is a segment_anything SamPredictor or a Sam model (wrapped here); the image is
    (H, W, 3) uint8 RGB; point/box are in the image's pixels.
    """
    from segment_anything import SamPredictor

    if not isinstance(predictor, SamPredictor):
        predictor = SamPredictor(predictor)
    predictor.set_image(np.ascontiguousarray(image), image_format="RGB")
    kw = {}
    if point is not None:
        kw["point_coords"] = np.array([point], dtype=np.float32)
        kw["point_labels"] = np.array([1], dtype=np.int64)
    if box_xyxy is not None:
        kw["box"] = np.array(box_xyxy, dtype=np.float32)
    with torch.no_grad():
        masks, iou_preds, _ = predictor.predict(multimask_output=True, **kw)
    predictor.reset_image()
    return masks, iou_preds


def sam_mask(predictor, image: np.ndarray, latent_hw: tuple[int, int], *, attn=None, box=None, start: int = 0,
             sigma: float | None = None, threshold: float = POINT_THRESHOLD, canvas=512,
             confidence: float = SAM_CONFIDENCE, coarse_iou: float = COARSE_IOU) -> MaskResult:
    """SAM-refined mask of one per-box image (see the module docstring).

    Point mode (LMD): give `attn` (the word token's maps, (steps, heads, h, w) or averaged
    (h, w)); the point is the argmax of the smoothed map and the coarse mask its threshold.
    Box mode (LMD+): give `box` (canvas [x, y, w, h]); the prompt and the coarse mask are the box.
    An empty chosen mask falls back to the coarse mask (info["fallback"]).
    """
    if (attn is None) == (box is None):
        raise ValueError("sam_mask needs exactly one of attn (point prompt) or box (box prompt)")
    hw_img = tuple(image.shape[:2])
    if attn is not None:
        norm = smoothed_attention(average_attention(attn, start), sigma)
        coarse = upsample_mask(coarse_mask(norm, threshold), latent_hw)
        point = attention_point(norm, hw_img)
        masks, preds = predict_sam(predictor, image, point=point)
        info = {"mode": "sam", "prompt": "point", "point": [float(point[0]), float(point[1])]}
    else:
        coarse = box_mask(box, latent_hw[0], latent_hw[1], canvas).bool()
        xyxy = box_pixels(box, hw_img, canvas)
        masks, preds = predict_sam(predictor, image, box_xyxy=xyxy)
        info = {"mode": "sam", "prompt": "box", "box_xyxy": [float(v) for v in xyxy]}
    small = resize_masks(masks, latent_hw)
    index, details = select_mask(small, preds, coarse, confidence=confidence, coarse_iou=coarse_iou)
    info.update(details, index=index)
    chosen = small[index]
    if not bool(chosen.any()):
        info["fallback"] = "coarse"
        chosen = coarse
    return MaskResult(chosen.float(), coarse, info)


def centre_of_mass(mask: torch.Tensor) -> tuple[float, float] | None:
    """(y, x) centre of mass of a (h, w) mask in cell units (cell i spans [i, i+1)); None if empty."""
    m = mask.float()
    total = float(m.sum())
    if total <= 0:
        return None
    h, w = m.shape[-2:]
    ys = torch.arange(h, dtype=torch.float32) + 0.5
    xs = torch.arange(w, dtype=torch.float32) + 0.5
    return float((m.sum(1) * ys).sum()) / total, float((m.sum(0) * xs).sum()) / total


__all__ = ["MaskResult", "attention_mask", "attention_point", "attention_start_step", "average_attention",
           "box_mask_only", "box_pixels", "centre_of_mass", "coarse_mask", "default_sigma", "gaussian_blur",
           "mask_iou", "peak_component", "predict_sam", "resize_masks", "sam_mask", "select_mask", "selection_scores",
           "smoothed_attention", "upsample_mask"]
