"""A run's image-level benchmark table: per method and category, plus the layout-level upper bound.

Only shards with a valid marker count, and the summary says which are missing, so a partly
finished or partly broken run is scored on what it has, never silently as a whole. Accuracy is
over the benchmark images actually evaluated (counts are reported beside it); an image the
evaluate stage rejected (it did not decode) counts as a failure, like an unparseable layout does
at layout level. The layout row scores the same run's layouts with the same predicates
(LMD-REFERENCE.md 3.2, `eval_stage_one`): what a perfect stage 2 would reach.
"""

from __future__ import annotations

from collections import defaultdict

from lmd_batch.bench.lmd_prompts import CATEGORIES


def _scores(results: list[tuple[str, bool]]) -> dict:
    out: dict = {}
    for cat in CATEGORIES:
        r = [ok for c, ok in results if c == cat]
        out[cat] = round(100.0 * sum(r) / len(r), 2) if r else None
    out["overall"] = round(100.0 * sum(ok for _, ok in results) / len(results), 2) if results else None
    out["images"] = len(results)
    return out


def suite_prompt(text: str):
    """(category, layout check) of a benchmark prompt, LMD's (exact text) or the shapes suite's
    (parsed from its grammar); None for any other prompt. The check takes layouts rows' boxes."""
    from lmd_batch.bench.predicates import check_prompt
    from lmd_batch.bench.shapes_suite import judge_layout, parse_prompt
    from lmd_batch.evaluate.protocol import bench_prompt
    from lmd_batch.layout.lmd_text import Box

    bp = bench_prompt(text)
    if bp is not None:
        return bp.category, lambda boxes: check_prompt(bp, [Box(b["caption"], b["x"], b["y"], b["w"], b["h"])
                                                            for b in boxes])
    sp = parse_prompt(text)
    if sp is not None:
        return sp.category, lambda boxes: judge_layout(sp, [(b["caption"], b["x"], b["y"], b["w"], b["h"])
                                                            for b in boxes])
    return None


def summarize_run(run) -> dict:
    """{'methods': {method: scores}, 'layouts': scores | None, 'shards': {...}, 'missing': [lines],
    'rejects': n, 'other_images': n}; scores = {category: % or None, 'overall': %, 'images': n}."""
    from lmd_batch.errors import RunFolderError
    from lmd_batch.pipeline.status import valid_markers

    if run.read_run_info() is None:
        raise RunFolderError(f"{run.url} is not an lmd-batch run folder (no run.json)")
    total = run.read_manifest().num_rows
    stages = ["ingest", "layouts", "box_latents", "images", "evaluate"]
    valid = valid_markers(run, stages, run.manifest_sha256())
    missing = []
    for name in ("images", "evaluate"):
        absent = sorted(set(range(total)) - set(valid[name]))
        if absent:
            shown = ", ".join(str(i) for i in absent[:10]) + (" ..." if len(absent) > 10 else "")
            missing.append(f"{name}: {len(absent)} of {total} shards not finished (shards {shown})")

    per_method: dict[str, list] = defaultdict(list)
    other = rejects = 0
    for shard_id, marker in sorted(valid["evaluate"].items()):
        for r in run.read_data("evaluate", shard_id, marker).to_pylist():
            if r["category"] is None:
                other += 1
            else:
                per_method[r["method"]].append((r["category"], bool(r["passed"])))
        shard_rejects = run.read_rejects("evaluate", shard_id, marker).to_pylist()
        if shard_rejects:
            # A benchmark image that could not be evaluated is a failure of its category.
            prompts = {(r["layout_id"], r["method"]): r["prompt"]
                       for r in run.read_data("images", shard_id, valid["images"][shard_id]).to_pylist()}
            for r in shard_rejects:
                rejects += 1
                bp = suite_prompt(prompts.get((r["layout_id"], r["method"]), ""))
                if bp is None:
                    other += 1
                else:
                    per_method[r["method"]].append((bp[0], False))

    layout_results = []
    for shard_id, marker in sorted(valid["layouts"].items()):
        if shard_id not in valid["evaluate"]:
            continue  # the bound covers the same prompts as the image rows
        for r in run.read_data("layouts", shard_id, marker).to_pylist():
            bp = suite_prompt(r["prompt"])
            if bp is not None:
                layout_results.append((bp[0], bp[1](r["boxes"])))
        for r in run.read_rejects("layouts", shard_id, marker).to_pylist():
            bp = suite_prompt(r["prompt"])
            if bp is not None:
                layout_results.append((bp[0], False))
    return dict(methods={m: _scores(v) for m, v in sorted(per_method.items())},
                layouts=_scores(layout_results) if layout_results else None,
                shards=dict(total=total, images=len(valid["images"]), evaluated=len(valid["evaluate"])),
                missing=missing, rejects=rejects, other_images=other)


def format_table(summary: dict) -> list[list[str]]:
    """Rows for printing: header, one row per method, the layout bound last."""
    def cell(v):
        return "-" if v is None else f"{v:.1f}"

    head = ["method", *CATEGORIES, "overall", "images"]
    rows = [head]
    for m, s in summary["methods"].items():
        rows.append([m, *(cell(s[c]) for c in CATEGORIES), cell(s["overall"]), str(s["images"])])
    if summary["layouts"] is not None:
        s = summary["layouts"]
        rows.append(["layouts (upper bound)", *(cell(s[c]) for c in CATEGORIES), cell(s["overall"]),
                     str(s["images"])])
    return rows
