"""Does the training command reproduce the committed shapes-sd? (issue 7's reproducibility check)

    PYTHONPATH=. .venv/bin/python benchmarks/shapes_reproduce.py --out /tmp/shapes-repro [--trained DIR]

Trains `lmd-batch shapes train --seed 0` with the defaults (the command the committed weights
were made with, training.json says so) into --out, unless --trained names a folder that such a
run already wrote; then measures the committed `shapes-sd` and the new model the same way
(`lmd_batch.shapes.quality.model_quality`: same prompts, seeds and detector) in one process and
prints both side by side with the differences. The criterion: single-object accuracy within
3 points. Run it from a clean checkout on an idle machine: training takes ~63 min on 2 AVX-512
cores and ~3.5x longer on AVX2-only cores (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import time

TOLERANCE = 3.0  # points of single-object accuracy


def _rows(q: dict) -> dict[str, float]:
    s, p, v = q["single"], q["pairs"], q["vae"]
    return {"single-object accuracy (colour and shape)": s["accuracy"],
            "  'on' caption form": s["on"]["accuracy"], "  'with' caption form (LMD's)": s["with"]["accuracy"],
            "colour found ('on' form)": s["on"]["colour"], "two objects both found": p["both_found"],
            "VAE reconstruction: detector precision": v["precision"], "VAE reconstruction: detector recall": v["recall"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="Folder the new training run writes (or has written).")
    ap.add_argument("--trained", action="store_true", help="--out already holds a finished run: only measure.")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training and measuring.")
    ap.add_argument("--device", default="cpu", help="torch device for training and measuring (cpu, cuda); "
                    "random draws stay on CPU generators either way.")
    ap.add_argument("--workers", type=int, default=1, help="Processes rendering training scenes (same weights).")
    ap.add_argument("--json", default=None, help="Also write both measurements to this JSON file.")
    args = ap.parse_args()

    from lmd_batch.shapes.quality import model_quality
    from lmd_batch.shapes.train import TrainConfig, train

    if not args.trained:
        t0 = time.perf_counter()
        def tick(phase, done, total, **losses):
            if done % 500 == 0 or done == total:
                print(f"{phase} {done}/{total} {time.perf_counter() - t0:.0f} s", flush=True)

        train(TrainConfig(seed=0, threads=args.threads, device=args.device, workers=args.workers), args.out,
              progress=tick)
        print(f"trained in {time.perf_counter() - t0:.0f} s -> {args.out}", flush=True)
    new = model_quality(args.out, threads=args.threads, device=args.device)
    print(f"retrained: single-object accuracy {new['single']['accuracy']:.2f}% ({new['seconds']:.0f} s)", flush=True)
    committed = model_quality("shapes-sd", threads=args.threads, device=args.device)
    a, b = _rows(committed), _rows(new)
    print(f"{'measure (%)':<44}{'committed':>10}{'retrained':>10}{'diff':>8}")
    for k in a:
        print(f"{k:<44}{a[k]:>10.2f}{b[k]:>10.2f}{b[k] - a[k]:>+8.2f}")
    diff = abs(b["single-object accuracy (colour and shape)"] - a["single-object accuracy (colour and shape)"])
    print(f"single-object accuracy differs by {diff:.2f} points: "
          f"{'within' if diff <= TOLERANCE else 'NOT within'} {TOLERANCE:g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"committed": committed, "retrained": new, "difference": diff}, f, indent=1)


if __name__ == "__main__":
    main()
