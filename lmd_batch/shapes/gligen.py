"""`lmd-batch shapes train-gligen`: the GLIGEN variant of a trained shapes model (for LMD+ and GLIGEN).

GLIGEN (Li et al. 2023) adds gated self-attention layers ("fusers") to a frozen Stable Diffusion
UNet and a position net that turns (box, phrase embedding) pairs into grounding tokens; only the
new layers are trained, on images with boxes. That is what we do here, on the renderer's boxes:
the base pipeline (`shapes-sd` or any folder `shapes train` wrote) is loaded through the normal
loader, its UNet is rebuilt with `attention_type="gated"` and the base weights, and only the
fusers, their gates and the position net learn. The result is a diffusers
StableDiffusionGLIGENPipeline folder, opened by `load_gligen_pipeline` like any GLIGEN model.

Grounding inputs are exactly what `grounding.overall.gligen_condition` feeds at inference: per
object the CLIP pooled output of its phrase ("a red circle"), its box as normalised xyxy, padded
to GLIGEN's 30 objects with masks. Step-based and seeded, like the base training.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

MAX_OBJS = 30  # diffusers' GLIGEN pipeline (and gligen_condition) pad to 30 objects


@dataclass
class GligenConfig:
    seed: int = 0
    steps: int = 600
    scenes: int = 8192
    batch: int = 32
    lr: float = 5e-4
    gate_lr: float = 1e-2  # the tanh gates start closed (0); at 5e-4 they reached only 0.007 in 600 steps
    warmup: int = 50
    caption_dropout: float = 0.1
    grounding_dropout: float = 0.1
    threads: int = 2
    fp16: bool = True


def gated_unet(base_unet):
    """A UNet with GLIGEN's gated attention carrying `base_unet`'s weights; the new modules are fresh."""
    import torch
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(dict(base_unet.config, attention_type="gated"))
    missing, unexpected = unet.load_state_dict(base_unet.state_dict(), strict=False)
    stray = [k for k in missing if ".fuser." not in k and not k.startswith("position_net.")]
    if stray or unexpected:
        raise ValueError(f"base UNet does not fit the gated UNet: missing {stray[:3]}, unexpected {unexpected[:3]}")
    for name, p in unet.named_parameters():
        p.requires_grad_(".fuser." in name or name.startswith("position_net."))
    return unet.to(torch.float32)


def train_gligen(base: str, out, cfg: GligenConfig | None = None, log=print, progress=None) -> dict:
    """Train the grounding layers on top of base pipeline `base` (any model reference); save to `out`."""
    from pathlib import Path

    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, StableDiffusionGLIGENPipeline

    from lmd_batch.models.loaders import load_sd_pipeline
    from lmd_batch.shapes.data import image_tensor
    from lmd_batch.shapes.scene import sample_scene
    from lmd_batch.shapes.train import save_pipeline
    from lmd_batch.shapes.vocab import phrase

    cfg = cfg or GligenConfig()
    out = Path(out)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tick = progress or (lambda *a, **k: None)
    pipe = load_sd_pipeline(base, dtype=torch.float32)
    vae, te, tok = pipe.vae.eval(), pipe.text_encoder.eval(), pipe.tokenizer
    unet = gated_unet(pipe.unet)
    size = int(vae.config.sample_size)
    metrics: dict = {"config": asdict(cfg), "base": str(base),
                     "trainable_m": sum(p.numel() for p in unet.parameters() if p.requires_grad) / 1e6}

    # Scenes from a stream of seeds the base training never used; latents, captions, grounding.
    t0 = time.perf_counter()
    seed_base = cfg.seed * 10_000_000 + 8_000_000
    scenes = [sample_scene(seed_base + i, size=size) for i in range(cfg.scenes)]
    with torch.no_grad():
        lat = torch.cat([vae.encode(image_tensor(scenes[i:i + 128], size)).latent_dist.mean
                         for i in range(0, len(scenes), 128)]) * vae.config.scaling_factor
        ids = tok([s.caption for s in scenes], padding="max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt").input_ids
        null_ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        phrases = sorted({phrase(1, o.color, o.shape) for s in scenes for o in s.objects})
        pooled = te(tok(phrases, padding=True, return_tensors="pt").input_ids).pooler_output
    index = {p: i for i, p in enumerate(phrases)}
    dim = unet.config.cross_attention_dim
    boxes = torch.zeros(len(scenes), MAX_OBJS, 4)
    emb = torch.zeros(len(scenes), MAX_OBJS, dim)
    masks = torch.zeros(len(scenes), MAX_OBJS)
    for i, s in enumerate(scenes):
        for k, o in enumerate(s.objects[:MAX_OBJS]):
            x, y, w, h = o.box
            boxes[i, k] = torch.tensor([x, y, x + w, y + h])
            emb[i, k] = pooled[index[phrase(1, o.color, o.shape)]]
            masks[i, k] = 1.0
    metrics["data"] = {"scenes": len(scenes), "phrases": len(phrases), "seconds": round(time.perf_counter() - t0, 1)}

    t0 = time.perf_counter()
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    params = [p for p in unet.parameters() if p.requires_grad]
    gate_names = ("alpha_attn", "alpha_dense")
    gates = [p for n, p in unet.named_parameters() if p.requires_grad and n.endswith(gate_names)]
    rest = [p for n, p in unet.named_parameters() if p.requires_grad and not n.endswith(gate_names)]
    # Own learning rate for the gates: while a gate is ~0 its fuser gets almost no gradient, so
    # the gates must open first for anything else to learn.
    opt = torch.optim.AdamW([{"params": rest, "lr": cfg.lr, "base": cfg.lr},
                             {"params": gates, "lr": cfg.gate_lr, "base": cfg.gate_lr}], weight_decay=0.0)
    history, running = [], 0.0
    unet.train()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(scenes), (cfg.batch,), generator=gen)
        batch_ids = ids[idx].clone()
        drop = torch.rand(cfg.batch, generator=gen) < cfg.caption_dropout
        batch_ids[drop] = null_ids[0]
        keep = (torch.rand(cfg.batch, generator=gen) >= cfg.grounding_dropout).float()[:, None]
        noise = torch.randn(lat[idx].shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch,), generator=gen)
        with torch.no_grad():
            text = te(batch_ids).last_hidden_state
        grounding = {"boxes": boxes[idx], "positive_embeddings": emb[idx], "masks": masks[idx] * keep}
        pred = unet(sched.add_noise(lat[idx], noise, t), t, text, cross_attention_kwargs={"gligen": grounding}).sample
        loss = F.mse_loss(pred, noise)
        for group in opt.param_groups:
            group["lr"] = group["base"] * min(1.0, (step + 1) / max(1, cfg.warmup))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running += loss.item()
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            k = (step % 100) + 1
            gate = float(torch.stack([g.detach().tanh() for g in gates]).mean()) if gates else 0.0
            history.append({"step": step + 1, "mse": round(running / k, 5), "mean_gate": round(gate, 4),
                            "seconds": round(time.perf_counter() - t0, 1)})
            running = 0.0
        tick("gligen", step + 1, cfg.steps, mse=loss.item())
    gates = {n: round(float(p.detach().tanh()), 4) for n, p in unet.named_parameters() if n.endswith(gate_names)}
    metrics["train"] = {"steps": cfg.steps, "history": history, "seconds": round(time.perf_counter() - t0, 1),
                        "mean_gate": round(sum(gates.values()) / max(1, len(gates)), 4)}

    unet.eval()
    gl = StableDiffusionGLIGENPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=pipe.scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    save_pipeline(gl, out, cfg.fp16, metrics)
    log(f"saved the shapes GLIGEN pipeline to {out}")
    return metrics
