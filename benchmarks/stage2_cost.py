"""Stage 2 cost: seconds per image and UNet passes of LMD and LMD+ against plain SD, in one run.

What it measures. For N boxes (default 1..4) this script times, in one process and interleaved
(so that a change in the machine's load hits every method alike):

- **sd**: plain Stable Diffusion (`generate_layout(..., "sd")`), the baseline every ratio divides by;
- **lmd** and **lmd_plus**, **unbatched**: `generate_layout` of one layout with `box_batch_size=1`
  (one per-box run per UNet batch, then composition, overall generation, decoding), the path of
  `lmd-batch generate`;
- **lmd** and **lmd_plus**, **batched**: the path of the Ray image stage: the boxes of K layouts
  (`--layouts`) as ONE box batch (`per_box.generate_boxes` with `box_batch_size = N * K`), then
  `generate_layout(..., boxes=...)` per layout (overall generation and decoding). Seconds per
  image = total / K.

Everything is counted: text encoding, per-box runs, per-box VAE decodes and SAM masks
(`--mask sam`, the default), composition, guided overall generation and the final decode. Model
loading is not: a warm-up generation per method runs first. Each measurement is repeated
`--repeats` times; the table shows the median.

Columns: s/img (seconds per image), passes/img (UNet passes per image as the code counts them:
one per CFG forward of a batch, both halves together, and one per guidance iteration of a batch;
a batch of the per-box runs of K layouts counts once and is shared by the K images), x SD (the
ratio to plain SD's seconds and passes), the issue's goal (LMD+ <= (N+1.5)x SD, LMD <= 2(N+1)x SD)
and the reference implementation's estimate (LMD+ about (N+3)x, LMD about 3(N+1)x; LMD-REFERENCE
section 5). Passes are not time: a guidance pass is a forward + backward at batch 1 (a CFG pass is
a forward at batch 2), and a batched pass processes N*K runs at once.

Models.
- `--model tiny` (default): the built-in tiny-sd, tiny-gligen, tiny-sam, through the production
  loaders (`lmd_batch.models.loaders`, via `generate.cached_model`). The tiny UNet is so small
  that Python overhead and per-call costs dominate, which is what batching saves; the ratios say
  little about full-size models on a GPU.
- `--model sd15-random`: SD1.5's architecture (UNet2DConditionModel 320/640/1280/1280, 2 layers per
  block, cross-attention 768, 8 heads; AutoencoderKL 128/256/512/512; CLIP ViT-L/14 text encoder,
  12 layers, 768 wide) built from the public config values written out below, with random weights
  (the time of a forward does not depend on the weights' values) and the real CLIP BPE tokenizer
  (`lmd_batch.models.clip_vocab`); a GLIGEN variant (the same UNet with gated self-attention and
  the position net, as GLIGEN's SD1.4 checkpoint has); a SAM ViT-B-sized model (1024 px image
  encoder, 12 blocks, 768 wide). They are saved into a temporary folder and opened by the
  production loaders (`load_sd_pipeline`, `load_gligen_pipeline`, `load_sam`), so the timed
  code is the production path. Defaults then: 512 px, 50 steps, 30 guided steps, fp16 on CUDA.
  No model hub is contacted.

fp16: pipelines are loaded by `generate.cached_model` with `dtype=` (the job file's
`diffusion.dtype`), the production path;
`generate_layout` then runs unchanged.

CPU threads. On the 2-core development machine, which runs other work beside this, one torch
thread was ~10x faster per tiny-UNet forward than two (25 ms against 280 ms, measured
2026-11-23 with the machine's load average at ~5): `--threads` defaults to 1. The summary prints
how much CPU this process got per wall second (1.0 = a whole core with one thread), and the load
average, to judge how clean a CPU measurement was.

Run (CPU defaults: tiny models, 128 px, 20 steps, 12 guided steps, N = 1..4, K = 4, 3 repeats):

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD .venv/bin/python benchmarks/stage2_cost.py [--json OUT]

    # on a GPU, full-size SD1.5 architecture, random weights, fp16, 512 px, 50 steps:
    PYTHONPATH=$PWD .venv/bin/python benchmarks/stage2_cost.py --device cuda --model sd15-random \
        [--repeats 1] [--layouts 4] [--boxes 1,2,3,4] [--json OUT]

The default CPU run took 447 s wall on the shared 2-core machine (2026-11-23: models 3 s,
warm-up 7 s, timed 434 s; this process got 0.82 CPU-s per wall-s). On a GPU, building the
random models takes about a minute (init on the GPU, save, load), and N = 1..4 with K = 4 runs
17 x 4 + 16 generations at 512 px / 50 steps; where one call has a time limit (10 minutes),
split the run with `--boxes 1,2` / `--boxes 3,4` or `--modes`. A CPU smoke run of the
sd15-random path (`--device cpu --size 64 --steps 2 --guidance-steps 1 --boxes 1 --layouts 2
--repeats 1`, fp32) took 5.5 minutes, most of it the random SAM ViT-B at 1024 px.

Tiny-model caveat: with random weights the box energy (heads summed) stays above the loss
threshold (5), so every guided step runs its maximum iterations; 12 guided of 20 steps is 39
guidance passes per run (1.95 per step, against 65 in 50 steps, 1.3 per step, at LMD's
settings), so the tiny defaults weigh guidance more than LMD's 50-step schedule does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

# SD1.5 (runwayml/stable-diffusion-v1-5) public config values: unet/config.json, vae/config.json,
# text_encoder/config.json, scheduler (LMD runs DDIM from the pipeline's scheduler config).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu",
    norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
SD15_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      clip_sample=False, set_alpha_to_one=False, steps_offset=1)
# segment-anything's vit_b builder (build_sam.py), in our loader's JSON config shape
SAM_VIT_B = dict(img_size=1024, patch_size=16, embed_dim=768, depth=12, num_heads=12, out_chans=256, window_size=14,
                 global_attn_indexes=[2, 5, 8, 11], prompt_dim=256, decoder_depth=2, decoder_mlp_dim=2048)

BACKGROUNDS = ("a realistic photo of a room", "a street at night", "a sunny beach", "a wooden table",
               "a green meadow", "a kitchen counter", "a snowy park", "a library")
CAPTIONS = ("a cat", "a dog", "a red apple", "a blue car", "a wooden chair", "a green bottle", "a yellow lamp",
            "a brown horse", "a white cup", "a small bird")
# four slots on the 512 canvas (x, y, w, h); each layout shifts them a little
SLOTS = ((24, 40, 210, 230), (270, 40, 210, 230), (24, 290, 210, 190), (270, 290, 210, 190))
JOB_SEED = 2026


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--model", choices=("tiny", "sd15-random"), default="tiny")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (tiny: 20; sd15-random: 50).")
    ap.add_argument("--size", type=int, default=None, help="Image side in px (tiny: 128; sd15-random: 512).")
    ap.add_argument("--guidance-steps", type=int, default=None, help="Guided steps (tiny: 12; sd15-random: 30).")
    ap.add_argument("--boxes", default="1,2,3,4", help="Box counts N, comma separated.")
    ap.add_argument("--layouts", type=int, default=4, help="K: layouts whose boxes form one box batch (batched).")
    ap.add_argument("--repeats", type=int, default=None, help="Timed repetitions (median shown); tiny: 3, sd15: 1.")
    ap.add_argument("--mask", choices=("sam", "attention", "box"), default="sam")
    ap.add_argument("--dtype", choices=("fp32", "fp16"), default=None, help="Default: fp16 on cuda, fp32 on cpu.")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, see the docstring).")
    ap.add_argument("--modes", default="unbatched,batched", help="Which of unbatched,batched to run.")
    ap.add_argument("--json", dest="json_out", default=None, help="Write the rows and settings as JSON here.")
    args = ap.parse_args(argv)
    big = args.model == "sd15-random"
    args.steps = args.steps or (50 if big else 20)
    args.size = args.size or (512 if big else 128)
    args.guidance_steps = args.guidance_steps if args.guidance_steps is not None else (30 if big else 12)
    args.repeats = args.repeats or (1 if big else 3)
    args.dtype = args.dtype or ("fp16" if args.device == "cuda" else "fp32")
    args.boxes = [int(x) for x in args.boxes.split(",") if x.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.boxes or min(args.boxes) < 1:
        ap.error("--boxes needs box counts >= 1")
    if max(args.boxes) > len(SLOTS) * 4:
        ap.error(f"--boxes up to {len(SLOTS) * 4}")
    if args.layouts < 1 or args.repeats < 1:
        ap.error("--layouts and --repeats must be >= 1")
    if set(args.modes) - {"unbatched", "batched"} or not args.modes:
        ap.error("--modes is a subset of unbatched,batched")
    return args


# ---------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------

def make_layouts(n: int, k: int):
    """K deterministic layouts of N boxes each: distinct captions per layout, boxes in four slots
    (more than four boxes: smaller boxes inside the slots), shifted a little per layout."""
    from lmd_batch.layout.lmd_text import Box, Layout

    out = []
    for j in range(k):
        boxes = []
        for i in range(n):
            x, y, w, h = SLOTS[i % len(SLOTS)]
            level = i // len(SLOTS)  # boxes 5..: nested, smaller
            w, h = w / (1 + level), h / (1 + level)
            dx, dy = (j * 7) % 20 + level * 12, (j * 11) % 24 + level * 12
            boxes.append(Box(CAPTIONS[(i + j) % len(CAPTIONS)], float(x + dx), float(y + dy), float(w), float(h)))
        out.append(Layout(boxes, BACKGROUNDS[j % len(BACKGROUNDS)], ""))
    return out


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------

def build_sd15_random(folder, device: str, dtype) -> dict:
    """Random-weight SD1.5-architecture SD and GLIGEN pipelines and a SAM ViT-B into `folder`;
    returns {"sd": path, "gligen": path, "sam": path}."""
    import torch
    from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionGLIGENPipeline, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from lmd_batch.models.clip_vocab import clip_tokenizer
    from lmd_batch.models.tiny import SAM_CONFIG_FILE, SAM_WEIGHTS_FILE, sam_from_config

    for name in ("diffusers", "transformers"):
        __import__(f"{name}.utils.logging", fromlist=["x"]).set_verbosity_error()
    os.makedirs(folder, exist_ok=True)
    tok = clip_tokenizer(__import__("pathlib").Path(folder) / "_clip-vocab")
    init = torch.device(device)  # random init on the GPU is much faster than on the CPU
    torch.manual_seed(0)

    def text_encoder():
        cfg = CLIPTextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, **SD15_TEXT)
        with init:
            return CLIPTextModel(cfg).to(dtype)

    def vae():
        with init:
            return AutoencoderKL(**SD15_VAE).to(dtype)

    paths = {}
    t = time.perf_counter()
    with init:
        unet = UNet2DConditionModel(**SD15_UNET).to(dtype)
    sd = StableDiffusionPipeline(vae=vae(), text_encoder=text_encoder(), tokenizer=tok, unet=unet,
                                 scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                 feature_extractor=None, requires_safety_checker=False)
    paths["sd"] = os.path.join(folder, "sd15-random")
    sd.save_pretrained(paths["sd"])
    del sd, unet
    log(f"built sd15-random SD pipeline in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    with init:
        gunet = UNet2DConditionModel(**SD15_UNET, attention_type="gated")
    with torch.no_grad():  # diffusers starts GLIGEN's gates at 0; open them as a trained model has them
        for name, p in gunet.named_parameters():
            if name.endswith("alpha_attn") or name.endswith("alpha_dense"):
                p.fill_(1.0)
    gl = StableDiffusionGLIGENPipeline(vae=vae(), text_encoder=text_encoder(), tokenizer=tok, unet=gunet.to(dtype),
                                       scheduler=DDIMScheduler(**SD15_SCHEDULER), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    paths["gligen"] = os.path.join(folder, "sd15-random-gligen")
    gl.save_pretrained(paths["gligen"])
    del gl, gunet
    log(f"built sd15-random GLIGEN pipeline in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    paths["sam"] = os.path.join(folder, "sam-vit-b-random")
    os.makedirs(paths["sam"], exist_ok=True)
    with init:
        sam = sam_from_config(SAM_VIT_B)
    torch.save({k: v.cpu() for k, v in sam.state_dict().items()}, os.path.join(paths["sam"], SAM_WEIGHTS_FILE))
    with open(os.path.join(paths["sam"], SAM_CONFIG_FILE), "w") as f:
        json.dump(dict(SAM_VIT_B, arch="lmd-batch-sam"), f)
    del sam
    if device == "cuda":
        torch.cuda.empty_cache()
    log(f"built random SAM ViT-B in {time.perf_counter() - t:.1f} s")
    return paths


# ---------------------------------------------------------------------------------------------
# one measurement
# ---------------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args, refs: dict):
        from lmd_batch.config import DiffusionConfig

        self.args, self.refs = args, refs
        self.cfg = DiffusionConfig(dtype="float16" if args.dtype == "fp16" else "float32",
                                   steps=args.steps, size=args.size, guidance_steps=args.guidance_steps,
                                   mask=args.mask, box_batch_size=1, model=refs["sd"], gligen_model=refs["gligen"],
                                   sam_model=refs["sam"])
        self.cpu = 0.0
        self.wall = 0.0

    def _sync(self):
        if self.args.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def _kw(self, cfg):
        return dict(model=self.refs["sd"], gligen_model=self.refs["gligen"], sam_model=self.refs["sam"], cfg=cfg,
                    job_seed=JOB_SEED, device=self.args.device)

    def _timed(self, fn):
        self._sync()
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        self._sync()
        w, c = time.perf_counter() - w0, time.process_time() - c0
        self.wall += w
        self.cpu += c
        return w, out

    def single(self, layout, method: str, pid: str) -> dict:
        """One layout through generate_layout (box_batch_size 1): seconds, passes, parts."""
        from lmd_batch.grounding.generate import generate_layout

        secs, res = self._timed(lambda: generate_layout(layout, method, prompt_id=pid, sample=0, **self._kw(self.cfg)))
        t = res.report["timings"]
        return dict(seconds=secs, passes=res.unet_passes, per_box_s=t.get("per_box_s", 0.0),
                    overall_s=t.get("overall_s", 0.0) + t.get("decode_s", 0.0), images=1)

    def batched(self, layouts, method: str, pid: str) -> dict:
        """The boxes of K layouts as one box batch, then overall generation per layout."""
        from lmd_batch.grounding.generate import cached_model, generate_layout
        from lmd_batch.grounding.per_box import generate_boxes
        from lmd_batch.grounding.spec import layout_to_spec

        n_runs = sum(len(lay.boxes) for lay in layouts)
        cfg = self.cfg.model_copy(update={"box_batch_size": max(1, n_runs)})
        dev = self.args.device
        kind = "gligen" if method == "lmd_plus" else "sd"
        parts = {}

        def run():
            t0 = time.perf_counter()
            pipe = cached_model(kind, self.refs[kind], dev, dtype=cfg.dtype)
            sam = cached_model("sam", self.refs["sam"], dev) if cfg.mask == "sam" else None
            specs = [(layout_to_spec(lay), f"{pid}-{j}", 0) for j, lay in enumerate(layouts)]
            stats: dict = {}
            boxes = generate_boxes(pipe, specs, cfg, JOB_SEED, method, sam, cfg.mask, cfg.box_batch_size, stats=stats)
            self._sync()
            parts["per_box_s"] = time.perf_counter() - t0
            passes = int(stats.get("unet_passes", 0))
            t1 = time.perf_counter()
            for j, lay in enumerate(layouts):
                res = generate_layout(lay, method, prompt_id=f"{pid}-{j}", sample=0, boxes=boxes[j], **self._kw(cfg))
                passes += res.unet_passes
            self._sync()
            parts["overall_s"] = time.perf_counter() - t1
            parts["chunks"] = int(stats.get("chunks", 0))
            return passes

        secs, passes = self._timed(run)
        k = len(layouts)
        return dict(seconds=secs / k, passes=passes / k, per_box_s=parts["per_box_s"] / k,
                    overall_s=parts["overall_s"] / k, images=k, chunks=parts["chunks"])


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------

def median_row(samples: list[dict]) -> dict:
    keys = ("seconds", "per_box_s", "overall_s", "passes")
    row = {k: statistics.median(s[k] for s in samples) for k in keys}
    row["seconds_min"] = min(s["seconds"] for s in samples)
    row["seconds_all"] = [round(s["seconds"], 4) for s in samples]
    return row


def goals(method: str, n: int) -> tuple[float, float]:
    """(issue goal, reference estimate) as multiples of plain SD's time."""
    return (n + 1.5, n + 3.0) if method == "lmd_plus" else (2.0 * (n + 1), 3.0 * (n + 1))


