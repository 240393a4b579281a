"""A sample grid of a run: per prompt, its layout and the image of every method, side by side.

    python benchmarks/shapes_grid.py RUN OUT.png [--per-category 2] [--scale 2] [--ids id,id,...]

Rows are prompts (the first --per-category of each benchmark category, or the given prompt ids),
columns are the layout (boxes drawn with their captions' colours) and one image per method in
the run; a green or red bar under an image says whether the evaluate stage passed it. Used for
the grids in README.md and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHOD_ORDER = ("sd", "gligen", "lmd", "lmd_plus")


def _rows(run, stage: str) -> list[dict]:
    from lmd_batch.pipeline.status import valid_markers

    valid = valid_markers(run, [stage], run.manifest_sha256())[stage]
    return [r for sid, m in sorted(valid.items()) for r in run.read_data(stage, sid, m).to_pylist()]


def main(argv=None) -> int:
    from PIL import Image, ImageDraw

    from lmd_batch.evaluate.summary import suite_prompt
    from lmd_batch.shapes.vocab import COLORS
    from lmd_batch.storage.run_folder import RunFolder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("out")
    ap.add_argument("--per-category", type=int, default=2)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--ids", default="", help="comma-separated prompt ids instead of the first per category")
    args = ap.parse_args(argv)

    run = RunFolder(args.run)
    layouts = {r["layout_id"]: r for r in _rows(run, "layouts")}
    images = _rows(run, "images")
    passed = {(r["layout_id"], r["method"]): r["passed"] for r in _rows(run, "evaluate")}
    methods = [m for m in METHOD_ORDER if any(i["method"] == m for i in images)]
    methods += sorted({i["method"] for i in images} - set(methods))
    if args.ids:
        wanted = [lid for lid, r in layouts.items() if r["prompt_id"] in args.ids.split(",")]
    else:
        wanted, seen = [], {}
        for lid, r in layouts.items():
            cat = (suite_prompt(r["prompt"]) or ("other",))[0]
            if seen.get(cat, 0) < args.per_category:
                seen[cat] = seen.get(cat, 0) + 1
                wanted.append(lid)
    by_key = {(i["layout_id"], i["method"]): i for i in images}
    size = 64 * args.scale
    pad, bar = 4, 4
    grid = Image.new("RGB", ((len(methods) + 1) * (size + pad) + pad, len(wanted) * (size + bar + pad) + pad), "white")
    for row, lid in enumerate(wanted):
        y = pad + row * (size + bar + pad)
        lay = Image.new("RGB", (size, size), (235, 235, 235))
        draw = ImageDraw.Draw(lay)
        for b in layouts[lid]["boxes"]:
            colour = next((COLORS[w] for w in b["caption"].split() if w in COLORS), (60, 60, 60))
            s = size / 512
            draw.rectangle((b["x"] * s, b["y"] * s, (b["x"] + b["w"]) * s - 1, (b["y"] + b["h"]) * s - 1),
                           outline=colour, width=2)
        grid.paste(lay, (pad, y))
        for col, m in enumerate(methods, 1):
            img = by_key.get((lid, m))
            if img is None:
                continue
            im = Image.open(io.BytesIO(run.loc.read_bytes(img["image_path"]))).convert("RGB")
            x = pad + col * (size + pad)
            grid.paste(im.resize((size, size), Image.NEAREST), (x, y))
            ok = passed.get((lid, m))
            if ok is not None:
                ImageDraw.Draw(grid).rectangle((x, y + size, x + size - 1, y + size + bar - 1),
                                                fill=(40, 170, 60) if ok else (210, 40, 40))
    grid.save(args.out, optimize=True)
    print(f"{args.out}: {len(wanted)} prompts x [layout, {', '.join(methods)}]")
    for lid in wanted:
        print(f"  {layouts[lid]['prompt_id']}: {layouts[lid]['prompt']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
