"""What the report shows, read from a run folder into plain dicts (no HTML, no images decoded).

Only shards with a valid marker count (`valid_markers`, as every reader of a run folder); a shard
whose files no longer match their marker is skipped and named in `problems` rather than stopping
the report. Image rows are joined with the evaluate stage's rows on (layout_id, method); an image
the evaluate stage rejected (missing or undecodable PNG) keeps the reject's reason.
"""

from __future__ import annotations

from collections import Counter

from lmd_batch.errors import UserError

OTHER = "other"  # grid of the prompts that are not LMD benchmark prompts
EVALUATE = "evaluate"


def collect(run) -> dict:
    """Everything the report needs: summary, accuracy, image items, rejects, problems."""
    from lmd_batch.pipeline.status import run_status, valid_markers

    if run.read_run_info() is None:
        raise UserError(f"{run.url} is not an lmd-batch run folder (no run.json)")
    status = run_status(run)
    stages = list(status["stages"])
    valid = valid_markers(run, stages, run.manifest_sha256())
    problems: list[str] = []
    images = _rows(run, "images", valid, problems, rejects=False)
    evaluated = EVALUATE in stages and status["stages"][EVALUATE]["done"] > 0
    evals = {(r["layout_id"], r["method"]): r for r in _rows(run, EVALUATE, valid, problems, rejects=False)}
    eval_rejects = {(r["layout_id"], r["method"]): r for r in _rows(run, EVALUATE, valid, problems, rejects=True)}
    rejects = {name: _rows(run, name, valid, problems, rejects=True) for name in stages}
    items = [_item(r, evals.get((r["layout_id"], r["method"])), eval_rejects.get((r["layout_id"], r["method"])))
             for r in images]
    return dict(status=status, evaluated=evaluated, accuracy=_accuracy(run) if evaluated else None,
                items=items, rejects=rejects, problems=problems, has_images="images" in stages)


def _rows(run, stage: str, valid: dict, problems: list[str], rejects: bool) -> list[dict]:
    """Rows of every validly marked shard of `stage` (data or rejects), each with its shard id."""
    out: list[dict] = []
    for shard_id, marker in sorted(valid.get(stage, {}).items()):
        try:
            table = (run.read_rejects if rejects else run.read_data)(stage, shard_id, marker)
        except UserError as exc:
            problems.append(str(exc))
            continue
        for r in table.to_pylist():
            r["shard"] = shard_id
            out.append(r)
    return out


def _item(image: dict, ev: dict | None, ev_reject: dict | None) -> dict:
    """One grid cell's data: the image row plus its evaluation (or why it has none). A benchmark
    image the evaluate stage rejected counts as failed, as it does in the accuracy table."""
    category = ev.get("category") if ev else bench_category(image["prompt"])
    passed = ev.get("passed") if ev else None
    if ev is None and ev_reject is not None and category is not None:
        passed = False
    return dict(image=image, evaluation=ev, category=category or OTHER, passed=passed,
                verify_score=ev.get("verify_score") if ev else None,
                eval_reject=f"{ev_reject['reason']}: {ev_reject['detail']}" if ev_reject else None)


def bench_category(prompt: str) -> str | None:
    """The benchmark category of a prompt: LMD's (exact text) or the shapes suite's (its grammar),
    as the evaluate stage matches them."""
    from lmd_batch.evaluate.summary import suite_prompt

    bp = suite_prompt(prompt)
    return bp[0] if bp is not None else None


def _accuracy(run) -> dict:
    """`summarize_run(run)`, or {"error": why} when the run folder cannot give it."""
    from lmd_batch.evaluate.summary import summarize_run

    try:
        return summarize_run(run)
    except UserError as exc:
        return {"error": str(exc)}


def sort_key(item: dict) -> tuple:
    """Failures first: failed, then unknown (not evaluated, other prompts by weakest detector
    confirmation), then passed; ties by layout id and method so the order is stable."""
    passed = item["passed"]
    rank = 0 if passed is False else (2 if passed is True else 1)
    score = item["verify_score"] if item["verify_score"] is not None else 2.0
    img = item["image"]
    return (rank, score if passed is None else 0.0, img["layout_id"], img["method"])


def reason_counts(rows: list[dict]) -> list[tuple[str, int]]:
    return Counter(r.get("reason", "?") for r in rows).most_common()