def render(rows: list[dict], sd: dict, args) -> str:
    head = (f"{'method':<9} {'mode':<10} {'N':>2} {'K':>2} {'s/img':>8} {'box s':>7} {'overall s':>9} "
            f"{'passes':>7} {'x SD s':>7} {'x SD passes':>11} {'goal':>5} {'ref':>5} {'meets goal':>10}")
    lines = [head, "-" * len(head)]
    lines.append(f"{'sd':<9} {'-':<10} {'-':>2} {1:>2} {sd['seconds']:>8.3f} {0.0:>7.3f} {sd['overall_s']:>9.3f} "
                 f"{sd['passes']:>7.1f} {1.0:>7.2f} {1.0:>11.2f} {'':>5} {'':>5} {'':>10}")
    for r in rows:
        lines.append(
            f"{r['method']:<9} {r['mode']:<10} {r['boxes']:>2} {r['layouts']:>2} {r['seconds']:>8.3f} "
            f"{r['per_box_s']:>7.3f} {r['overall_s']:>9.3f} {r['passes']:>7.1f} {r['x_sd_seconds']:>7.2f} "
            f"{r['x_sd_passes']:>11.2f} {r['goal_x']:>5.1f} {r['reference_x']:>5.1f} "
            f"{'yes' if r['meets_goal'] else 'no':>10}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    tmp = None
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        log("--device cuda: no CUDA device here")
        return 2
    torch.set_num_threads(max(1, args.threads))
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    for name in ("diffusers", "transformers"):
        __import__(f"{name}.utils.logging", fromlist=["x"]).set_verbosity_error()
        __import__(f"{name}.utils.logging", fromlist=["x"]).disable_progress_bar()
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*deprecated.*")

    try:
        t = time.perf_counter()
        if args.model == "tiny":
            refs = {"sd": "tiny-sd", "gligen": "tiny-gligen", "sam": "tiny-sam"}
        else:
            tmp = tempfile.mkdtemp(prefix="lmd-stage2-cost-")
            refs = build_sd15_random(tmp, args.device, dtype)
        from lmd_batch.grounding.generate import cached_model

        for kind in ("sd", "gligen") + (("sam",) if args.mask == "sam" else ()):
            cached_model(kind, refs[kind], args.device, dtype=None if kind == "sam" else
                         ("float16" if args.dtype == "fp16" else "float32"))
        setup_s = time.perf_counter() - t
        log(f"models ready in {setup_s:.1f} s ({args.model}, {args.dtype}, {args.device})")

        bench = Bench(args, refs)
        layouts = {n: make_layouts(n, args.layouts) for n in args.boxes}
        # warm-up: each method once (not timed), and one batch at the largest N when batching
        t = time.perf_counter()
        n0 = args.boxes[0]
        for m in ("sd", "lmd", "lmd_plus"):
            bench.single(layouts[n0][0], m, "warmup")
        if "batched" in args.modes and args.device == "cuda":
            for m in ("lmd", "lmd_plus"):
                bench.batched(layouts[max(args.boxes)], m, "warmup")
        warm_s = time.perf_counter() - t
        bench.cpu = bench.wall = 0.0
        log(f"warm-up {warm_s:.1f} s")

        samples: dict[tuple, list[dict]] = {}
        t_timed = time.perf_counter()
        for rep in range(args.repeats):
            for n in args.boxes:
                lays = layouts[n]
                samples.setdefault(("sd", "-", n), []).append(bench.single(lays[0], "sd", f"n{n}"))
                for m in ("lmd", "lmd_plus"):
                    if "unbatched" in args.modes:
                        samples.setdefault((m, "unbatched", n), []).append(bench.single(lays[0], m, f"n{n}"))
                    if "batched" in args.modes:
                        samples.setdefault((m, "batched", n), []).append(bench.batched(lays, m, f"n{n}"))
                log(f"repeat {rep + 1}/{args.repeats}, N={n}: {time.perf_counter() - t_timed:.0f} s so far")
        timed_s = time.perf_counter() - t_timed

        sd_all = [s for (m, _, _), v in samples.items() if m == "sd" for s in v]
        sd = median_row(sd_all)
        rows = []
        for mode in ("unbatched", "batched"):
            if mode not in args.modes:
                continue
            for m in ("lmd_plus", "lmd"):
                for n in args.boxes:
                    r = median_row(samples[(m, mode, n)])
                    goal, ref = goals(m, n)
                    x = r["seconds"] / sd["seconds"]
                    rows.append(dict(method=m, mode=mode, boxes=n, layouts=args.layouts if mode == "batched" else 1,
                                     **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()},
                                     x_sd_seconds=round(x, 3), x_sd_passes=round(r["passes"] / sd["passes"], 3),
                                     goal_x=goal, reference_x=ref, meets_goal=bool(x <= goal)))
        table = render(rows, sd, args)
        wall = time.perf_counter() - start
        device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else (platform.processor() or
                                                                                  platform.machine())
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        cpu_share = bench.cpu / bench.wall if bench.wall else 0.0
        print(f"stage 2 cost: model {args.model} ({args.dtype}, {args.device}: {device_name}), {args.size} px, "
              f"{args.steps} steps, {args.guidance_steps} guided steps, mask {args.mask}, "
              f"boxes {','.join(map(str, args.boxes))}, K={args.layouts} layouts per box batch, "
              f"median of {args.repeats} repeat(s)")
        print(table)
        print(f"plain SD: {sd['seconds']:.3f} s/img (median of {len(sd_all)}), {sd['passes']:.0f} passes/img. "
              f"'box s' = per-box generation (incl. its decodes and SAM), 'overall s' = composition + overall "
              f"generation + decode, both per image.")
        print(f"wall {wall:.0f} s (model setup {setup_s:.0f} s, warm-up {warm_s:.0f} s, timed {timed_s:.0f} s); "
              f"torch threads {torch.get_num_threads()}; this process got {cpu_share:.2f} CPU-s per wall-s while "
              f"timed" + (f"; load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} on {os.cpu_count()} cores"
                          if load else ""))
        if args.json_out:
            out = dict(settings={k: v for k, v in vars(args).items() if k != "json_out"}, device=device_name,
                       sd=sd, rows=rows, wall_s=round(wall, 2), setup_s=round(setup_s, 2), warmup_s=round(warm_s, 2),
                       timed_s=round(timed_s, 2), cpu_share=round(cpu_share, 3), load_average=load,
                       versions={"torch": torch.__version__, "python": platform.python_version(),
                                 "diffusers": __import__("diffusers").__version__})
            with open(args.json_out, "w") as f:
                json.dump(out, f, indent=1)
        return 0
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
