"""Multi-round layout editing: `lmd-batch edit --run RUN --instructions FILE`.

Each call is one edit round. An instruction row names a layout (`layout_id`, or `prompt_id` with
an optional `sample`) and says what to change ("move the dog to the left"). The LLM gets the
template, the conversation that produced the layout's current revision, and the instruction; the
revised layout is written as a row of the `layouts` schema linked to its parent
(`parent_layout_id`, `edit_round`), so the image stages can take it like any other layout.

Round n is stored as the `edits` pseudo-stage's shard n (`edits/data|rejects|done/shard-0000n`),
written with the same marker-last protocol as the pipeline. A round interrupted before its marker
is redone by the next call, and the request cache answers what it had already asked.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmd_batch.errors import UserError

EDIT_STAGE = "edits"


def read_instructions(path: str) -> list[dict]:
    """Rows {layout_id | prompt_id [+ sample], instruction} from JSONL, CSV or Parquet."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"instructions file not found: {path}")
    try:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(p).to_pylist()
        elif p.suffix == ".csv":
            import csv

            with p.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read instructions {path}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not str(r.get("instruction") or "").strip():
            raise UserError(f"{path} row {i}: needs a non-empty 'instruction'")
        if r.get("layout_id"):
            target = str(r["layout_id"])
        elif r.get("prompt_id"):
            target = f"{r['prompt_id']}#{int(r.get('sample') or 0)}"
        else:
            raise UserError(f"{path} row {i}: needs 'layout_id' or 'prompt_id'")
        out.append(dict(target=target, instruction=str(r["instruction"]).strip()))
    return out


def _root(layout_id: str) -> str:
    return layout_id.split("/e")[0]


def _layout(row: dict):
    from lmd_batch.layout.lmd_text import Box, Layout

    return Layout([Box(b["caption"], b["x"], b["y"], b["w"], b["h"]) for b in row["boxes"]], row["background"],
                  row["negative"])


def load_layout_rows(run) -> tuple[dict[str, dict], list[int]]:
    """Every current layout row by id (stage-1 layouts and done edit rounds), and the done rounds."""
    from lmd_batch.pipeline.status import valid_markers

    manifest_sha = run.manifest_sha256()
    rows: dict[str, dict] = {}
    for shard_id, marker in sorted(valid_markers(run, ["ingest", "layouts"], manifest_sha)["layouts"].items()):
        for r in run.read_data("layouts", shard_id, marker).to_pylist():
            rows[r["layout_id"]] = r
    rounds = sorted(run.markers(EDIT_STAGE))
    for n in rounds:
        for r in run.read_data(EDIT_STAGE, n).to_pylist():
            rows[r["layout_id"]] = r
    return rows, rounds


def _latest(rows: dict[str, dict], target: str) -> dict | None:
    """The newest revision of `target` (an original id, or an edit id meaning exactly that revision)."""
    if "/e" in target:
        return rows.get(target)
    revisions = [r for lid, r in rows.items() if _root(lid) == target]
    return max(revisions, key=lambda r: r["edit_round"]) if revisions else None


def _history(rows: dict[str, dict], row: dict, template) -> list[tuple[str, object]]:
    chain = [row]
    while chain[-1]["parent_layout_id"]:
        parent = rows.get(chain[-1]["parent_layout_id"])
        if parent is None:
            break
        chain.append(parent)
    chain.reverse()
    turns = []
    for r in chain:
        user = f"Caption: {r['prompt']}" if r["edit_round"] == 0 else template.edit_turn(r["instruction"])
        turns.append((user, _layout(r)))
    return turns


def run_edit(run_url: str, instructions_path: str, storage_options: dict | None = None, log=print) -> dict:
    """One edit round over a finished (or partly finished) run; returns counts."""
    import hashlib

    from lmd_batch.config import Job
    from lmd_batch.layout.requests import answer_all, edit_request, make_client, to_rows
    from lmd_batch.layout.template import get_template
    from lmd_batch.llm.cache import RequestCache
    from lmd_batch.llm.endpoints import LLMEndpoints, ServiceRef
    from lmd_batch.schemas import table_from_rows
    from lmd_batch.storage.run_folder import RunFolder

    run = RunFolder(run_url, storage_options or {})
    info = run.read_run_info()
    if info is None:
        raise UserError(f"{run_url} is not an lmd-batch run folder (no run.json)")
    job = Job.model_validate(dict(info["job"], run=dict(info["job"]["run"], url=run_url,
                                                        storage_options=storage_options or {})))
    instructions = read_instructions(instructions_path)
    rows, done_rounds = load_layout_rows(run)
    if not rows:
        raise UserError(f"{run_url} has no finished layouts to edit (run the layouts stage first)")
    edit_round = (done_rounds[-1] + 1) if done_rounds else 1
    template = get_template(job.llm.template)

    requests, rejects = [], []
    for ins in instructions:
        parent = _latest(rows, ins["target"])
        if parent is None:
            rejects.append(dict(layout_id=f"{_root(ins['target'])}/e{edit_round}", prompt_id=ins["target"].split("#")[0],
                                sample=0, parent_layout_id=ins["target"], edit_round=edit_round, prompt="",
                                reason="parent_missing", detail=f"no finished layout {ins['target']!r} in this run",
                                raw=None, cache_key=None))
            continue
        requests.append(edit_request(job, template, parent, _history(rows, parent, template), ins["instruction"],
                                     edit_round))
    log(f"edit round {edit_round}: {len(requests)} instructions for the LLM, {len(rejects)} without a layout")
    endpoints = LLMEndpoints(job.model_dump_json())
    try:
        stats = answer_all(requests, RequestCache(run.loc), lambda: make_client(job, ServiceRef(endpoints)))
    finally:
        endpoints.close()
    out = []
    for req in requests:
        row, bad = to_rows(req, job, template)
        (out.append(row) if row else rejects.append(bad))
    digest = hashlib.sha256(Path(instructions_path).read_bytes()).hexdigest()
    marker = run.write_shard(EDIT_STAGE, edit_round, table_from_rows(out, "layouts"),
                             table_from_rows(rejects, "layouts_rejects"), "layouts", "layouts_rejects",
                             {"instructions": digest}, stats)
    return dict(round=edit_round, rows=marker.rows, rejects=marker.rejects, **stats,
                data=run.loc.display(f"{EDIT_STAGE}/data/shard-{edit_round:05d}.parquet"))
