"""`lmd-batch shapes train`: a Stable-Diffusion-format model of the shapes world, from scratch on a CPU.

What SHAPES-FEASIBILITY.md measured, built properly: (1) an AutoencoderKL with 4x downscaling
(64 px -> 16x16x4 latents; an 8x VAE gives attention maps too coarse for layout guidance),
(2) pre-encoded latents of seeded scenes, (3) a CLIP text encoder over the real CLIP BPE
vocabulary and an SD-shaped UNet2DConditionModel trained together with the noise-prediction loss
plus, from `attn_from_step` on, a TokenCompose-style attention-localisation loss: each object
group's colour and shape tokens are pushed to put their cross-attention (16x16 and 8x8 attn2
maps) inside the group's boxes. Without that term the model's attention is not localised and
LMD's guidance has nothing to grip (measured); the model is therefore trained with box
supervision on its cross-attention, and we say so wherever it is used.

Everything is step-based and seeded (scenes, noise, dropout, order), so the same command on the
same versions gives the same weights. The output is a diffusers StableDiffusionPipeline folder
(fp16 weights by default) that the normal loader opens like SD1.5, plus `training.json`.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass


@dataclass
class TrainConfig:
    size: int = 64
    seed: int = 0
    vae_steps: int = 2400
    vae_batch: int = 16
    latents: int = 16384
    unet_steps: int = 4000
    batch: int = 32
    vae_lr: float = 1e-3
    lr: float = 5e-4
    warmup: int = 100
    decay_from: float = 0.6  # both phases: constant lr, then cosine down to 10% from this share of the steps
    attn_weight: float = 0.03
    attn_from_step: int = 300
    caption_dropout: float = 0.1
    ema: float = 0.998
    max_tokens: int = 32
    threads: int = 2
    fp16: bool = True
    device: str = "cpu"  # "cuda" trains on a GPU; every random draw stays on CPU generators, as on a CPU
    workers: int = 1  # processes rendering scenes ahead (same pixels; what keeps a GPU busy)
    checkpoint_every: int = 200  # steps between resumable checkpoints in OUT/.checkpoint (0: none)


#: Which cross-attention layers LMD should read on this UNet (saved in its config, see
#: grounding/layers.py `model_presets`): the 8x8 maps of the up path for the energy and attention
#: transfer, the 8x8 map of the down path for attention masks. The role rules made for SD1.x would
#: pick the 4x4 mid/up maps here, which the localisation loss never trained (it covers 16x16 and 8x8).
LMD_LAYERS = {
    "guidance": ["up_blocks.1.attentions.0.transformer_blocks.0.attn2", "up_blocks.1.attentions.1.transformer_blocks.0.attn2"],
    "transfer": ["up_blocks.1.attentions.0.transformer_blocks.0.attn2", "up_blocks.1.attentions.1.transformer_blocks.0.attn2"],
    "mask": ["up_blocks.2.attentions.0.transformer_blocks.0.attn2"],  # 16x16: a mask at latent resolution
}


def lr_factor(step: int, steps: int, warmup: int, decay_from: float) -> float:
    """Linear warm-up, constant, then a cosine from `decay_from` of the run down to 0.1 at the end:
    the decay is what turns a noisy late phase into sharper images (measured on the VAE)."""
    import math

    f = min(1.0, (step + 1) / max(1, warmup))
    start = int(decay_from * steps)
    if steps > start and step >= start:
        f *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - start) / max(1, steps - start)))
    return f


def build_models(cfg: TrainConfig, tokenizer):
    """Fresh VAE (4x), text encoder and UNet with the feasibility study's shapes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64), layers_per_block=1,
                        latent_channels=4, norm_num_groups=16, sample_size=cfg.size, mid_block_add_attention=False)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512,
                                      num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=cfg.max_tokens,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(sample_size=cfg.size // 4, in_channels=4, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
                                block_out_channels=(64, 128, 128), layers_per_block=1, cross_attention_dim=128,
                                attention_head_dim=4, norm_num_groups=32)
    return vae, te, unet


