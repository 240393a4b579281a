"""`lmd-batch bench images --suite shapes`: plan, run (or resume) and score the shapes benchmark.

The suite's prompts (and, for `--layouts oracle`, its ground-truth layouts) are written beside
the run folder (`<run>.suite/`), because a run folder holds only what lmd-batch wrote into it;
the job comes from jobs/shapes-benchmark.yaml (or --job) with those inputs filled in, so the
benchmark is an ordinary resumable run: interrupt it and the same command goes on. A run that
already exists is resumed with its own job (run.json), whatever flags are given now.
"""

from __future__ import annotations

import json

from lmd_batch.models.registry import REPO_ROOT

DEFAULT_JOB = REPO_ROOT / "jobs" / "shapes-benchmark.yaml"
LAYOUT_SOURCES = ("oracle", "llm")


def suite_inputs(per_category: int, seed: int = 0) -> tuple[bytes, bytes]:
    """(prompts JSONL, oracle layouts JSONL) of the suite: ids shapes-000 ..., same bytes every time."""
    from lmd_batch.bench.shapes_suite import layout_text, oracle_layout, shapes_prompts

    prompts = shapes_prompts(per_category, seed)
    width = max(3, len(str(len(prompts) - 1)))
    rows, layouts = [], []
    for i, p in enumerate(prompts):
        pid = f"shapes-{i:0{width}d}"
        rows.append(json.dumps(dict(id=pid, prompt=p.prompt, category=p.category)) + "\n")
        layouts.append(json.dumps(dict(prompt_id=pid, layout=layout_text(oracle_layout(p, seed)))) + "\n")
    return "".join(rows).encode(), "".join(layouts).encode()


def plan_job(run_url: str, layouts: str, per_category: int, job_path=None):
    """The job of a new shapes benchmark run at `run_url` (inputs written beside it)."""
    from lmd_batch.config import load_job
    from lmd_batch.errors import UserError
    from lmd_batch.storage.location import Location

    if layouts not in LAYOUT_SOURCES:
        raise UserError(f"--layouts must be one of {', '.join(LAYOUT_SOURCES)}, not {layouts!r}")
    job = load_job(job_path or DEFAULT_JOB, run_url=run_url)
    inputs = job.run.url.rstrip("/") + ".suite"
    loc = Location(inputs, job.run.storage_options)
    prompts, oracle = suite_inputs(per_category)
    loc.write_bytes("prompts.jsonl", prompts)
    loc.write_bytes("oracle-layouts.jsonl", oracle)
    job.input.prompts = [f"{inputs}/prompts.jsonl"]
    job.llm.given_layouts = f"{inputs}/oracle-layouts.jsonl" if layouts == "oracle" else None
    job.evaluation.detector = "shapes"
    return job


def resume_job(info: dict, url: str, stages: list[str] | None = None):
    """The job of an existing run, from its run.json: every stage, or `stages`. run.json holds
    storage options redacted, so credentials come from the environment here."""
    from lmd_batch.config import Job

    return Job.model_validate(dict(info["job"], run=dict(info["job"]["run"], url=url, storage_options={}),
                                   stages=stages))
