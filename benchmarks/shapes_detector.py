"""Precision and recall of the classical shapes detector on rendered scenes (issue 7, item 3).

    PYTHONPATH=. .venv/bin/python benchmarks/shapes_detector.py [--scenes 2000] [--first-seed 100000]

A detection is right when colour and shape match an unmatched ground-truth object and the boxes
overlap by IoU >= 0.5. Seeds start far from the ones the tests use.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=2000)
    ap.add_argument("--first-seed", type=int, default=100000)
    args = ap.parse_args()
    from lmd_batch.shapes.detect import detect_shapes, match
    from lmd_batch.shapes.scene import render, sample_scene

    for size in (64, 128):
        tp = fp = fn = 0
        confusions: dict = {}
        t0 = time.perf_counter()
        for seed in range(args.first_seed, args.first_seed + args.scenes):
            scene = sample_scene(seed, size=size)
            image, _masks, boxes = render(scene, size)
            truth = [(o.color, o.shape, b) for o, b in zip(scene.objects, boxes)]
            dets = detect_shapes(image)
            a, b, c = match(dets, truth)
            tp, fp, fn = tp + a, fp + b, fn + c
            if b or c:
                key = (tuple(sorted((o.color, o.shape) for o in scene.objects)),
                       tuple(sorted((d.color, d.shape) for d in dets)))
                confusions[key] = confusions.get(key, 0) + 1
        secs = time.perf_counter() - t0
        print(f"{size}px: {args.scenes} scenes, {tp + fn} objects: precision {100 * tp / max(1, tp + fp):.2f}%, "
              f"recall {100 * tp / max(1, tp + fn):.2f}% (tp {tp}, fp {fp}, fn {fn}); "
              f"{1000 * secs / args.scenes:.1f} ms per scene (render + detect)")
        for (truth, got), n in sorted(confusions.items(), key=lambda kv: -kv[1])[:5]:
            print(f"   {n}x truth {truth} detected {got}")


if __name__ == "__main__":
    main()