class _AttnCapture:
    """attn2 processor that computes attention explicitly and keeps the head-averaged maps of the
    16x16 and 8x8 layers (differentiably) for the localisation loss."""

    def __init__(self, name: str, store: dict, sizes: tuple[int, ...]):
        self.name, self.store, self.sizes = name, store, sizes

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        import torch

        b = hidden_states.shape[0]
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        v = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(q, k, None)
        if probs.shape[1] in self.sizes:
            self.store[self.name] = probs.reshape(b, attn.heads, probs.shape[1], probs.shape[2]).mean(1)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def attention_loss(maps: dict, masks, positions, valid):
    """Mean over captured layers of (1 - share of each token's attention inside its group's boxes).
    maps: {layer: (B, HW, T)}; masks: (B, G, s, s); positions: (B, G, 2) token indices; valid: (B, G)."""
    import torch
    import torch.nn.functional as F

    total, n = 0.0, 0
    b, g = valid.shape
    w = valid.repeat_interleave(2, 1)  # colour and shape token of each group
    idx = positions.reshape(b, g * 2)
    for pr in maps.values():
        side = int(round(pr.shape[1] ** 0.5))
        mm = masks if masks.shape[-1] == side else F.adaptive_avg_pool2d(masks, side)
        mm = mm.flatten(2).repeat_interleave(2, 1)                               # (B, 2G, HW)
        a = torch.gather(pr, 2, idx[:, None, :].expand(-1, pr.shape[1], -1)).permute(0, 2, 1)  # (B, 2G, HW)
        inside = (a * mm).sum(-1) / (a.sum(-1) + 1e-8)
        total = total + ((1 - inside) * w).sum() / w.sum().clamp(min=1)
        n += 1
    return total / max(n, 1)


def _losses(step: int, steps: int, **values) -> dict:
    """Loss values for the progress callback every 25th step only: reading a value waits for the
    device, and a wait every step would keep a GPU idle half the time on models this small."""
    return {k: v.item() for k, v in values.items()} if (step + 1) % 25 == 0 or step + 1 == steps else {}


def train(cfg: TrainConfig, out, log=print, progress=None) -> dict:
    """Train and save the pipeline into `out` (a local folder); returns the metrics."""
    from pathlib import Path

    with contextlib.ExitStack() as stack:  # holds the render workers, if any
        return _train(cfg, Path(out), log, progress, stack)


