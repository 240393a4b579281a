"""What the Ray pipeline costs on top of the algorithm, and what the box-latent cache saves.

In one process, on the same 64 prompts, tiny models, same settings:
1. plain loop: for each prompt, parse its layout and call `generate_layout` (per-box runs,
   composition, overall pass, PNG encode) -- the algorithm with no Ray, no storage, no stages;
2. pipeline: `run_job` with the Ray executor and all four stages into a fresh run folder and cache
   (layouts answered by a loopback replay endpoint, so no LLM time is in either number);
3. recompose: a new run with only composition settings changed (frozen_step_ratio), same cache.
Prints wall seconds, the pipeline/loop ratio (target <= 1.3x on 2 cores) and the recompose speed-up.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD .venv/bin/python benchmarks/pipeline_overhead.py [--prompts 64] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the loopback replay endpoint used by the tests

LAYOUTS = [
    "[('a red ball', [40, 200, 150, 150])]\nBackground prompt: a park",
    "[('a red ball', [40, 200, 150, 150]), ('a blue cube', [300, 180, 160, 160])]\nBackground prompt: a table",
    "[('a cat', [60, 220, 150, 140]), ('a cat', [280, 220, 150, 140]), ('a dog', [200, 40, 120, 120])]\n"
    "Background prompt: a sofa",
]
DIFFUSION = dict(method="lmd", model="tiny-sd", gligen_model="tiny-gligen", sam_model="tiny-sam", mask="sam",
                 steps=20, size=128, guidance_steps=12, box_batch_size=8)


def job_dict(prompts: Path, run: Path, cache: Path, url: str, **diffusion) -> dict:
    return dict(name="overhead", input=dict(prompts=[str(prompts)], shard_rows=8),
                run=dict(url=str(run), cache_url=str(cache)), ray=dict(executor="ray", num_cpus=2),
                llm=dict(url=url, model="replay", api_key_env=None, structured=False),
                diffusion=dict(DIFFUSION, **diffusion), seed=0)


def plain_loop(answers: dict[str, str], job) -> float:
    from lmd_batch.grounding.generate import generate_layout
    from lmd_batch.layout.repair import read_layout
    from lmd_batch.pipeline.stage2_common import png_bytes

    cfg = job.diffusion
    t0 = time.perf_counter()
    for i, (prompt, text) in enumerate(answers.items()):
        layout, _, _ = read_layout(text)
        res = generate_layout(layout, cfg.method, model=cfg.model, gligen_model=cfg.gligen_model,
                              sam_model=cfg.sam_model, cfg=cfg, job_seed=job.seed, prompt_id=f"p{i:09d}", sample=0,
                              prompt=prompt)
        png_bytes(res.image)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    import torch

    torch.set_num_threads(1)
    from llm_replay import ReplayLLM

    from lmd_batch.config import Job
    from lmd_batch.models.registry import prepare
    from lmd_batch.pipeline.runner import run_job

    for name in ("tiny-sd", "tiny-sam"):
        prepare(name)
    answers = {f"prompt number {i}": LAYOUTS[i % 3] for i in range(args.prompts)}
    server = ReplayLLM(answers)
    tmp = Path(tempfile.mkdtemp(prefix="lmd-overhead-"))
    prompts = tmp / "prompts.txt"
    prompts.write_text("".join(p + "\n" for p in answers))
    try:
        job = Job.model_validate(job_dict(prompts, tmp / "run1", tmp / "cache", server.url))
        # warm-up: load the models once in this process (the pipeline's actors load their own)
        from lmd_batch.grounding.generate import cached_model

        cached_model("sd", "tiny-sd"), cached_model("sam", "tiny-sam")
        loop_s = plain_loop(answers, job)
        print(f"plain loop: {loop_s:.1f} s for {args.prompts} images", flush=True)

        t0 = time.perf_counter()
        run_job(job, log=lambda *a: None)
        pipe_s = time.perf_counter() - t0
        print(f"pipeline:   {pipe_s:.1f} s (Ray start, 4 stages, run folder, cache writes)", flush=True)

        job2 = Job.model_validate(job_dict(prompts, tmp / "run2", tmp / "cache", server.url, frozen_step_ratio=0.3))
        t0 = time.perf_counter()
        run_job(job2, log=lambda *a: None)
        recompose_s = time.perf_counter() - t0
        from lmd_batch.pipeline.status import run_status
        from lmd_batch.storage.run_folder import RunFolder

        counters = run_status(RunFolder(str(tmp / "run2")))["stages"]["box_latents"]["counters"]
        print(f"recompose:  {recompose_s:.1f} s (box latents: {counters})", flush=True)
    finally:
        server.close()
    out = dict(prompts=args.prompts, loop_s=round(loop_s, 2), pipeline_s=round(pipe_s, 2),
               recompose_s=round(recompose_s, 2), pipeline_over_loop=round(pipe_s / loop_s, 3),
               recompose_speedup=round(pipe_s / recompose_s, 3), cores=os.cpu_count(), settings=DIFFUSION)
    print(json.dumps(out, indent=1))
    print(f"\npipeline / plain loop: {out['pipeline_over_loop']:.2f}x (target <= 1.3x); "
          f"recompose from cache: {out['recompose_speedup']:.2f}x faster than the first pipeline run")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
