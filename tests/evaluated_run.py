"""A finished run with every stage, shared by the evaluation, report and export tests.

Five prompts (one per LMD benchmark category, the GPT-3.5 layouts the LMD authors published for
them, and one ordinary prompt), two methods on the same layouts and seeds (lmd and sd), tiny
models, the in-process executor. Built once per test session; tests that damage a run copy it.
"""

from __future__ import annotations

import json
from pathlib import Path

REF_LAYOUTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "lmd-reference-layouts" / "gpt-3.5-turbo.json"
KEY = "sk-evaluated"
OTHER_PROMPT = "a red ball on the left of a blue cube"
OTHER_ANSWER = ("[('a red ball', [40, 200, 150, 150]), ('a blue cube', [300, 180, 160, 160])]\n"
                "Background prompt: a wooden table")


def bench_answers() -> dict[str, str]:
    """{prompt: completion}: the first prompt of each benchmark category with its published layout."""
    from lmd_batch.bench.lmd_prompts import get_lmd_prompts

    published = json.loads(REF_LAYOUTS.read_text(encoding="utf-8"))
    prompts = get_lmd_prompts()
    picks = [prompts[i] for i in (0, 150, 200, 300)]  # negation, numeracy, attribution, spatial
    return {p.prompt: published[p.prompt][0] for p in picks}


def build_evaluated_run(folder: Path) -> Path:
    """Run ingest -> layouts -> box_latents -> images -> evaluate into `folder/run`; return the run folder."""
    import os

    from conftest import make_job_file
    from llm_replay import ReplayLLM
    from lmd_batch.config import load_job
    from lmd_batch.pipeline.runner import run_job

    answers = dict(bench_answers(), **{OTHER_PROMPT: OTHER_ANSWER})
    (folder / "prompts.txt").parent.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.txt").write_text("".join(p + "\n" for p in answers), encoding="utf-8")
    server = ReplayLLM(answers, api_key=KEY)
    try:
        job_file = make_job_file(
            folder, input={"prompts": str(folder / "prompts.txt"), "shard_rows": 2},
            run={"url": str(folder / "run"), "cache_url": str(folder / "cache")}, stages=None,
            llm=dict(url=server.url, model="replay", api_key_env="EVALUATED_KEY", structured=False),
            diffusion=dict(methods=["lmd", "sd"], model="tiny-sd", sam_model="tiny-sam", mask="sam", steps=3,
                           size=128, guidance_steps=1))
        os.environ["EVALUATED_KEY"] = KEY
        job = load_job(job_file)
        run_job(job, log=lambda *a: None)
    finally:
        server.close()
    return Path(job.run.url)
