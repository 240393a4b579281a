"""Reading a run's stage-1 layouts for the layout-level benchmark (`bench layouts --run`).

Layouts and layout rejects are grouped by prompt text and ordered by (prompt id, sample), so the
k-th occurrence of a benchmark prompt takes the k-th layout, as with a responses file. A reject
(no usable layout) counts as a failure, as an unparseable completion does in LMD's own scoring.
"""

from __future__ import annotations

from collections import defaultdict


def bench_prompt_rows() -> list[dict]:
    """The 400 benchmark prompts as input rows with stable ids (`lmd-000` ... `lmd-399`)."""
    from lmd_batch.bench.lmd_prompts import get_lmd_prompts

    return [dict(id=f"lmd-{i:03d}", prompt=p.prompt, category=p.category) for i, p in enumerate(get_lmd_prompts())]


def run_boxes_by_prompt(run_url: str, storage_options: dict | None = None) -> tuple[dict, dict]:
    """({prompt: [boxes or None, ...]}, counts) from the run's finished layouts shards."""
    from lmd_batch.errors import UserError
    from lmd_batch.layout.lmd_text import Box
    from lmd_batch.pipeline.status import valid_markers
    from lmd_batch.storage.run_folder import RunFolder

    run = RunFolder(run_url, storage_options or {})
    if run.read_run_info() is None:
        raise UserError(f"{run_url} is not an lmd-batch run folder (no run.json)")
    shards = run.read_manifest().num_rows
    markers = valid_markers(run, ["ingest", "layouts"], run.manifest_sha256())["layouts"]
    items = []
    for shard_id, marker in sorted(markers.items()):
        for r in run.read_data("layouts", shard_id, marker).to_pylist():
            boxes = [Box(b["caption"], b["x"], b["y"], b["w"], b["h"]) for b in r["boxes"]]
            items.append((r["prompt_id"], r["sample"], r["prompt"], boxes))
        for r in run.read_rejects("layouts", shard_id, marker).to_pylist():
            items.append((r["prompt_id"], r["sample"], r["prompt"], None))
    out: dict[str, list] = defaultdict(list)
    for _pid, _sample, prompt, boxes in sorted(items, key=lambda t: (t[0], t[1])):
        out[prompt].append(boxes)
    counts = dict(shards=shards, shards_done=len(markers), layouts=sum(1 for t in items if t[3] is not None),
                  rejects=sum(1 for t in items if t[3] is None))
    return dict(out), counts
