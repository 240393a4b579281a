"""The baselines LMD is compared with (LMD-REFERENCE.md 2.7, 3): plain SD and GLIGEN alone.

Both start from the same shared background noise as LMD's overall run (the noise of
(job seed, prompt id, sample)), so an LMD image and its baselines differ only by the method.
They run the same denoising loop as overall generation (overall.run_grounded) with no per-box
latents, no freezing and no latent guidance, so their in-box attention ratios (reported for the
layout's boxes whenever a phrase is found in the prompt) are directly comparable with LMD's.

Prompts. By default the baselines use the overall (synthetic) prompt "<background> with
<phrases>", i.e. the same text LMD's final run sees. LMD's paper baselines use the user's
original prompt instead: pass it as `prompt=` (`generate_layout(..., prompt=...)` and
`lmd-batch generate --prompt` do). The negative prompt is the LLM's negative prompt as it is
(no default terms added), nothing with `diffusion.negative_prompt: none`, or `negative=`.

GLIGEN alone grounds every box of the layout (phrase = caption) with scheduled sampling beta
`cfg.gligen_beta` (0.4, LMD's setting; diffusers' default is 0.3).
"""

from __future__ import annotations

import torch

from lmd_batch.grounding.overall import LAYOUT_CANVAS, run_grounded
from lmd_batch.grounding.spec import baseline_negative
from lmd_batch.grounding.types import GroundingSpec


def sd_baseline(pipe, spec: GroundingSpec, background_noise: torch.Tensor, cfg, *, prompt: str | None = None,
                negative: str | None = None, canvas=LAYOUT_CANVAS) -> tuple[torch.Tensor, dict]:
    """Plain Stable Diffusion from the background noise: (final latents, report).

    prompt:   None -> the spec's overall prompt; LMD's baseline passes the user's original prompt;
    negative: None -> the LLM's negative prompt (spec.negative; "" with cfg.negative_prompt "none").
    """
    text = spec.overall_prompt if prompt is None else prompt
    neg = baseline_negative(spec, getattr(cfg, "negative_prompt", "lmd")) if negative is None else negative
    latents, report = run_grounded(pipe, spec, background_noise.float(), cfg, method="sd", prompt=text, negative=neg,
                                   canvas=canvas)
    report["prompt_source"] = "overall" if prompt is None else "given"
    return latents, report


def gligen_baseline(gligen_pipe, spec: GroundingSpec, background_noise: torch.Tensor, cfg, *,
                    prompt: str | None = None, negative: str | None = None, beta: float | None = None,
                    canvas=LAYOUT_CANVAS) -> tuple[torch.Tensor, dict]:
    """GLIGEN alone, every layout box as grounding, from the background noise: (final latents, report).

    prompt / negative as in `sd_baseline`; beta: scheduled-sampling beta (default cfg.gligen_beta).
    """
    text = spec.overall_prompt if prompt is None else prompt
    neg = baseline_negative(spec, getattr(cfg, "negative_prompt", "lmd")) if negative is None else negative
    b = float(cfg.gligen_beta if beta is None else beta)
    latents, report = run_grounded(gligen_pipe, spec, background_noise.float(), cfg, method="gligen", prompt=text,
                                   negative=neg, gligen=True, gligen_beta=b, canvas=canvas)
    report["prompt_source"] = "overall" if prompt is None else "given"
    return latents, report
