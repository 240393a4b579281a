"""The data that flows between per-box generation (step 1) and composition (step 2).

Fixed here, before either side is written, so the two halves (and the box-latent cache of the
Ray stage, which stores `BoxLatents` as safetensors) agree on shapes, dtypes and meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SpecBox:
    """One object of a layout: caption (the phrase), 512-canvas [x, y, w, h] box, and the word whose
    last sub-token is used for SAM points and attention transfer (LMD-REFERENCE §2.0)."""

    caption: str
    box: tuple[float, float, float, float]
    word: str


@dataclass(frozen=True)
class GroundingSpec:
    """A layout turned into prompts (§2.0): boxes sorted by caption, per-box and overall prompts."""

    boxes: tuple[SpecBox, ...]
    background: str
    negative: str  # the LLM's negative prompt ('' if none)
    per_box_prompts: tuple[str, ...]  # "{background} with {caption}" per box
    overall_prompt: str  # "{background} with {grouped phrases}"
    overall_phrases: tuple[str, ...]  # grouped phrases ("two cats"), for token matching in the overall prompt
    overall_phrase_boxes: tuple[tuple[int, ...], ...]  # for each overall phrase: indices into `boxes`
    warnings: tuple[str, ...] = ()  # e.g. "capped 50 boxes to 16", "box 3 clipped to the canvas"


@dataclass
class BoxLatents:
    """What composition needs from one box's per-box run (everything already aligned to the real box).

    latents:  (frozen_steps + 1, C, h, w) torch.float16 — the per-box trajectory z at step indices
              0..frozen_steps (index 0 is the initial noise of this box run), CPU.
    mask:     (h, w) torch.float32 in {0, 1}, latent resolution, CPU (after alignment shift).
    attn:     {layer name: (guidance_steps, heads, h_l, w_l) torch.float16} cond-branch attention of
              the box's word token at the transfer layers, for step indices 0..guidance_steps-1, CPU
              (after alignment shift); empty for LMD+ when no transfer is used.
    image:    (H, W, 3) uint8 numpy array of the decoded per-box image (for reports), or None.
    shift:    (dy, dx) alignment shift in latent cells that was applied (LMD; (0, 0) for LMD+).
    info:     small JSON-able extras: mask selection scores, energy trace, in-box ratios, seed.
    """

    index: int
    caption: str
    box: tuple[float, float, float, float]
    latents: object
    mask: object
    attn: dict = field(default_factory=dict)
    image: object = None
    shift: tuple[int, int] = (0, 0)
    info: dict = field(default_factory=dict)


@dataclass
class GenerationResult:
    """One generated image and everything `lmd-batch generate` and the image stage report."""

    image: object  # (H, W, 3) uint8 numpy
    method: str
    spec: GroundingSpec
    boxes: list[BoxLatents]  # empty for sd / gligen baselines
    report: dict  # JSON-able: per box in-box attention ratio per guided step and at the end, timings, warnings
    unet_passes: int = 0  # UNet forward passes spent (both CFG halves of one batch count as one pass)