def _train(cfg: TrainConfig, out, log, progress, stack) -> dict:
    import copy

    import torch
    import torch.nn.functional as F
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionPipeline

    from lmd_batch.models.clip_vocab import clip_tokenizer
    from lmd_batch.models.registry import _vocab_dir
    from lmd_batch.shapes import checkpoint
    from lmd_batch.shapes.data import MAX_GROUPS, SceneImages, group_masks, token_positions
    from lmd_batch.shapes.scene import sample_scene

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tok = clip_tokenizer(_vocab_dir(), model_max_length=cfg.max_tokens)
    dev = torch.device(cfg.device)
    vae, te, unet = build_models(cfg, tok)
    vae, te, unet = vae.to(dev), te.to(dev), unet.to(dev)
    metrics: dict = {"config": asdict(cfg), "params_m": {
        "vae": sum(p.numel() for p in vae.parameters()) / 1e6, "text_encoder": sum(p.numel() for p in te.parameters()) / 1e6,
        "unet": sum(p.numel() for p in unet.parameters()) / 1e6}}
    tick = progress or (lambda *a, **k: None)
    seed_base = cfg.seed * 10_000_000
    saved = checkpoint.load(out, cfg)
    if saved:
        metrics |= {k: saved["metrics"][k] for k in ("vae",) if k in saved["metrics"]}
        log(f"resuming from the checkpoint in {out} ({saved['phase']} step {saved['step']})")
    every = cfg.checkpoint_every

    def due(step: int, steps: int) -> bool:
        return every > 0 and (step + 1) % every == 0 and step + 1 < steps

    # 1. VAE on freshly rendered scenes (a different stream of seeds than the latents below).
    #    Batch 16: at equal compute it beat batch 32 (detector P/R on reconstructions 0.86 vs 0.77).
    t0 = time.perf_counter()
    vae_first = seed_base + 5_000_000
    images = stack.enter_context(SceneImages(cfg.size, cfg.workers))
    vae_start = 0
    opt = torch.optim.AdamW(vae.parameters(), cfg.vae_lr, weight_decay=0.0, fused=True)
    if saved and saved["phase"] == "vae":
        checkpoint.restore(saved, {"vae": vae}, {"vae": opt}, gen)
        vae_start = saved["step"]
    elif saved:  # the VAE is done; the UNet phase restores it below
        vae_start = cfg.vae_steps
    images.prefetch(vae_first + vae_start * cfg.vae_batch, (cfg.vae_steps - vae_start) * cfg.vae_batch)
    images.prefetch(seed_base, cfg.latents)
    for step in range(vae_start, cfg.vae_steps):
        x = images.tensor(vae_first + step * cfg.vae_batch, cfg.vae_batch).to(dev)
        for group in opt.param_groups:
            group["lr"] = cfg.vae_lr * lr_factor(step, cfg.vae_steps, 0, cfg.decay_from)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        mse = F.mse_loss(rec, x)
        loss = (rec - x).abs().mean() + mse + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        tick("vae", step + 1, cfg.vae_steps, **_losses(step, cfg.vae_steps, mse=mse))
        if due(step, cfg.vae_steps):
            checkpoint.save(out, cfg, "vae", step + 1, {"vae": vae}, {"vae": opt}, gen, metrics)
    if vae_start < cfg.vae_steps or not cfg.vae_steps:
        metrics["vae"] = {"steps": cfg.vae_steps, "final_mse": mse.item() if cfg.vae_steps else None,
                          "seconds": round(time.perf_counter() - t0, 1)}
    else:
        checkpoint.restore(saved, {"vae": vae}, {}, gen)
    vae.eval()

    # 2. Encode the training scenes once.
    t0 = time.perf_counter()
    scenes = [sample_scene(seed_base + i, size=cfg.size) for i in range(cfg.latents)]
    side = cfg.size // 4
    lats = []
    with torch.no_grad():
        for i in range(0, len(scenes), 128):
            lats.append(vae.encode(images.tensor(seed_base + i, min(128, len(scenes) - i)).to(dev)).latent_dist.mean)
            tick("encode", min(i + 128, len(scenes)), len(scenes))
    lat = torch.cat(lats)
    scale = 1.0 / float(lat.std())
    vae.register_to_config(scaling_factor=scale)
    lat = lat * scale
    ids = tok([s.caption for s in scenes], padding="max_length", max_length=cfg.max_tokens, truncation=True,
              return_tensors="pt").input_ids
    null_ids = tok([""], padding="max_length", max_length=cfg.max_tokens, return_tensors="pt").input_ids[0]
    masks = torch.stack([group_masks(s, side) for s in scenes])
    positions = torch.zeros(len(scenes), MAX_GROUPS, 2, dtype=torch.long)
    valid = torch.zeros(len(scenes), MAX_GROUPS)
    for i, s in enumerate(scenes):
        for k, (c, p) in enumerate(token_positions(tok, s.caption)[:MAX_GROUPS]):
            if p < cfg.max_tokens:
                positions[i, k] = torch.tensor([c, p])
                valid[i, k] = 1.0
    ids, null_ids, masks, positions, valid = (t.to(dev) for t in (ids, null_ids, masks, positions, valid))
    stack.close()  # the render workers are done
    metrics["latents"] = {"n": len(scenes), "scaling_factor": scale, "seconds": round(time.perf_counter() - t0, 1)}

    # 3. Text encoder + UNet: noise prediction + attention localisation.
    t0 = time.perf_counter()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type="epsilon")
    store: dict = {}
    sizes = (side * side, (side // 2) ** 2)
    unet.set_attn_processor({n: (_AttnCapture(n, store, sizes) if "attn2" in n else p)
                             for n, p in unet.attn_processors.items()})
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, cfg.lr, weight_decay=0.01, fused=True)  # fused: 12 ms vs 56 ms a step
    ema_u, ema_t = copy.deepcopy(unet).eval(), copy.deepcopy(te).eval()
    ema_p = list(ema_u.parameters()) + list(ema_t.parameters())
    history = []
    sum_mse = sum_attn = torch.zeros((), dtype=torch.float64, device=dev)  # read each 100 steps: no GPU wait a step
    unet_start = 0
    modules = {"vae": vae, "unet": unet, "te": te, "ema_u": ema_u, "ema_t": ema_t}
    if saved and saved["phase"] == "unet":
        checkpoint.restore(saved, modules, {"unet": opt}, gen)
        unet_start, history = saved["step"], saved["metrics"]["unet_history"]
        sum_mse = saved["tensors"]["extra.sum_mse"].to(dev)
        sum_attn = saved["tensors"]["extra.sum_attn"].to(dev)
    for step in range(unet_start, cfg.unet_steps):
        idx = torch.randint(0, len(scenes), (cfg.batch,), generator=gen).to(dev)
        x0 = lat[idx]
        batch_ids = ids[idx].clone()
        drop = (torch.rand(cfg.batch, generator=gen) < cfg.caption_dropout).to(dev)
        batch_ids[drop] = null_ids
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        t = torch.randint(0, 1000, (cfg.batch,), generator=gen).to(dev)
        store.clear()
        pred = unet(sched.add_noise(x0, noise, t), t, te(batch_ids).last_hidden_state).sample
        mse = F.mse_loss(pred, noise)
        loss = mse
        attn = torch.zeros((), device=dev)
        if cfg.attn_weight > 0 and step >= cfg.attn_from_step:
            attn = attention_loss(store, masks[idx], positions[idx], valid[idx] * (~drop)[:, None].float())
            loss = loss + cfg.attn_weight * attn
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.unet_steps, cfg.warmup, cfg.decay_from)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_mul_(ema_p, decay)
            torch._foreach_add_(ema_p, [p.detach() for p in params], alpha=1 - decay)
        sum_mse = sum_mse + mse.detach().double()
        sum_attn = sum_attn + attn.detach().double()
        if (step + 1) % 100 == 0 or step + 1 == cfg.unet_steps:
            k = (step % 100) + 1
            history.append({"step": step + 1, "mse": round(float(sum_mse) / k, 5), "attn": round(float(sum_attn) / k, 4),
                            "seconds": round(time.perf_counter() - t0, 1)})
            sum_mse = sum_attn = torch.zeros((), dtype=torch.float64, device=dev)
        tick("unet", step + 1, cfg.unet_steps, **_losses(step, cfg.unet_steps, mse=mse, attn=attn))
        if due(step, cfg.unet_steps):
            checkpoint.save(out, cfg, "unet", step + 1, modules, {"unet": opt}, gen, metrics | {"unet_history": history},
                            extra={"sum_mse": sum_mse, "sum_attn": sum_attn})
    metrics["unet"] = {"steps": cfg.unet_steps, "history": history, "seconds": round(time.perf_counter() - t0, 1)}

    # 4. Save the EMA weights as a Stable Diffusion pipeline.
    from diffusers.models.attention_processor import AttnProcessor2_0

    ema_u.set_attn_processor(AttnProcessor2_0())  # the capture processors are not saved state
    ema_u.register_to_config(_lmd_layers=LMD_LAYERS)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=ema_t, tokenizer=tok, unet=ema_u,
        scheduler=DDIMScheduler.from_config(sched.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False).to("cpu")
    save_pipeline(pipe, out, cfg.fp16, metrics)
    checkpoint.clear(out)
    log(f"saved the shapes pipeline to {out}")
    return metrics


def save_pipeline(pipe, out, fp16: bool, metrics: dict) -> None:
    """Save a trained pipeline (fp16 weights unless told otherwise) plus its training.json."""
    import torch

    if fp16:
        pipe.to(torch.float16)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "training.json").write_text(json.dumps(metrics, indent=1))
