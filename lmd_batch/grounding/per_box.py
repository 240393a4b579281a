"""Step 1 of LMD / LMD+: one generation per box, many layouts in one UNet batch (LMD-REFERENCE 2.4).

For every box of every layout a run generates "<background> with <caption>" from the layout's
shared initial noise (the background noise, with the box's own noise blended in inside the run's
box; `grounding.noise`), keeps its latent trajectory, the word token's attention and a mask of
the object, and hands composition a `BoxLatents` (types.py) already aligned to the real box.

- **LMD**: the box is centred (horizontal centre, bottom at 0.8 of the canvas; `align.centred_box`),
  SD with CFG, and cross-attention energy guidance (`guidance.guide_latents` + `UNetEnergy`) on all
  the phrase's tokens for the steps < `cfg.guidance_steps`; the mask comes from SAM with a point
  prompt at the word-token attention's peak (or the attention / the box, `mask_mode`); then the
  run is shifted so the mask's centre of mass sits on the real box (`align`).
- **LMD+**: GLIGEN with the single box and caption as the grounding input (conditional half
  only), the gated self-attention ("fuser") on for the first int(gligen_beta * steps) steps; no
  centring, no per-box guidance; SAM with the layout box as the prompt.

Batching (the GPU saving): the runs of *many layouts* go through the UNet as one batch
(`box_batch_size` runs per chunk, across layouts). All runs share the DDIM timesteps; a CFG
forward is one UNet call on [uncond..., cond...] for the whole chunk; guidance evaluates the
chunk's energies (independent per sample), sums them and takes one backward; the scheduler
steps the whole chunk. Samples never interact, so a chunk gives each run what it would get alone
(up to fp32 kernel differences between batch sizes).

Saved per run (contract: types.BoxLatents): latents at step indices 0..frozen_steps (index 0 is
the run's initial noise, before any guidance; index i + 1 is after scheduler step i), the word
token's cond attention at the transfer layers for step indices 0..max(guidance_steps,
overall_guidance_steps)-1 (from each step's CFG forward, after that step's guidance), and, for the mask, the word token's attention
at the "mask" layer averaged over the steps from 10/50 of the run on and over heads.

UNet passes are counted as the contract counts them: one per CFG forward of a chunk (both halves
together) and one per guidance iteration of a chunk (its forward + backward).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from lmd_batch.grounding.align import align_box_latents, centred_box
from lmd_batch.grounding.attention import AttentionStore, install_attention_capture
from lmd_batch.grounding.energy import PhraseTarget, box_energy, in_box_attention_ratio
from lmd_batch.grounding.guidance import UNetEnergy, alphabar, guide_latents
from lmd_batch.grounding.layers import select_layers
from lmd_batch.grounding.masks import (attention_mask, attention_start_step, box_mask_only, sam_mask)
from lmd_batch.grounding.noise import default_blending_ratio, shared_noise
from lmd_batch.grounding.spec import SPEC_CANVAS, per_box_negative
from lmd_batch.grounding.tokens import match_phrase, word_span
from lmd_batch.grounding.types import BoxLatents, GroundingSpec

METHODS = ("lmd", "lmd_plus")
MASK_MODES = ("sam", "attention", "box")
GLIGEN_MAX_OBJS = 30


@dataclass
class BoxRun:
    """One per-box run, planned: which layout and box, prompts, boxes, initial noise."""

    spec_index: int
    box_index: int
    caption: str
    word: str
    prompt: str
    negative: str
    prompt_start: int  # token position where the caption starts in `prompt` (1 = first token)
    box: tuple[float, float, float, float]  # the real layout box (512 canvas)
    run_box: tuple[float, float, float, float]  # where the run draws it (LMD: centred)
    initial: torch.Tensor  # (C, h, w) fp32 CPU
    seeds: dict = field(default_factory=dict)


def frozen_steps(cfg) -> int:
    """int(steps * frozen_step_ratio): the per-box latents kept are indices 0..frozen_steps."""
    return int(cfg.steps * cfg.frozen_step_ratio)


def latent_size(pipe, size: int) -> tuple[int, int]:
    f = int(getattr(pipe, "vae_scale_factor", 8))
    return size // f, size // f


def plan_runs(tokenizer, specs: Sequence[tuple[GroundingSpec, object, int]], *, method: str, job_seed: int,
              latent_shape: tuple[int, int, int], ratio: float, negative_mode: str = "lmd") -> list[BoxRun]:
    """Every box of every spec as a `BoxRun`, in (spec, box) order, with its initial noise."""
    runs = []
    for si, (spec, prompt_id, sample) in enumerate(specs):
        if not spec.boxes:
            continue
        run_boxes = [centred_box(b.box, SPEC_CANVAS) if method == "lmd" else tuple(float(v) for v in b.box)
                     for b in spec.boxes]
        noise = shared_noise(job_seed, prompt_id, sample, run_boxes, ratio=ratio, latent_shape=latent_shape,
                             canvas=SPEC_CANVAS)
        negative = per_box_negative(spec, negative_mode)
        prefix = f"{spec.background} with" if spec.background else ""
        start = 1 + (len(tokenizer.tokenize(prefix)) if prefix else 0)
        for bi, (b, prompt) in enumerate(zip(spec.boxes, spec.per_box_prompts)):
            runs.append(BoxRun(si, bi, b.caption, b.word, prompt, negative, start, tuple(float(v) for v in b.box),
                               tuple(float(v) for v in run_boxes[bi]), noise.initial[bi],
                               {"background": noise.seeds["background"], "box": noise.seeds["boxes"][bi]}))
    return runs


def _set_fuser(unet, enabled: bool) -> None:
    from diffusers.models.attention import GatedSelfAttentionDense

    for module in unet.modules():
        if type(module) is GatedSelfAttentionDense:
            module.enabled = enabled


def ddim_scheduler(pipe, steps: int, device=None):
    """The DDIM scheduler LMD uses (from the pipeline's scheduler config), set to `steps` steps.

    The overall run must use the same config and step count: the per-box attention is indexed by
    step, and the frozen latents by step index (LMD-REFERENCE 2.6, checklist item 5).
    """
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(int(steps), device=device)
    return sched


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    return (x.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()


def decode_latents(pipe, latents: torch.Tensor, batch: int = 4) -> np.ndarray:
    """(B, C, h, w) latents -> (B, H, W, 3) uint8 images through the pipeline's VAE (decoded
    `batch` at a time: the VAE decoder at full resolution is the memory peak of a chunk)."""
    vae = pipe.vae
    out = []
    with torch.no_grad():
        for i in range(0, latents.shape[0], batch):
            part = latents[i:i + batch].to(vae.device, vae.dtype) / vae.config.scaling_factor
            out.append(_to_uint8(vae.decode(part).sample))
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 3), np.uint8)


def _clean(values) -> list[float]:
    return [float(v) for v in values if not (isinstance(v, float) and math.isnan(v))]


def _zero_stats() -> dict:
    return {"unet_passes": 0, "cfg_passes": 0, "guidance_passes": 0, "chunks": 0, "boxes": 0, "decoded": 0,
            "sam_calls": 0, "seconds": 0.0}


class _Context:
    """Everything shared by the chunks of one generate_boxes call."""

    def __init__(self, pipe, cfg, method, mask_mode, predictor, latent_dtype, keep_images, keep_steps=None):
        self.pipe, self.cfg, self.method, self.mask_mode = pipe, cfg, method, mask_mode
        self.predictor, self.latent_dtype, self.keep_images = predictor, latent_dtype, keep_images
        self.unet = pipe.unet
        self.device, self.dtype = self.unet.device, self.unet.dtype
        self.steps = int(cfg.steps)
        # keep_steps (the box-latent cache): keep latents 0..keep_steps and attention of steps < keep_steps,
        # so composition settings (frozen ratio, overall guidance steps) can change without rerunning.
        self.frozen = frozen_steps(cfg) if keep_steps is None else min(int(keep_steps), self.steps)
        # attention is kept for every step either pass guides: the overall pass's transfer reads it
        # even when the per-box runs themselves are unguided (guidance_steps 0)
        overall = getattr(cfg, "overall_guidance_steps", None)
        guided = max(int(cfg.guidance_steps), int(cfg.guidance_steps if overall is None else overall))
        self.attn_steps = min(guided if keep_steps is None else int(keep_steps), self.steps)
        self.box_guidance_steps = int(cfg.guidance_steps) if method == "lmd" else 0
        self.sam_start = attention_start_step(self.steps)
        self.do_cfg = float(cfg.guidance_scale) > 1.0
        self.guide_layers = select_layers(self.unet, "guidance")
        self.transfer_layers = select_layers(self.unet, "transfer")
        self.mask_layer = select_layers(self.unet, "mask")[0]
        self.scheduler = ddim_scheduler(pipe, self.steps, self.device)
        self.timesteps = list(self.scheduler.timesteps)
        self.gligen_steps = int(cfg.gligen_beta * self.steps) if method == "lmd_plus" else 0
        self.energy_tokens = getattr(cfg, "energy_tokens", "all")
        self.stats = _zero_stats()


def _encode(ctx: _Context, runs: list[BoxRun]) -> tuple[torch.Tensor, torch.Tensor | None]:
    cond, uncond = ctx.pipe.encode_prompt([r.prompt for r in runs], ctx.device, 1, ctx.do_cfg,
                                          [r.negative for r in runs] if ctx.do_cfg else None)
    return cond.to(ctx.dtype), (uncond.to(ctx.dtype) if uncond is not None else None)


def _gligen_inputs(ctx: _Context, runs: list[BoxRun]) -> dict:
    """GLIGEN's grounding input for a chunk: one box + caption per run (conditional half only)."""
    pipe = ctx.pipe
    tok = pipe.tokenizer(
        [r.caption for r in runs], padding="max_length", max_length=pipe.tokenizer.model_max_length,
        truncation=True, return_tensors="pt")
    with torch.no_grad():
        pooled = pipe.text_encoder(tok.input_ids.to(ctx.device), attention_mask=tok.attention_mask.to(ctx.device)
                                   ).pooler_output
    b, dim = len(runs), ctx.unet.config.cross_attention_dim
    boxes = torch.zeros(b, GLIGEN_MAX_OBJS, 4, device=ctx.device, dtype=ctx.dtype)
    emb = torch.zeros(b, GLIGEN_MAX_OBJS, dim, device=ctx.device, dtype=ctx.dtype)
    masks = torch.zeros(b, GLIGEN_MAX_OBJS, device=ctx.device, dtype=ctx.dtype)
    for i, r in enumerate(runs):
        x, y, w, h = r.run_box
        boxes[i, 0] = torch.tensor([x / SPEC_CANVAS, y / SPEC_CANVAS, (x + w) / SPEC_CANVAS, (y + h) / SPEC_CANVAS])
    emb[:, 0] = pooled.to(ctx.dtype)
    masks[:, 0] = 1
    if ctx.do_cfg:
        boxes, emb = torch.cat([boxes, boxes]), torch.cat([emb, emb])
        masks = torch.cat([torch.zeros_like(masks), masks])  # the unconditional half is ungrounded
    return {"boxes": boxes, "positive_embeddings": emb, "masks": masks}


