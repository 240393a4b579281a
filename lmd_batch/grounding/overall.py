"""Overall generation with frozen foreground and attention transfer (LMD-REFERENCE.md 2.6).

Step 2 of LMD. Starting from the composed canvas (compose.py), a DDIM run of `cfg.steps` steps
on the overall prompt ("<background> with <phrases>") and the overall negative prompt, CFG
`cfg.guidance_scale`, where

1. before denoising step i < `cfg.guidance_steps`, the latent is backward-guided
   (guidance.guide_latents) on LMD's energy: the box energy of every overall phrase's tokens
   towards the union of its boxes, plus `cfg.ref_ca_loss_weight` (lambda) times the attention
   transfer of each box's word token against that box's own per-box attention at the same step
   index (energy.lmd_energy with TransferTargets);
2. after scheduler step i < frozen_steps = int(steps * frozen_step_ratio), the foreground cells
   are REPLACED by the composed latent at index i + 1; the background is denoised freely from
   the start, and after the frozen steps nothing is held (the image harmonises);
3. LMD+ runs the GLIGEN UNet with every box as grounding (phrase = caption, pooled text
   embedding), gated self-attention on for the first int(gligen_beta * steps) steps (scheduled
   sampling), in the denoising forwards (conditional half only) and in the guidance forwards.

Diagnostics: for every box, the share of its phrase tokens' attention that falls inside the box
(energy.in_box_attention_ratio, summed over the guidance layers) at each of the first
`cfg.guidance_steps` steps and at the end. All of them are read from the conditional half of the
denoising step's own CFG forward (after that step's guidance), so they cost no extra UNet pass;
"final" is the last denoising step's forward. The same loop (no boxes, no guidance, optionally
GLIGEN) runs the baselines (baselines.py), so their ratios are directly comparable.

The loop is our own, not `pipe.__call__`: the scheduler is always a fresh `DDIMScheduler` built
from the pipeline's scheduler config (LMD's scheduler; the per-box runs must use the same one,
since transfer references are indexed by step), noise is never drawn here (the caller passes the
shared background noise), so the same inputs give the same bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lmd_batch.grounding.attention import AttentionStore, install_attention_capture, select_layers
from lmd_batch.grounding.compose import compose_trajectory, foreground_mask, reference_attention
from lmd_batch.grounding.energy import PhraseTarget, TransferTarget, in_box_attention_ratio
from lmd_batch.grounding.guidance import UNetEnergy, alphabar, guide_latents
from lmd_batch.grounding.spec import SPEC_CANVAS, overall_negative
from lmd_batch.grounding.tokens import match_phrases, word_span
from lmd_batch.grounding.types import BoxLatents, GroundingSpec

LAYOUT_CANVAS = SPEC_CANVAS  # spec boxes are [x, y, w, h] on LMD's 512 x 512 canvas, whatever the image size
# 2.7: what the SDXL refiner pass adds to the LLM's negative prompt.
REFINER_NEGATIVE = ("drawing, painting, crayon, sketch, graphite, impressionist, noisy, blurry, soft, deformed, "
                    "ugly")
REFINER_STRENGTH = 0.3
REFINER_SIZE = 1024
REFINER_SEED_OFFSET = 7890
GLIGEN_MAX_OBJECTS = 30
RATIO_SOURCE = "cond half of each denoising step's CFG forward (final = the last step's); no extra UNet pass"


def join_prompts(*parts: str) -> str:
    """Non-empty parts joined with ', ' (how LMD prepends the LLM's negative prompt)."""
    return ", ".join(p.strip() for p in parts if p and p.strip())


def overall_negative_prompt(spec: GroundingSpec, mode: str = "lmd") -> str:
    """The overall run's negative prompt: the LLM's negative, then LMD's default overall terms (2.0);
    `mode` is diffusion.negative_prompt (spec.NEGATIVE_MODES)."""
    return overall_negative(spec, mode)


def frozen_step_count(cfg) -> int:
    """int(steps * frozen_step_ratio): 25 of 50 by default."""
    return int(cfg.steps * cfg.frozen_step_ratio)


# ---------------------------------------------------------------------------------------------
# pipeline pieces: scheduler, text, GLIGEN grounding, decoding
# ---------------------------------------------------------------------------------------------

def ddim_scheduler(pipe, steps: int, device=None):
    """A fresh DDIMScheduler from the pipeline's scheduler config (keeps prediction_type, betas)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(int(steps), device=device)
    return scheduler


@dataclass
class TextCondition:
    """cond: (1, 77, D) prompt embedding; uncond: (1, 77, D) negative embedding, None without CFG."""

    cond: torch.Tensor
    uncond: torch.Tensor | None


def encode_text(pipe, prompt: str, negative: str, guidance_scale: float) -> TextCondition:
    """Encode the prompt (and the negative prompt when CFG is on, guidance_scale > 1)."""
    do_cfg = guidance_scale > 1.0
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, pipe.device, 1, do_cfg, negative_prompt=negative or None)
    # transformers may keep the text encoder in its stored dtype (fp16) while diffusers loads the UNet
    # in another: the UNet's dtype decides.
    dtype = pipe.unet.dtype
    return TextCondition(cond.to(dtype), uncond.to(dtype) if do_cfg and uncond is not None else None)


def is_gligen(pipe) -> bool:
    """Whether the pipeline's UNet has GLIGEN's grounding (a position net and gated attention)."""
    return getattr(pipe.unet, "position_net", None) is not None


def gligen_condition(pipe, captions: Sequence[str], boxes: Sequence[Sequence[float]], canvas=LAYOUT_CANVAS
                     ) -> dict:
    """GLIGEN's grounding input for one conditional sample: every box, phrase = its caption.

    boxes are [x, y, w, h] on the layout canvas, given to GLIGEN as normalised [x0, y0, x1, y1];
    phrases are embedded as the CLIP pooled output, as diffusers' GLIGEN pipeline does. At most 30
    objects (GLIGEN's max_objs): the rest are dropped by the caller, with a warning.
    Returns {"boxes": (1, 30, 4), "positive_embeddings": (1, 30, D), "masks": (1, 30)}.
    """
    device, dtype = pipe.device, pipe.text_encoder.dtype
    cw, ch = (canvas, canvas) if not isinstance(canvas, (tuple, list)) else canvas
    n = min(len(boxes), GLIGEN_MAX_OBJECTS)
    dim = pipe.unet.config.cross_attention_dim
    xyxy = torch.zeros(GLIGEN_MAX_OBJECTS, 4, device=device, dtype=dtype)
    emb = torch.zeros(GLIGEN_MAX_OBJECTS, dim, device=device, dtype=dtype)
    masks = torch.zeros(GLIGEN_MAX_OBJECTS, device=device, dtype=dtype)
    if n:
        for i, (x, y, w, h) in enumerate(boxes[:n]):
            xyxy[i] = torch.tensor([x / cw, y / ch, (x + w) / cw, (y + h) / ch]).clamp(0, 1)
        tokens = pipe.tokenizer(list(captions[:n]), padding=True, truncation=True,
                                max_length=pipe.tokenizer.model_max_length, return_tensors="pt").to(device)
        with torch.no_grad():
            emb[:n] = pipe.text_encoder(**tokens).pooler_output.to(dtype)
        masks[:n] = 1
    return {"boxes": xyxy[None], "positive_embeddings": emb[None], "masks": masks[None]}


def _gligen_cfg_batch(cond: dict) -> dict:
    """[uncond, cond] batch of a conditional grounding: the unconditional half has masks 0."""
    return {"boxes": torch.cat([cond["boxes"]] * 2),
            "positive_embeddings": torch.cat([cond["positive_embeddings"]] * 2),
            "masks": torch.cat([torch.zeros_like(cond["masks"]), cond["masks"]])}


def set_fuser(unet, enabled: bool) -> None:
    """Turn GLIGEN's gated self-attention layers on or off (scheduled sampling)."""
    for module in unet.modules():
        if type(module).__name__ == "GatedSelfAttentionDense":
            module.enabled = enabled


def decode_latents(pipe, latents: torch.Tensor):
    """VAE-decode (latents / scaling_factor) to an (H, W, 3) uint8 numpy image."""
    vae = pipe.vae
    with torch.no_grad():
        x = vae.decode(latents.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
    x = ((x.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return x[0].permute(1, 2, 0).cpu().numpy()


def refine_image(refiner, image, *, prompt: str, negative: str, seed: int, strength: float = REFINER_STRENGTH,
                 size: int = REFINER_SIZE):
    """LMD's optional SDXL-refiner pass (2.7): Lanczos-upsample to `size`, img2img at `strength`.

    `refiner` is a loaded StableDiffusionXLImg2ImgPipeline (or anything with its call signature);
    the caller passes the user's original prompt, the LLM negative + REFINER_NEGATIVE, and the
    base seed + 7890. Returns an (size, size, 3) uint8 image.
    """
    import numpy as np
    from PIL import Image

    pil = Image.fromarray(image).resize((size, size), Image.LANCZOS)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    out = refiner(prompt=prompt, negative_prompt=negative, image=pil, strength=strength, generator=generator,
                  output_type="np").images[0]
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# the denoising loop
# ---------------------------------------------------------------------------------------------

# before_step(i, t, latents, scheduler) -> latents;  after_forward(i, t);  after_step(i, t, latents) -> latents
BeforeStep = Callable[[int, torch.Tensor, torch.Tensor, object], torch.Tensor]
AfterForward = Callable[[int, torch.Tensor], None]
AfterStep = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def denoise(pipe, latents: torch.Tensor, text: TextCondition, *, steps: int, guidance_scale: float,
            gligen: dict | None = None, gligen_beta: float = 0.0, before_step: BeforeStep | None = None,
            after_forward: AfterForward | None = None, after_step: AfterStep | None = None
            ) -> tuple[torch.Tensor, int]:
    """DDIM from `latents` (the initial noise, (B, C, h, w)); returns (final latents fp32, UNet passes).

    One CFG forward per step ([uncond, cond] batch; cond only when text.uncond is None), counted
    as one pass; hooks add guidance (before the forward), read attention (after it) and freeze
    the foreground (after the scheduler step). `gligen` is a conditional grounding from
    `gligen_condition`; its fuser is on for the first int(gligen_beta * steps) steps and always
    switched back on at the end (pipelines are cached and shared).
    """
    unet = pipe.unet
    device = pipe.device
    scheduler = ddim_scheduler(pipe, steps, device)
    do_cfg = text.uncond is not None
    b = latents.shape[0]
    embeds = torch.cat([text.uncond.expand(b, -1, -1), text.cond.expand(b, -1, -1)]) if do_cfg \
        else text.cond.expand(b, -1, -1)
    extra = {}
    if gligen is not None:
        g = {k: v.expand(b, *v.shape[1:]) for k, v in gligen.items()}
        extra = {"cross_attention_kwargs": {"gligen": _gligen_cfg_batch(g) if do_cfg else g}}
    grounding_steps = int(gligen_beta * len(scheduler.timesteps)) if gligen is not None else 0
    z = latents.to(device=device, dtype=torch.float32) * scheduler.init_noise_sigma
    passes = 0
    try:
        for i, t in enumerate(scheduler.timesteps):
            if gligen is not None:
                set_fuser(unet, i < grounding_steps)
            if before_step is not None:
                z = before_step(i, t, z, scheduler)
            with torch.no_grad():
                x = torch.cat([z, z]) if do_cfg else z
                x = scheduler.scale_model_input(x, t).to(unet.dtype)
                eps = unet(x, t, encoder_hidden_states=embeds, **extra).sample.float()
                passes += 1
                if do_cfg:
                    uncond, cond = eps.chunk(2)
                    eps = uncond + guidance_scale * (cond - uncond)
                if after_forward is not None:
                    after_forward(i, t)
                z = scheduler.step(eps, t, z).prev_sample
            if after_step is not None:
                z = after_step(i, t, z)
    finally:
        if gligen is not None:
            set_fuser(unet, True)
    return z, passes


# ---------------------------------------------------------------------------------------------
# phrases and boxes of a prompt
# ---------------------------------------------------------------------------------------------

def phrase_targets(tokenizer, prompt: str, spec: GroundingSpec, energy_tokens: str = "all"
                   ) -> tuple[list[PhraseTarget], list[int], list[str]]:
    """The overall phrases as energy targets in `prompt`, which box belongs to which phrase, warnings.

    Each phrase's tokens are matched in prompt order (tokens.match_phrases; falls back to the
    last word); its boxes are the spec boxes grouped under it (the energy uses their union).
    energy_tokens "prompt": the energy renormalises attention over the prompt's word tokens.
    """
    matches = match_phrases(tokenizer, prompt, list(spec.overall_phrases))
    span = word_span(tokenizer, prompt) if energy_tokens == "prompt" else None
    targets, warnings = [], []
    box_phrase = [-1] * len(spec.boxes)
    for p, (phrase, group, m) in enumerate(zip(spec.overall_phrases, spec.overall_phrase_boxes, matches)):
        targets.append(PhraseTarget(tuple(m.tokens), tuple(tuple(spec.boxes[j].box) for j in group), m.word_token,
                                    span if m.tokens else None))
        for j in group:
            box_phrase[j] = p
        if not m.tokens:
            warnings.append(f"phrase {phrase!r} not found in the prompt: no guidance or ratio for it")
        elif m.how == "last_word":
            warnings.append(f"phrase {phrase!r} not verbatim in the prompt: matched its last word")
    return targets, box_phrase, warnings


def _check_references(unet, layers: Sequence[str], boxes: Sequence[BoxLatents], latent_hw, guidance_steps: int,
                      warnings: list[str]) -> None:
    """Per-box attention must match this UNet's transfer maps; note boxes that have too little of it."""
    from lmd_batch.grounding.layers import resolve_layers

    expected = {l.name: l.resolution(latent_hw) for l in resolve_layers(unet, layers)}
    for b in boxes:
        if not b.attn:
            warnings.append(f"box {b.index} ({b.caption!r}) has no per-box attention: no attention transfer for it")
            continue
        for name in layers:
            a = b.attn.get(name)
            if a is None:
                warnings.append(f"box {b.index} ({b.caption!r}) has no attention at {name}: no attention transfer")
                break
            if tuple(a.shape[-2:]) != expected[name]:
                raise ValueError(f"box {b.index}: per-box attention at {name} is {tuple(a.shape[-2:])}, this run's "
                                 f"map is {expected[name]} (per-box and overall runs need the same model and size)")
            if a.shape[0] < guidance_steps:
                warnings.append(f"box {b.index} ({b.caption!r}) has attention for {a.shape[0]} steps: no transfer "
                                f"from step {a.shape[0]} on")
                break


# ---------------------------------------------------------------------------------------------
# the shared run: overall generation and the baselines
# ---------------------------------------------------------------------------------------------

def _ratio(maps, tokens, box, canvas) -> float | None:
    if not tokens or maps is None:
        return None
    return round(in_box_attention_ratio(maps, tokens, box, size=canvas), 6)


def run_grounded(pipe, spec: GroundingSpec, initial: torch.Tensor, cfg, *, method: str, prompt: str,
                 negative: str, boxes: Sequence[BoxLatents] = (), composed: torch.Tensor | None = None,
                 frozen_steps: int = 0, guidance_steps: int = 0, gligen: bool = False, gligen_beta: float = 0.0,
                 ratio_steps: int | None = None, callback: Callable[[int, torch.Tensor], None] | None = None,
                 canvas=LAYOUT_CANVAS, warnings: Sequence[str] = ()) -> tuple[torch.Tensor, dict]:
    """One denoising run with any of LMD's ingredients switched on; (final latents, report).

    initial:        (1, C, h, w) initial latent (the composed canvas[0], or the background noise);
    composed:       (frozen_steps + 1, 1, C, h, w) canvas trajectory; its foreground (the union of
                    `boxes`' masks) replaces the latent after each step i < frozen_steps;
    guidance_steps: steps with latent guidance (box energy + transfer against `boxes`' attention);
    gligen:         ground every spec box through the pipeline's GLIGEN UNet (scheduled sampling);
    ratio_steps:    record in-box ratios at steps < ratio_steps (default: cfg.guidance_steps);
    callback:       callback(i, latents) after each step (after the frozen replacement).
    """
    start = time.perf_counter()
    unet = pipe.unet
    unet.requires_grad_(False)
    device = pipe.device
    warnings = list(warnings)
    steps = int(cfg.steps)
    text = encode_text(pipe, prompt, negative, cfg.guidance_scale)
    phrases, box_phrase, w = phrase_targets(pipe.tokenizer, prompt, spec, getattr(cfg, "energy_tokens", "all"))
    warnings += w
    layers = select_layers(unet, "guidance")
    ratio_steps = min(steps, int(cfg.guidance_steps if ratio_steps is None else ratio_steps))
    guidance_steps = min(steps, int(guidance_steps))
    live = any(p.tokens for p in phrases)
    if guidance_steps and not live:
        warnings.append("no phrase of the layout is in the prompt: guidance skipped")
        guidance_steps = 0

    gligen_cond = None
    if gligen:
        if not is_gligen(pipe):
            raise ValueError(f"method {method!r} needs a GLIGEN pipeline (a UNet with a position net)")
        if len(spec.boxes) > GLIGEN_MAX_OBJECTS:
            warnings.append(f"GLIGEN grounds at most {GLIGEN_MAX_OBJECTS} boxes; the other "
                            f"{len(spec.boxes) - GLIGEN_MAX_OBJECTS} are left out")
        gligen_cond = gligen_condition(pipe, [b.caption for b in spec.boxes], [b.box for b in spec.boxes], canvas)
    guide_kwargs = ({"cross_attention_kwargs": {"gligen": gligen_cond}} if gligen_cond is not None else None)

    fg = None
    if composed is not None and frozen_steps > 0 and boxes:
        fg = foreground_mask(boxes, tuple(initial.shape[-2:]), device) > 0.5
        composed = composed.to(device)

    by_index = {b.index: b for b in boxes}
    if guidance_steps:
        _check_references(unet, layers, boxes, tuple(initial.shape[-2:]), guidance_steps, warnings)
    ratios: list[list[float | None]] = [[] for _ in spec.boxes]
    final_maps: dict = {}
    guidance_log: list[dict] = []
    state = {"energy": None, "passes": 0}
    store = AttentionStore(batch_layout="cfg" if text.uncond is not None else "cond", max_records=1, detach=True)
    capture = spec.boxes and live

    def before_step(i, t, z, scheduler):
        if i >= guidance_steps:
            return z
        transfers, missing = [], []
        for j, b in enumerate(spec.boxes):
            box = by_index.get(j)
            p = box_phrase[j]
            if box is None or p < 0:
                continue
            ref = reference_attention(box, layers, i)
            if ref is None:
                missing.append(j)
                continue
            transfers.append(TransferTarget(p, tuple(box.box), tuple(r.to(device) for r in ref)))
        energy = UNetEnergy(unet, store, layers, t, text.cond, [phrases], [transfers] if transfers else None,
                            ref_ca_loss_weight=cfg.ref_ca_loss_weight, canvas=canvas,
                            unet_kwargs=(lambda idx: guide_kwargs) if guide_kwargs else None)
        fn = (lambda x, idx: energy(x.to(unet.dtype), idx)) if unet.dtype != torch.float32 else energy
        result = guide_latents(z, fn, step_index=i, alphabar_t=alphabar(scheduler, t), loss_scale=cfg.loss_scale,
                               loss_threshold=cfg.loss_threshold, guidance_steps=guidance_steps,
                               prev_energy=state["energy"])
        state["energy"] = result.energy
        n_iter = int(result.iterations.sum())
        state["passes"] += n_iter
        guidance_log.append({"step": i, "iterations": n_iter,
                             "energy": [round(float(e[0]), 6) for e in result.trace],
                             "transfer_boxes": len(transfers), "no_reference": missing})
        return result.latents

    def after_forward(i, t):
        if not capture:
            return
        record = store.last()
        maps = [record[n] for n in layers if n in record]
        if i < ratio_steps:
            for j, b in enumerate(spec.boxes):
                p = box_phrase[j]
                ratios[j].append(_ratio(maps, phrases[p].tokens if p >= 0 else (), b.box, canvas))
        if i == steps - 1:
            final_maps["maps"] = maps

    def after_step(i, t, z):
        if fg is not None and i < frozen_steps:
            z = torch.where(fg, composed[i + 1], z)
        if callback is not None:
            callback(i, z)
        return z

    handle = install_attention_capture(unet, layers, store) if capture else None
    try:
        z, passes = denoise(pipe, initial, text, steps=steps, guidance_scale=cfg.guidance_scale, gligen=gligen_cond,
                            gligen_beta=gligen_beta, before_step=before_step if guidance_steps else None,
                            after_forward=after_forward, after_step=after_step)
    finally:
        if handle is not None:
            handle.restore()

    report_boxes = []
    for j, b in enumerate(spec.boxes):
        p = box_phrase[j]
        report_boxes.append({
            "index": j, "caption": b.caption, "box": [float(v) for v in b.box],
            "phrase": spec.overall_phrases[p] if p >= 0 else None,
            "tokens": list(phrases[p].tokens) if p >= 0 else [],
            "in_box_ratio": {"steps": ratios[j],
                             "final": _ratio(final_maps.get("maps"), phrases[p].tokens if p >= 0 else (), b.box,
                                             canvas)},
        })
    report = {
        "method": method, "prompt": prompt, "negative": negative, "steps": steps,
        "guidance_scale": float(cfg.guidance_scale), "frozen_steps": int(frozen_steps) if fg is not None else 0,
        "guidance_steps": guidance_steps, "gligen": bool(gligen), "gligen_beta": float(gligen_beta) if gligen else None,
        "layers": list(layers), "ratio_source": RATIO_SOURCE, "boxes": report_boxes, "guidance": guidance_log,
        "unet_passes": passes + state["passes"], "warnings": warnings,
        "timings": {"denoise_s": round(time.perf_counter() - start, 4)},
    }
    return z, report


def overall_generate(pipe, spec: GroundingSpec, boxes: Sequence[BoxLatents], background_noise: torch.Tensor, cfg,
                     method: str, gligen_pipe=None, *, callback: Callable[[int, torch.Tensor], None] | None = None,
                     canvas=LAYOUT_CANVAS) -> tuple[torch.Tensor, dict]:
    """LMD's step 2: compose, freeze, guide, denoise. Returns (final latents (1, C, h, w) fp32, report).

    pipe:             the SD pipeline (LMD), or for LMD+ the GLIGEN pipeline if `gligen_pipe` is None;
    boxes:            the per-box results (`BoxLatents.index` = position in `spec.boxes`); may be
                      fewer than the spec's boxes (a failed box is simply not pasted);
    background_noise: (1, C, h, w), the shared noise the per-box runs started from;
    cfg:              DiffusionConfig-like: steps, guidance_scale, frozen_step_ratio, guidance_steps,
                      loss_scale, loss_threshold, ref_ca_loss_weight, gligen_beta;
    callback:         callback(i, latents) after each step's frozen replacement (tests, previews).

    Decode with `decode_latents(pipe, latents)`. The report (JSON-able) has per box its caption,
    box, phrase tokens and in-box attention ratio at each of the first cfg.guidance_steps steps
    and at the end, the guidance energy trace, the frozen steps, UNet passes and warnings.
    """
    if method not in ("lmd", "lmd_plus"):
        raise ValueError(f"overall generation is for methods 'lmd' and 'lmd_plus', not {method!r}")
    warnings: list[str] = []
    denoiser = pipe
    if method == "lmd_plus":
        denoiser = gligen_pipe if gligen_pipe is not None else pipe
    frozen = frozen_step_count(cfg)
    boxes = list(boxes)
    composed = None
    if boxes:
        shortest = min(torch.as_tensor(b.latents).shape[0] for b in boxes) - 1
        if shortest < frozen:
            warnings.append(f"per-box trajectories hold {shortest} steps: {frozen} frozen steps reduced to {shortest}")
            frozen = shortest
        composed, owner = compose_trajectory(background_noise, boxes, frozen)
        initial = composed[0]
        for b in boxes:
            if not (owner == b.index).any():
                warnings.append(f"box {b.index} ({b.caption!r}) owns no latent cell (empty or fully covered mask)")
    else:
        initial = background_noise.float()
        if spec.boxes:
            warnings.append("no per-box latents: nothing was composed or frozen")
    latents, report = run_grounded(
        denoiser, spec, initial, cfg, method=method, prompt=spec.overall_prompt,
        negative=overall_negative_prompt(spec, getattr(cfg, "negative_prompt", "lmd")), boxes=boxes, composed=composed, frozen_steps=frozen,
        guidance_steps=int(cfg.guidance_steps) if spec.boxes else 0, gligen=method == "lmd_plus",
        gligen_beta=float(cfg.gligen_beta), callback=callback, canvas=canvas, warnings=warnings)
    if not spec.boxes:
        report["warnings"].append("the layout has no boxes: plain generation with the negative prompt")
    return latents, report
