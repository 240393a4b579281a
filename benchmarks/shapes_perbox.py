"""How well LMD's per-box runs draw their object, under given settings (shapes world).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shapes_perbox.py [--set guidance_steps=8 ...]

The boxes of 24 benchmark prompts (6 per category, oracle layouts; 58 boxes) go through
`per_box.generate_boxes` (method lmd, attention masks) under the diffusion section of
jobs/shapes-benchmark.yaml with the --set overrides. Each decoded per-box image is read by the
shapes detector: the share with exactly one object, with an object of the caption's colour and
shape, the IoU of the largest object with the run's (centred) box and its size relative to it.
Why: per-box guidance should put one right object into the run box; this says whether it does.
"""

from __future__ import annotations

import argparse
import time

import yaml

from lmd_batch.models.registry import REPO_ROOT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--model", default=None, help="Another SD-format shapes model (default: the job's).")
    args = ap.parse_args()

    import numpy as np
    import torch

    from lmd_batch.bench.shapes_suite import caption_kind, layout_text, oracle_layout, shapes_prompts
    from lmd_batch.config import DiffusionConfig
    from lmd_batch.grounding.generate import cached_model
    from lmd_batch.grounding.per_box import generate_boxes
    from lmd_batch.grounding.spec import layout_to_spec
    from lmd_batch.layout.lmd_text import parse_layout
    from lmd_batch.shapes.detect import box_iou, detect_shapes

    torch.set_num_threads(1)
    settings = dict(yaml.safe_load((REPO_ROOT / "jobs" / "shapes-benchmark.yaml").read_text())["diffusion"])
    settings.pop("methods", None)
    for kv in args.set:
        key, _, value = kv.partition("=")
        settings[key] = yaml.safe_load(value)
    cfg = DiffusionConfig(**settings)
    pipe = cached_model("sd", args.model or cfg.model, "cpu")
    prompts = shapes_prompts(100)
    chosen = [i for c in range(4) for i in range(c * 100 + 50, c * 100 + 56)]
    specs = [(layout_to_spec(parse_layout(layout_text(oracle_layout(prompts[i]))), 16, 512), f"shapes-{i:03d}", 0)
             for i in chosen]
    t0 = time.perf_counter()
    out = generate_boxes(pipe, specs, cfg, 0, "lmd", None, "attention", 8)
    n = one = right = 0
    ious, sizes = [], []
    scale = cfg.size / 512
    for boxes in out:
        for b in boxes:
            n += 1
            found = detect_shapes(b.image)
            one += len(found) == 1
            right += any((d.color, d.shape) == caption_kind(b.caption) for d in found)
            if found:
                run_box = [v * scale for v in b.info["run_box"]]
                d = max(found, key=lambda d: d.area)
                ious.append(box_iou(d.box, run_box))
                sizes.append((d.box[2] * d.box[3]) ** 0.5 / run_box[2])
    print(f"{n} per-box runs ({args.set or 'job settings'}): exactly one object {100 * one / n:.0f}%, the caption's "
          f"colour and shape {100 * right / n:.0f}%, IoU with the run box {np.mean(ious):.2f} (> 0.5: "
          f"{100 * np.mean(np.array(ious) > 0.5):.0f}%), size / box median {np.median(sizes):.2f}; "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
