"""`llm.given_layouts`: prompts with a given layout skip the LLM; the others still ask it.

The LLM is a loopback endpoint (tests/llm_replay.py) so the test can count what reached it.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_job_file, run_cli
from llm_replay import ReplayLLM

from lmd_batch.bench.shapes_run import suite_inputs
from lmd_batch.bench.shapes_suite import layout_text, oracle_layout, parse_prompt


def _rows(run: Path, sub: str) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in sorted((run / "layouts" / sub).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def _inputs(tmp_path: Path):
    prompts_jsonl, oracle_jsonl = suite_inputs(2)  # 8 prompts, shapes-000 .. shapes-007
    (tmp_path / "prompts.jsonl").write_bytes(prompts_jsonl)
    prompts = [json.loads(line) for line in prompts_jsonl.decode().splitlines()]
    given = [json.loads(line) for line in oracle_jsonl.decode().splitlines()]
    return prompts, given


def test_given_layouts_skip_the_llm_and_bad_ones_are_rejects(tmp_path):
    prompts, given = _inputs(tmp_path)
    kept = given[:5]
    kept.append(dict(prompt_id=given[5]["prompt_id"], layout="this is not a layout"))
    kept[1] = dict(kept[1], layout=json.loads(json.dumps({  # a JSON object form is accepted too
        "objects": [{"name": b["caption"], "box": [b["x"], b["y"], b["w"], b["h"]]}
                    for b in oracle_layout(parse_prompt(prompts[1]["prompt"]))["boxes"]],
        "background": "a sand background", "negative": ""})))
    (tmp_path / "given.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept) + "\n")
    asked = {p["prompt"]: layout_text(oracle_layout(parse_prompt(p["prompt"]))) for p in prompts[6:]}
    server = ReplayLLM(asked)
    try:
        job = make_job_file(tmp_path, input={"prompts": "prompts.jsonl", "shard_rows": 4},
                            stages=["ingest", "layouts"],
                            llm=dict(url=server.url, model="replay", structured=False, given_layouts="given.jsonl"))
        res = run_cli("run", job, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert server.count() == 2  # only the two prompts without a given layout reached the LLM
    finally:
        server.close()
    run = tmp_path / "run"
    rows = {r["prompt_id"]: r for r in _rows(run, "data")}
    rejects = {r["prompt_id"]: r for r in _rows(run, "rejects")}
    assert set(rows) | set(rejects) == {p["id"] for p in prompts}
    assert set(rejects) == {given[5]["prompt_id"]}
    assert {rows[p["id"]]["model"] for p in prompts[:5]} == {"given"}
    assert {rows[p["id"]]["model"] for p in prompts[6:]} == {"replay"}
    for p in prompts[:5] + prompts[6:]:
        want = oracle_layout(parse_prompt(p["prompt"]))["boxes"]
        assert [dict(b) for b in rows[p["id"]]["boxes"]] == want, p
    assert rows[prompts[0]["id"]]["background"] == parse_prompt(prompts[0]["prompt"]).background
    assert rows[prompts[1]["id"]]["format"] == "json"


def test_a_broken_given_layouts_file_is_one_clear_error(tmp_path):
    _inputs(tmp_path)
    (tmp_path / "given.jsonl").write_text('{"prompt_id": "shapes-000", "layout": "x"}\n{not json\n')
    job = make_job_file(tmp_path, input={"prompts": "prompts.jsonl"}, stages=["ingest", "layouts"],
                        llm=dict(url="http://127.0.0.1:9/v1", model="x", given_layouts="given.jsonl"))
    res = run_cli("run", job, timeout=300)
    assert res.returncode != 0
    assert "given.jsonl line 2: not JSON" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "given.jsonl").write_text('{"prompt_id": "shapes-000"}\n')
    res = run_cli("run", job, timeout=300)
    assert res.returncode != 0 and "line 1: expected an object with prompt_id and layout" in res.stderr