def _run_chunk(ctx: _Context, runs: list[BoxRun], store: AttentionStore) -> list[BoxLatents]:
    t0 = time.perf_counter()
    unet, sched = ctx.unet, ctx.scheduler
    b = len(runs)
    cond, uncond = _encode(ctx, runs)
    matches = [match_phrase(ctx.pipe.tokenizer, r.prompt, r.caption, start=r.prompt_start, word=r.word) for r in runs]
    spans = [word_span(ctx.pipe.tokenizer, r.prompt) if ctx.energy_tokens == "prompt" else None for r in runs]
    phrases = [[PhraseTarget(m.tokens, (r.run_box,), m.word_token, span)] for m, r, span in zip(matches, runs, spans)]
    word_idx = torch.tensor([m.word_token if m.word_token is not None else 0 for m in matches], device=ctx.device)
    rows = torch.arange(b, device=ctx.device)
    gligen = _gligen_inputs(ctx, runs) if ctx.method == "lmd_plus" else None

    # Latents stay fp32 whatever the UNet's dtype (small guidance and DDIM updates would round
    # away in fp16); only the UNet's input is cast.
    z = torch.stack([r.initial for r in runs]).to(ctx.device, torch.float32) * sched.init_noise_sigma
    trajectory = [z.detach().to("cpu", ctx.latent_dtype)]
    attn = {name: [] for name in ctx.transfer_layers}
    sam_sum, sam_n = None, 0
    energies, ratios = [], []
    guide_trace: list[list[list[float]]] = [[] for _ in runs]
    prev = None
    passes = 0

    ehs = torch.cat([uncond, cond]) if ctx.do_cfg else cond
    try:
        if gligen is not None:
            _set_fuser(unet, True)
        for i, t in enumerate(ctx.timesteps):
            if gligen is not None and i == ctx.gligen_steps:
                _set_fuser(unet, False)
            # 1. attention guidance (LMD): the chunk's energies, one backward per iteration
            if i < ctx.box_guidance_steps:
                energy = UNetEnergy(unet, store, ctx.guide_layers, t, cond, phrases, canvas=SPEC_CANVAS)
                fn = (lambda x, idx, e=energy: e(x.to(ctx.dtype), idx)) if ctx.dtype != torch.float32 else energy
                res = guide_latents(z, fn, step_index=i, alphabar_t=alphabar(sched, t),
                                    loss_scale=ctx.cfg.loss_scale, loss_threshold=ctx.cfg.loss_threshold,
                                    guidance_steps=ctx.box_guidance_steps, prev_energy=prev)
                z, prev = res.latents, res.energy
                passes += len(res.trace)
                ctx.stats["guidance_passes"] += len(res.trace)
                rows_trace = torch.stack(res.trace).T.tolist() if res.trace else [[] for _ in runs]
                for k in range(b):
                    guide_trace[k].append(_clean(rows_trace[k]))
            # 2. the CFG forward of the whole chunk, attention captured (cond half)
            with torch.no_grad(), store.scoped(batch_layout="cfg" if ctx.do_cfg else "cond", tokens=None,
                                               enabled=True, detach=True, max_records=1, stop_after=None,
                                               device=None):
                inp = torch.cat([z, z]) if ctx.do_cfg else z
                inp = sched.scale_model_input(inp, t).to(ctx.dtype)
                kwargs = {}
                if gligen is not None:
                    kwargs["cross_attention_kwargs"] = {"gligen": dict(gligen)}
                out = unet(inp, t, encoder_hidden_states=ehs, **kwargs).sample.float()
                record = store.last()
            passes += 1
            ctx.stats["cfg_passes"] += 1
            guide_maps = [record[n] for n in ctx.guide_layers]
            energies.append(box_energy(guide_maps, phrases, canvas=SPEC_CANVAS).tolist())
            ratios.append([in_box_attention_ratio([m[k] for m in guide_maps], phrases[k][0].tokens, runs[k].run_box,
                                                  SPEC_CANVAS) if phrases[k][0].tokens else 0.0 for k in range(b)])
            if i < ctx.attn_steps:
                for n in ctx.transfer_layers:
                    attn[n].append(record[n][rows, ..., word_idx].detach().to("cpu", torch.float32))
            if i >= ctx.sam_start:
                m = record[ctx.mask_layer][rows, ..., word_idx].float().mean(1)  # (b, h_m, w_m)
                sam_sum = m if sam_sum is None else sam_sum + m
                sam_n += 1
            # 3. CFG and the scheduler step, on the whole chunk
            with torch.no_grad():
                if ctx.do_cfg:
                    eps_u, eps_c = out.chunk(2)
                    out = eps_u + ctx.cfg.guidance_scale * (eps_c - eps_u)
                z = sched.step(out, t, z).prev_sample
            if i + 1 <= ctx.frozen:
                trajectory.append(z.detach().to("cpu", ctx.latent_dtype))
    finally:
        if gligen is not None:
            _set_fuser(unet, True)

    ctx.stats["unet_passes"] += passes
    images = decode_latents(ctx.pipe, z)
    ctx.stats["decoded"] += b
    sam_avg = (sam_sum / max(1, sam_n)).cpu() if sam_sum is not None else None
    latents = torch.stack(trajectory, dim=1)  # (b, frozen + 1, C, h, w)
    h, w = z.shape[-2:]
    out_boxes = []
    for k, r in enumerate(runs):
        mres, mask_note = _mask_for(ctx, r, images[k], (h, w), sam_avg[k] if sam_avg is not None else None,
                                    matches[k].word_token is not None)
        info = {
            "seed": r.seeds["box"], "background_seed": r.seeds["background"], "method": ctx.method,
            "prompt": r.prompt, "run_box": list(r.run_box), "phrase_tokens": list(matches[k].tokens),
            "word_token": matches[k].word_token, "token_match": matches[k].how,
            "energy": [float(e[k]) for e in energies], "in_box_ratio": [float(x[k]) for x in ratios],
            "in_box_ratio_final": float(ratios[-1][k]) if ratios else 0.0,
            "guidance_energy": guide_trace[k], "mask": mres.info,
            "unet_passes": passes, "batch_size": b, "unet_passes_share": passes / b,
        }
        if mask_note:
            info["mask"]["note"] = mask_note
        box_attn = ({n: torch.stack([a[k] for a in attn[n]]).to(torch.float16) for n in ctx.transfer_layers}
                    if ctx.attn_steps > 0 and matches[k].word_token is not None else {})
        bl = BoxLatents(index=r.box_index, caption=r.caption, box=r.box, latents=latents[k].contiguous(),
                        mask=mres.mask.float().cpu(), attn=box_attn,
                        image=images[k] if ctx.keep_images else None, shift=(0, 0), info=info)
        if ctx.method == "lmd":
            bl = align_box_latents(bl, run_box=r.run_box, canvas=SPEC_CANVAS)
        out_boxes.append(bl)
    ctx.stats["chunks"] += 1
    ctx.stats["boxes"] += b
    ctx.stats["seconds"] += time.perf_counter() - t0
    return out_boxes


