"""Try stage-2 settings on a slice of the shapes benchmark, in one process, without a run folder.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shapes_settings.py --per-category 10 \
        --methods sd,lmd --set guidance_steps=0 --set overall_guidance_steps=4 [--json out.json] [--grid g.png]

Takes the first --per-category prompts of each category of the 400-prompt suite (the prompts
`bench images --suite shapes` draws, so a slice tuned here is part of the full benchmark) with
their oracle layouts, draws each with `generate_layout` (the reference path of the pipeline's
stages: same per-box runs, composition and overall pass, same seeds) under the diffusion section
of jobs/shapes-benchmark.yaml with the --set overrides, and judges every image with the shapes
detector and the suite's predicates. Prints accuracy per method and category and the seconds
taken; --json keeps every image's verdict and detections, --grid a picture (a row per prompt,
a column per method, 3x nearest upscaling). How the shapes jobs' settings were chosen:
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time

import yaml

from lmd_batch.models.registry import REPO_ROOT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-category", type=int, default=10, help="Prompts per category (the first ones).")
    ap.add_argument("--skip", type=int, default=0, help="Skip this many prompts of each category first.")
    ap.add_argument("--methods", default="sd,lmd", help="Comma-separated: sd, gligen, lmd, lmd_plus.")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="Override a diffusion setting (YAML value), e.g. frozen_step_ratio=0.6; repeatable.")
    ap.add_argument("--job", default=str(REPO_ROOT / "jobs" / "shapes-benchmark.yaml"))
    ap.add_argument("--json", default=None, help="Write every image's verdict and detections here.")
    ap.add_argument("--grid", default=None, help="Write a PNG grid of the images here.")
    args = ap.parse_args()

    import numpy as np
    import torch

    from lmd_batch.bench.shapes_suite import CATEGORIES, judge, layout_text, oracle_layout, shapes_prompts
    from lmd_batch.config import DiffusionConfig
    from lmd_batch.grounding.generate import generate_layout
    from lmd_batch.layout.lmd_text import parse_layout
    from lmd_batch.shapes.detect import detect_shapes

    torch.set_num_threads(1)
    with open(args.job) as f:
        job = yaml.safe_load(f)
    settings = dict(job["diffusion"])
    settings.pop("methods", None)
    for kv in args.set:
        key, _, value = kv.partition("=")
        settings[key] = yaml.safe_load(value)
    cfg = DiffusionConfig(**settings)
    methods = args.methods.split(",")
    prompts = shapes_prompts(100)  # the suite's prompts and oracle layouts use seed 0 (bench/shapes_run.py)
    chosen = [(i, p) for c in CATEGORIES
              for i, p in [(i, p) for i, p in enumerate(prompts) if p.category == c][args.skip:args.skip + args.per_category]]
    score = {m: {c: [0, 0] for c in CATEGORIES} for m in methods}
    verdicts, rows = [], []
    t0 = time.perf_counter()
    for i, p in chosen:
        layout = parse_layout(layout_text(oracle_layout(p)))
        row = []
        for m in methods:
            res = generate_layout(layout, m, model=cfg.model, gligen_model=cfg.gligen_model, sam_model=cfg.sam_model,
                                  cfg=cfg, job_seed=job.get("seed", 0), prompt_id=f"shapes-{i:03d}", sample=0,
                                  prompt=p.prompt)
            found = [(d.color, d.shape, d.box) for d in detect_shapes(res.image)]
            ok = judge(p, found)
            score[m][p.category][0] += ok
            score[m][p.category][1] += 1
            verdicts.append({"prompt_id": f"shapes-{i:03d}", "prompt": p.prompt, "category": p.category, "method": m,
                             "passed": bool(ok), "found": [[c, s, list(b)] for c, s, b in found]})
            row.append(res.image)
        rows.append(np.concatenate(row, 1))
    seconds = time.perf_counter() - t0
    print(f"{'method':<10}" + "".join(f"{c:>13}" for c in CATEGORIES) + f"{'overall':>10}")
    for m in methods:
        n_ok = sum(a for a, _ in score[m].values())
        n = sum(b for _, b in score[m].values())
        print(f"{m:<10}" + "".join(f"{100 * a / max(1, b):>13.1f}" for a, b in score[m].values())
              + f"{100 * n_ok / max(1, n):>10.1f}")
    print(f"{len(chosen)} prompts x {len(methods)} methods in {seconds:.0f} s; settings {args.set or 'as in the job'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": args.set, "seconds": round(seconds, 1), "images": verdicts}, f, indent=1)
    if args.grid and rows:
        from PIL import Image

        grid = np.concatenate(rows, 0)
        Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(args.grid)


if __name__ == "__main__":
    main()
