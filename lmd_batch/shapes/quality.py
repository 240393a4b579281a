"""How good a trained shapes model is, measured the same way every time (`lmd-batch shapes evaluate`).

Why: the benchmark measures LMD on top of a model, but whether a training run worked (and whether
a retrained model matches the committed one) is a property of the model alone. Three measures,
each judged by the classical detector (detect.py), all seeded so the same model gives the same
numbers:

- **vae**: reconstruction MSE and detector precision / recall on VAE reconstructions of rendered
  scenes: the ceiling any image the model decodes can reach;
- **single**: plain generation (DDIM, CFG 7.5) of every colour x shape, in both caption forms the
  model was trained on ("a red circle on a sand background" and LMD's "a sand background with a
  red circle"), several seeds: the share with the asked colour, with the asked colour *and*
  shape (`accuracy`, the headline number), and with exactly one object;
- **pairs**: two-object prompts ("a red circle and a blue star on a grey background"): the share
  where both objects are found with their colours and shapes (attribute binding without LMD).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmd_batch.shapes.vocab import COLORS, SHAPES, phrase

FIRST_SEED = 900_000_000  # scenes far from every training stream (train.py uses seed * 1e7 + ...)


@dataclass(frozen=True)
class QualitySettings:
    vae_scenes: int = 200
    seeds: int = 4
    pair_prompts: int = 24
    steps: int = 20
    guidance_scale: float = 7.5
    batch: int = 48


def vae_quality(pipe, scenes: int = 200) -> dict:
    """Reconstruction MSE and detector P/R on reconstructions of `scenes` rendered scenes."""
    import torch

    from lmd_batch.shapes.data import image_tensor
    from lmd_batch.shapes.detect import detect_shapes, match
    from lmd_batch.shapes.scene import render, sample_scene

    vae = pipe.vae
    size = int(vae.config.sample_size)
    picked = [sample_scene(FIRST_SEED + i, size=size) for i in range(scenes)]
    tp = fp = fn = 0
    se, n = 0.0, 0
    for i in range(0, len(picked), 50):
        part = picked[i:i + 50]
        x = image_tensor(part, size)
        with torch.no_grad():
            rec = vae.decode(vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean).sample.float().cpu()
        se += float(((rec - x) ** 2).sum())
        n += x.numel()
        images = ((rec.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for scene, image in zip(part, images):
            _, _, boxes = render(scene, size)
            a, b, c = match(detect_shapes(image), [(o.color, o.shape, bx) for o, bx in zip(scene.objects, boxes)])
            tp, fp, fn = tp + a, fp + b, fn + c
    return {"scenes": scenes, "mse": round(se / max(1, n), 6),
            "precision": round(100.0 * tp / max(1, tp + fp), 2), "recall": round(100.0 * tp / max(1, tp + fn), 2)}


def _generate(pipe, prompts: list[str], seed: int, s: QualitySettings):
    """uint8 images of `prompts` drawn from one seeded generator, `s.batch` at a time."""
    import numpy as np
    import torch

    size = int(pipe.vae.config.sample_size)
    out = []
    gen = torch.Generator().manual_seed(seed)
    for i in range(0, len(prompts), s.batch):
        ims = pipe(prompts[i:i + s.batch], num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
                   height=size, width=size, generator=gen, output_type="np").images
        out.append((ims * 255).round().astype(np.uint8))
    return np.concatenate(out)


def single_quality(pipe, s: QualitySettings) -> dict:
    """Plain generation of one object of every colour and shape, both caption forms, `s.seeds` seeds."""
    from lmd_batch.shapes.detect import detect_shapes

    kinds = [(c, sh) for c in COLORS for sh in SHAPES]
    forms = {"on": lambda c, sh: f"{phrase(1, c, sh)} on a sand background",
             "with": lambda c, sh: f"a sand background with {phrase(1, c, sh)}"}
    stats = {f: {"colour": 0, "accuracy": 0, "exactly_one": 0, "n": 0} for f in forms}
    per_shape = {sh: [0, 0] for sh in SHAPES}
    per_colour = {c: [0, 0] for c in COLORS}
    for seed in range(s.seeds):
        prompts = [forms[f](c, sh) for f in forms for c, sh in kinds]
        images = _generate(pipe, prompts, seed, s)
        for k, image in enumerate(images):
            f = list(forms)[k // len(kinds)]
            c, sh = kinds[k % len(kinds)]
            found = [(d.color, d.shape) for d in detect_shapes(image)]
            st = stats[f]
            st["n"] += 1
            st["colour"] += any(fc == c for fc, _ in found)
            st["accuracy"] += (c, sh) in found
            st["exactly_one"] += len(found) == 1
            per_shape[sh][0] += (c, sh) in found
            per_shape[sh][1] += 1
            per_colour[c][0] += any(fc == c for fc, _ in found)
            per_colour[c][1] += 1
    out = {f: {k: round(100.0 * v / max(1, st["n"]), 2) for k, v in st.items() if k != "n"} | {"images": st["n"]}
           for f, st in stats.items()}
    total = sum(st["n"] for st in stats.values())
    out["accuracy"] = round(100.0 * sum(st["accuracy"] for st in stats.values()) / max(1, total), 2)
    out["shape_accuracy"] = {sh: round(100.0 * a / max(1, n), 1) for sh, (a, n) in per_shape.items()}
    out["colour_found"] = {c: round(100.0 * a / max(1, n), 1) for c, (a, n) in per_colour.items()}
    return out


def pair_quality(pipe, s: QualitySettings) -> dict:
    """Two distinct objects per prompt: the share where both are found (colour and shape)."""
    import numpy as np

    from lmd_batch.shapes.detect import detect_shapes

    rng = np.random.Generator(np.random.PCG64(FIRST_SEED))
    pairs = []
    while len(pairs) < s.pair_prompts:
        c = [str(v) for v in rng.choice(list(COLORS), size=2, replace=False)]
        sh = [str(v) for v in rng.choice(SHAPES, size=2)]
        pairs.append(((c[0], sh[0]), (c[1], sh[1])))
    prompts = [f"{phrase(1, *a)} and {phrase(1, *b)} on a grey background" for a, b in pairs]
    both = n = 0
    for seed in range(max(1, s.seeds // 2)):
        for (a, b), image in zip(pairs, _generate(pipe, prompts, 1000 + seed, s)):
            found = {(d.color, d.shape) for d in detect_shapes(image)}
            both += a in found and b in found
            n += 1
    return {"images": n, "both_found": round(100.0 * both / max(1, n), 2)}


def model_quality(ref: str, settings: QualitySettings | None = None, threads: int | None = None,
                  device: str = "cpu") -> dict:
    """All three measures for the SD-format shapes model `ref` (built-in name, folder or URL).
    On `device` "cuda" the noise still comes from CPU generators, so the same model gets the same
    starting latents as on a CPU; only the arithmetic differs."""
    import time

    import torch

    from lmd_batch.models.loaders import load_sd_pipeline

    s = settings or QualitySettings()
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    pipe = load_sd_pipeline(ref, dtype=torch.float32).to(device)
    out = {"model": ref, "device": device, "settings": s.__dict__, "vae": vae_quality(pipe, s.vae_scenes),
           "single": single_quality(pipe, s), "pairs": pair_quality(pipe, s)}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out