def _mask_for(ctx: _Context, run: BoxRun, image: np.ndarray, latent_hw, sam_avg, has_word: bool):
    """The run's mask in its own frame (before alignment) and a note when a fallback was used."""
    mode = ctx.mask_mode
    if ctx.method == "lmd_plus" and mode == "sam":
        ctx.stats["sam_calls"] += 1
        return sam_mask(ctx.predictor, image, latent_hw, box=run.run_box, canvas=SPEC_CANVAS), None
    if mode in ("sam", "attention") and (not has_word or sam_avg is None):
        return box_mask_only(run.run_box, latent_hw, SPEC_CANVAS), "word token not in the prompt: box mask"
    if mode == "sam":
        ctx.stats["sam_calls"] += 1
        return sam_mask(ctx.predictor, image, latent_hw, attn=sam_avg, canvas=SPEC_CANVAS), None
    if mode == "attention":
        res = attention_mask(sam_avg, latent_hw)
        if not bool(res.mask.any()):
            return box_mask_only(run.run_box, latent_hw, SPEC_CANVAS), "empty attention mask: box mask"
        return res, None
    return box_mask_only(run.run_box, latent_hw, SPEC_CANVAS), None


_SAM_CACHE: dict = {}


def _predictor(sam, cfg, device):
    from segment_anything import SamPredictor

    if sam is None:
        key = (cfg.sam_model, str(device))
        if key not in _SAM_CACHE:
            from lmd_batch.models.loaders import load_sam

            _SAM_CACHE[key] = load_sam(cfg.sam_model).to(device)
        sam = _SAM_CACHE[key]
    return sam if isinstance(sam, SamPredictor) else SamPredictor(sam)


