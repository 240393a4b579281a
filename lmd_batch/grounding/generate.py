"""One layout to one image, by any method: LMD, LMD+, plain SD, GLIGEN alone.

`generate_layout` is the whole of stage 2 for one (prompt, sample) in one process: the layout
becomes a `GroundingSpec` (spec.layout_to_spec), the shared background noise is drawn from
(job seed, prompt id, sample) (noise.background_seed, the same noise the per-box runs share),
and then

- lmd / lmd_plus: per-box generation (per_box.generate_boxes: trajectories, masks, attention),
  composition and overall generation (overall.overall_generate), decoding;
- sd / gligen:    the baseline (baselines.py) on the same background noise;
- a layout with no boxes: for lmd / lmd_plus, plain generation of the overall prompt with the
  overall negative prompt (the report says so); the baselines run as usual.

Pipelines are opened through `lmd_batch.models.loaders` (built-in names, Hugging Face ids, local
folders, fsspec URLs; see registry.resolve_model) and kept in a small in-process cache, so a
batch of layouts in one worker loads each model once. The Ray image stage calls the same pieces
(per_box, compose, overall) directly, batched; this function is the reference path and the
backend of `lmd-batch generate`.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from lmd_batch.grounding.types import GenerationResult

METHODS = ("lmd", "lmd_plus", "sd", "gligen")
CACHE_SIZE = 4  # pipelines kept loaded (an SD pipeline, a GLIGEN pipeline, SAM, one spare)

_PIPELINES: "OrderedDict[tuple, object]" = OrderedDict()


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def clear_pipeline_cache() -> None:
    """Forget every cached pipeline (frees their memory once nothing else holds them)."""
    _PIPELINES.clear()


def resolve_dtype(name: str | None, device) -> "torch.dtype":
    """'auto' -> float16 on CUDA, float32 elsewhere; else the named torch dtype."""
    import torch

    if not name or name == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, name)


def cached_model(kind: str, ref: str, device: str | None = None, storage_options: dict | None = None,
                 dtype: str | None = None):
    """A loaded model of `kind` ("sd", "gligen", "sam") for reference `ref`, on `device`, cached.

    Diffusion pipelines come back in eval mode with every weight's requires_grad off (guidance
    differentiates with respect to the latents only) and a disabled progress bar.
    """
    from lmd_batch.models import loaders

    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    key = (kind, ref, str(device), str(torch_dtype))
    if key in _PIPELINES:
        _PIPELINES.move_to_end(key)
        return _PIPELINES[key]
    if kind == "sd":
        model = loaders.load_sd_pipeline(ref, storage_options, dtype=torch_dtype)
    elif kind == "gligen":
        model = loaders.load_gligen_pipeline(ref, storage_options, dtype=torch_dtype)
    elif kind == "sam":
        model = loaders.load_sam(ref, storage_options)
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    model = model.to(device)
    if kind in ("sd", "gligen"):
        for part in (model.unet, model.text_encoder, model.vae):
            part.eval().requires_grad_(False)
    else:
        model.eval().requires_grad_(False)
    _PIPELINES[key] = model
    while len(_PIPELINES) > CACHE_SIZE:
        _PIPELINES.popitem(last=False)
    return model


def _box_extras(report: dict, boxes) -> None:
    """Merge what the per-box runs recorded (mask area, shift, their own notes) into the report."""
    import torch

    by_index = {b.index: b for b in boxes}
    for entry in report.get("boxes", []):
        b = by_index.get(entry["index"])
        if b is None:
            entry["per_box"] = None
            continue
        entry["per_box"] = {"mask_cells": int(float(torch.as_tensor(b.mask).sum())), "shift": list(b.shift),
                            "info": b.info}


def generate_layout(layout, method: str, *, model: str, gligen_model: str, sam_model: str, cfg, job_seed: int,
                    prompt_id, sample: int, prompt: str | None = None, max_boxes: int = 16, refiner=None,
                    device: str | None = None, callback=None, boxes=None) -> GenerationResult:
    """Generate one image for one layout (`lmd_batch.layout.lmd_text.Layout`).

    method:     "lmd", "lmd_plus", "sd" (plain SD) or "gligen" (GLIGEN alone);
    model:      SD model reference (LMD and the SD baseline); gligen_model: GLIGEN reference
                (LMD+ and the GLIGEN baseline); sam_model: SAM reference (used when cfg.mask == "sam");
    cfg:        a `config.DiffusionConfig` (steps, size, guidance settings, mask mode, ...);
    job_seed, prompt_id, sample: where every seed derives from (same triple, same image);
    prompt:     the user's original prompt: the baselines use it instead of the overall prompt
                (LMD's protocol), and the optional refiner pass uses it;
    refiner:    an SDXL img2img refiner pipeline, or None (no refinement; the default);
    callback:   passed to overall_generate (callback(step, latents) after each step);
    boxes:      the layout's per-box results when they are already known (the box-latent cache of
                the Ray image stage): per-box generation is skipped.

    The image is (cfg.size, cfg.size, 3) uint8 (refined: the refiner's size). The report is
    JSON-able: per box caption, box, phrase tokens, in-box attention ratio at each guided step
    and at the end, per-box info, warnings, timings and UNet passes.
    """
    from lmd_batch.grounding.noise import background_seed, gaussian_noise
    from lmd_batch.grounding.overall import (LAYOUT_CANVAS, REFINER_NEGATIVE, REFINER_SEED_OFFSET, REFINER_STRENGTH,
                                             decode_latents, join_prompts, overall_generate, refine_image)
    from lmd_batch.grounding.spec import layout_to_spec

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    start = time.perf_counter()
    timings: dict[str, float] = {}
    spec = layout_to_spec(layout, max_boxes, LAYOUT_CANVAS)
    device = device or default_device()

    t = time.perf_counter()
    uses_gligen = method in ("lmd_plus", "gligen")
    pipe = cached_model("gligen" if uses_gligen else "sd", gligen_model if uses_gligen else model, device,
                        dtype=getattr(cfg, "dtype", "auto"))
    sam = None
    if method in ("lmd", "lmd_plus") and spec.boxes and getattr(cfg, "mask", "sam") == "sam" and boxes is None:
        sam = cached_model("sam", sam_model, device)
    timings["load_s"] = time.perf_counter() - t

    scale = getattr(pipe, "vae_scale_factor", 8)
    size = int(cfg.size)
    if size % scale:
        raise ValueError(f"size {size} is not a multiple of the VAE's scale factor {scale}")
    channels = pipe.unet.config.in_channels
    bg_seed = background_seed(job_seed, prompt_id, sample)
    noise = gaussian_noise(bg_seed, (1, channels, size // scale, size // scale), device=device)

    given = boxes
    boxes = list(given or [])
    per_box_passes = 0
    if method in ("lmd", "lmd_plus"):
        if spec.boxes and given is None:
            from lmd_batch.grounding.per_box import generate_boxes

            t = time.perf_counter()
            stats: dict = {}
            boxes = generate_boxes(pipe, [(spec, prompt_id, sample)], cfg, job_seed, method, sam, cfg.mask,
                                   cfg.box_batch_size, stats=stats)[0]
            timings["per_box_s"] = time.perf_counter() - t
            per_box_passes = int(stats.get("unet_passes", 0))
        t = time.perf_counter()
        overall_cfg = cfg
        if getattr(cfg, "overall_guidance_steps", None) is not None:  # a composition-only setting
            overall_cfg = cfg.model_copy(update={"guidance_steps": cfg.overall_guidance_steps})
        latents, report = overall_generate(pipe, spec, boxes, noise, overall_cfg, method, callback=callback)
        timings["overall_s"] = time.perf_counter() - t
    else:
        from lmd_batch.grounding.baselines import gligen_baseline, sd_baseline

        t = time.perf_counter()
        run = sd_baseline if method == "sd" else gligen_baseline
        latents, report = run(pipe, spec, noise, cfg, prompt=prompt)
        timings["overall_s"] = time.perf_counter() - t

    t = time.perf_counter()
    image = decode_latents(pipe, latents)
    timings["decode_s"] = time.perf_counter() - t
    report["refiner"] = None
    if refiner is not None:
        t = time.perf_counter()
        image = refine_image(refiner, image, prompt=prompt or spec.overall_prompt,
                             negative=join_prompts(spec.negative, REFINER_NEGATIVE), seed=bg_seed + REFINER_SEED_OFFSET)
        timings["refine_s"] = time.perf_counter() - t
        report["refiner"] = {"strength": REFINER_STRENGTH, "size": int(image.shape[0])}

    _box_extras(report, boxes)
    report["warnings"] = list(spec.warnings) + report.get("warnings", [])
    overall_passes = int(report["unet_passes"])
    total_passes = overall_passes + per_box_passes
    report["unet_passes"] = {"overall": overall_passes, "per_box": per_box_passes, "total": total_passes}
    report["seeds"] = {"job": int(job_seed), "prompt_id": str(prompt_id), "sample": int(sample), "background": bg_seed}
    report["size"] = size
    timings["total_s"] = time.perf_counter() - start
    report["timings"] = {**report.get("timings", {}), **{k: round(v, 4) for k, v in timings.items()}}
    return GenerationResult(image=image, method=method, spec=spec, boxes=list(boxes), report=report,
                            unet_passes=total_passes)