def generate_boxes(pipe, specs: Sequence[tuple[GroundingSpec, object, int]], cfg, job_seed: int,
                   method: str = "lmd", sam=None, mask_mode: str | None = None, box_batch_size: int | None = None,
                   *, latent_dtype: torch.dtype = torch.float16, keep_images: bool = True,
                   stats: dict | None = None, want=None, keep_steps: int | None = None) -> list[list[BoxLatents]]:
    """Per-box runs of every box of every spec; returns one list of `BoxLatents` per spec (in the
    spec's box order; [] for a spec without boxes).

    pipe:           a StableDiffusionPipeline (LMD) or StableDiffusionGLIGENPipeline (LMD+);
    specs:          (spec, prompt_id, sample) triples: prompt_id and sample seed the noise;
    cfg:            a `DiffusionConfig` (steps, guidance_scale, frozen_step_ratio, fg_blending_ratio,
                    guidance_steps, loss_scale, loss_threshold, gligen_beta, size, sam_model, mask);
    method:         "lmd" or "lmd_plus";
    sam:            a segment-anything Sam (or SamPredictor); None loads `cfg.sam_model` once
                    (cached) when SAM masks are needed;
    mask_mode:      "sam" | "attention" | "box"; None: `cfg.mask`;
    box_batch_size: runs per UNet batch, across layouts; None: `cfg.box_batch_size`;
    latent_dtype:   the stored trajectory's dtype (the contract's fp16; fp32 for exact checks);
    keep_images:    keep the decoded per-box images in `BoxLatents.image`;
    stats:          a dict updated with unet_passes, cfg_passes, guidance_passes, chunks, boxes,
                    decoded, sam_calls, seconds (totals of this call);
    want:           want(spec_index, box_index) -> bool; runs it rejects are skipped (already in the
                    box-latent cache) and missing from the result lists; runs never depend on each other;
    keep_steps:     keep latents 0..keep_steps and the attention of steps < keep_steps instead of
                    0..frozen_steps / < guidance_steps (the cache keeps whole trajectories).
    """
    if method not in METHODS:
        raise ValueError(f"per-box generation is for {METHODS}; got method {method!r}")
    mask_mode = mask_mode or getattr(cfg, "mask", "sam")
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {MASK_MODES}; got {mask_mode!r}")
    if method == "lmd_plus" and getattr(pipe.unet, "position_net", None) is None:
        raise ValueError("LMD+ per-box runs need a GLIGEN pipeline (a UNet with attention_type='gated')")
    batch = int(box_batch_size or getattr(cfg, "box_batch_size", 8))
    if batch < 1:
        raise ValueError("box_batch_size must be >= 1")
    out: list[list[BoxLatents]] = [[] for _ in specs]
    h, w = latent_size(pipe, cfg.size)
    channels = int(pipe.unet.config.in_channels)
    ratio = default_blending_ratio(method, cfg.fg_blending_ratio)
    runs = plan_runs(pipe.tokenizer, specs, method=method, job_seed=job_seed, latent_shape=(channels, h, w),
                     ratio=ratio, negative_mode=getattr(cfg, "negative_prompt", "lmd"))
    if want is not None:
        runs = [r for r in runs if want(r.spec_index, r.box_index)]
    if not runs:
        if stats is not None:
            stats.update(_zero_stats())
        return out
    predictor = _predictor(sam, cfg, pipe.unet.device) if mask_mode == "sam" else None
    ctx = _Context(pipe, cfg, method, mask_mode, predictor, latent_dtype, keep_images, keep_steps)

    unet = pipe.unet
    grad_flags = [(p, p.requires_grad) for p in unet.parameters()]
    unet.requires_grad_(False)
    layers = list(dict.fromkeys(ctx.guide_layers + ctx.transfer_layers + [ctx.mask_layer]))
    handle = install_attention_capture(unet, layers, AttentionStore(batch_layout="cfg"))
    try:
        for start in range(0, len(runs), batch):
            chunk = runs[start:start + batch]
            for r, bl in zip(chunk, _run_chunk(ctx, chunk, handle.store)):
                out[r.spec_index].append(bl)
    finally:
        handle.restore()
        for p, flag in grad_flags:
            p.requires_grad_(flag)
    if stats is not None:
        stats.update(ctx.stats)
    return out
