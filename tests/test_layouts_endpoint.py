"""The layout stage against a given endpoint (`llm.url` + `api_key_env`), without vLLM.

The endpoint is a loopback OpenAI-compatible server answering with the published GPT-3.5 layouts
of the LMD benchmark (tests/llm_replay.py), so the numbers are known: the run's layout-level
accuracy must equal what scoring the same completions directly gives. Faults (503 once, 500
forever, timeouts, non-JSON bodies, a wrong key) must become retries or reject rows, never a
failed run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import make_job_file, run_cli
from llm_replay import ReplayLLM

REF = Path(__file__).resolve().parents[2] / "shared" / "data" / "lmd-reference-layouts" / "gpt-3.5-turbo.json"
KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def reference():
    if not REF.exists():
        pytest.skip(f"reference data not found: {REF}")
    return json.loads(REF.read_text())


def _job(tmp_path, prompts: Path, url: str, **llm):
    return make_job_file(tmp_path, input={"prompts": str(prompts), "shard_rows": 50},
                         stages=["ingest", "layouts"],
                         llm=dict(dict(url=url, model="replay", api_key_env="REPLAY_KEY", structured=False,
                                       concurrency=16, retries=2, timeout_s=20), **llm))


def _rows(run: Path, sub: str) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in sorted((run / "layouts" / sub).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def test_benchmark_layouts_through_an_endpoint_score_like_the_responses(tmp_path, reference, monkeypatch):
    from lmd_batch.bench.predicates import evaluate_responses

    monkeypatch.setenv("REPLAY_KEY", KEY)
    server = ReplayLLM({p: c[0] for p, c in reference.items()}, api_key=KEY)
    try:
        prompts = tmp_path / "bench.jsonl"
        res = run_cli("bench", "prompts", "--out", prompts)
        assert res.returncode == 0, res.stderr
        job = _job(tmp_path, prompts, server.url)
        res = run_cli("run", job, env={"REPLAY_KEY": KEY}, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        run = tmp_path / "run"
        # 400 prompts but 250 distinct texts: identical (prompt, sample) requests share one cache entry,
        # and every request carried the key.
        assert server.count() == len(reference) == 250
        assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)
        for f in run.rglob("*"):
            if f.is_file():
                assert KEY.encode() not in f.read_bytes(), f"the API key leaked into {f}"
        assert KEY not in res.stdout + res.stderr

        rows, rejects = _rows(run, "data"), _rows(run, "rejects")
        assert len(rows) + len(rejects) == 400 and not rejects
        assert all(r["format"] == "text" for r in rows)

        res = run_cli("bench", "layouts", "--run", run, "--json")
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)
        want = evaluate_responses({p: [c[0]] * len(c) for p, c in reference.items()})
        assert got == want
        assert got["overall"] >= 95

        # The request cache answers a rerun of the stage: no request reaches the endpoint.
        shutil.rmtree(run / "layouts")
        res = run_cli("run", job, env={"REPLAY_KEY": KEY}, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert server.count() == 250
        assert json.loads(run_cli("bench", "layouts", "--run", run, "--json").stdout) == got
    finally:
        server.close()


def test_endpoint_faults_become_retries_or_reject_rows(tmp_path, monkeypatch):
    from lmd_batch.config import load_job
    from lmd_batch.pipeline.runner import run_job

    good = "[('a red ball', [100, 100, 120, 120])]\nBackground prompt: a park\nNegative prompt: "
    answers = {f"prompt {i}": good for i in range(8)}
    answers["prompt 5"] = "Sure! Here is a nice picture of a ball."  # prose: unparseable
    answers["prompt 6"] = "[('a ball', [10, 10, 0, 50])]\nBackground prompt: "  # no usable box, no background
    faults = {"prompt 1": "503-once", "prompt 2": "500", "prompt 3": "slow", "prompt 4": "garbage"}
    server = ReplayLLM(answers, faults, api_key=KEY)
    monkeypatch.setenv("REPLAY_KEY", KEY)
    try:
        prompts = tmp_path / "p.txt"
        prompts.write_text("".join(f"prompt {i}\n" for i in range(8)))
        job = load_job(_job(tmp_path, prompts, server.url, timeout_s=1, retries=1))
        run_job(job, log=lambda *a: None)
        run = Path(job.run.url)
        rows = {r["prompt"]: r for r in _rows(run, "data")}
        rejects = {r["prompt"]: r for r in _rows(run, "rejects")}
        assert set(rows) == {"prompt 0", "prompt 1", "prompt 7"}
        assert server.count("prompt 1") == 2  # 503, then retried
        assert rejects["prompt 2"]["reason"] == "llm_http_error" and "HTTP 500" in rejects["prompt 2"]["detail"]
        assert server.count("prompt 2") == 2  # retries: 1
        assert rejects["prompt 3"]["reason"] == "llm_transport_error"
        assert rejects["prompt 4"]["reason"] == "llm_bad_response"
        assert rejects["prompt 5"]["reason"] == "unparseable" and rejects["prompt 5"]["raw"] == answers["prompt 5"]
        assert rejects["prompt 6"]["reason"] == "no_valid_boxes"
        assert rows["prompt 0"]["boxes"] == [dict(caption="a red ball", x=100, y=100, w=120, h=120)]

        # Failed requests are not cached: a rerun of the stage asks them again, the rest come from the cache.
        before = server.count()
        shutil.rmtree(run / "layouts")
        run_job(job, log=lambda *a: None)
        asked = [r["prompt"] for r in server.requests[before:]]
        assert sorted(set(asked)) == ["prompt 2", "prompt 3", "prompt 4"]
    finally:
        server.close()


def test_wrong_or_missing_api_key(tmp_path, monkeypatch):
    from lmd_batch.config import load_job
    from lmd_batch.errors import UserError
    from lmd_batch.pipeline.runner import run_job

    server = ReplayLLM({"a cat": "[]\nBackground prompt: a cat"}, api_key=KEY)
    try:
        prompts = tmp_path / "p.txt"
        prompts.write_text("a cat\n")
        job = load_job(_job(tmp_path, prompts, server.url))
        monkeypatch.delenv("REPLAY_KEY", raising=False)
        with pytest.raises(UserError, match="llm.api_key_env names REPLAY_KEY, which is not set"):
            run_job(job, log=lambda *a: None)
        monkeypatch.setenv("REPLAY_KEY", "wrong")
        run_job(job, log=lambda *a: None)
        (reject,) = _rows(Path(job.run.url), "rejects")
        assert reject["reason"] == "llm_http_error" and "HTTP 401" in reject["detail"]
        assert server.count() == 1  # 401 is not retried
    finally:
        server.close()


def test_multi_round_edit_links_revisions_and_replays_the_conversation(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from lmd_batch.layout.template import get_template

    tpl = get_template("lmd-batch-v1")
    first = "[('a gray cat', [300, 200, 150, 150])]\nBackground prompt: a living room\nNegative prompt: "
    moved = "[('a gray cat', [40, 200, 150, 150])]\nBackground prompt: a living room\nNegative prompt: "
    ball = ("[('a gray cat', [40, 200, 150, 150]), ('a red ball', [300, 300, 80, 80])]\n"
            "Background prompt: a living room\nNegative prompt: ")
    answers = {"a gray cat in a living room": first, "a dog": "[]\nBackground prompt: a dog park",
               tpl.edit_turn("move the cat to the left"): moved, tpl.edit_turn("add a red ball"): ball}
    server = ReplayLLM(answers, api_key=KEY)
    monkeypatch.setenv("REPLAY_KEY", KEY)
    try:
        prompts = tmp_path / "p.jsonl"
        prompts.write_text('{"id": "cat", "prompt": "a gray cat in a living room"}\n{"id": "dog", "prompt": "a dog"}\n')
        job = _job(tmp_path, prompts, server.url)
        assert run_cli("run", job, env={"REPLAY_KEY": KEY}).returncode == 0
        run = tmp_path / "run"

        ins = tmp_path / "round1.jsonl"
        ins.write_text('{"prompt_id": "cat", "instruction": "move the cat to the left"}\n'
                       '{"layout_id": "nobody#0", "instruction": "add a hat"}\n')
        res = run_cli("edit", "--run", run, "--instructions", ins, env={"REPLAY_KEY": KEY})
        assert res.returncode == 0, res.stderr
        assert "edit round 1: 1 revised layouts, 1 rejects" in res.stdout
        (row,) = pq.read_table(run / "edits" / "data" / "shard-00001.parquet").to_pylist()
        assert (row["layout_id"], row["parent_layout_id"], row["edit_round"]) == ("cat#0/e1", "cat#0", 1)
        assert row["boxes"][0]["x"] == 40 and row["instruction"] == "move the cat to the left"
        (bad,) = pq.read_table(run / "edits" / "rejects" / "shard-00001.parquet").to_pylist()
        assert bad["reason"] == "parent_missing"

        ins2 = tmp_path / "round2.csv"
        ins2.write_text("layout_id,instruction\ncat#0,add a red ball\n")
        res = run_cli("edit", "--run", run, "--instructions", ins2, env={"REPLAY_KEY": KEY})
        assert res.returncode == 0, res.stderr
        (row2,) = pq.read_table(run / "edits" / "data" / "shard-00002.parquet").to_pylist()
        assert (row2["layout_id"], row2["parent_layout_id"], row2["edit_round"]) == ("cat#0/e2", "cat#0/e1", 2)
        assert [b["caption"] for b in row2["boxes"]] == ["a gray cat", "a red ball"]
        # The second round saw the whole conversation: caption, first layout, first instruction, its result.
        messages = server.requests[-1]["body"]["messages"]
        turns = [m["content"] for m in messages[-5:]]
        assert turns[0] == "Caption: a gray cat in a living room" and "300" in turns[1]
        assert turns[2] == tpl.edit_turn("move the cat to the left") and "40" in turns[3]
        assert turns[4] == tpl.edit_turn("add a red ball")

        res = run_cli("edit", "--run", run, "--instructions", tmp_path / "missing.jsonl")
        assert res.returncode == 1 and res.stderr.strip().startswith("error: instructions file not found")
    finally:
        server.close()


def test_unreachable_endpoint_fails_the_run_without_marking_shards(tmp_path, monkeypatch):
    """A down endpoint is not the prompts' fault: no reject rows, no markers; a rerun finishes."""
    from conftest import free_port

    monkeypatch.setenv("REPLAY_KEY", KEY)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    job = _job(tmp_path, prompts, f"http://127.0.0.1:{free_port()}/v1", retries=1)
    res = run_cli("run", job, env={"REPLAY_KEY": KEY})
    assert res.returncode == 1
    assert "error: the LLM endpoint is unreachable: 2 of 2 requests could not connect" in res.stderr
    assert not (tmp_path / "run" / "layouts" / "done").exists() or not list((tmp_path / "run" / "layouts" / "done").iterdir())

    server = ReplayLLM({"a cat": "[]\nBackground prompt: a cat", "a dog": "[]\nBackground prompt: a dog"}, api_key=KEY)
    try:
        job = _job(tmp_path, prompts, server.url, retries=1)  # llm.url is not fingerprinted: same run
        res = run_cli("run", job, env={"REPLAY_KEY": KEY})
        assert res.returncode == 0, res.stderr
        assert len(_rows(tmp_path / "run", "data")) == 2
    finally:
        server.close()


def test_completion_mode_text_format_stops_on_a_blank_line(tmp_path, monkeypatch):
    text = "[('a red ball', [100, 100, 120, 120]), ('a blue cube', [300, 100, 100, 100])]\nBackground prompt: a park"
    server = ReplayLLM({"a red ball and a blue cube": text}, api_key=KEY)
    monkeypatch.setenv("REPLAY_KEY", KEY)
    try:
        prompts = tmp_path / "p.jsonl"
        prompts.write_text('{"prompt": "a red ball and a blue cube", "samples": 3}\n')
        job = _job(tmp_path, prompts, server.url, mode="completion")
        res = run_cli("run", job, env={"REPLAY_KEY": KEY})
        assert res.returncode == 0, res.stderr
        reqs = server.requests
        assert len(reqs) == 3 and all(r["path"] == "/v1/completions" for r in reqs)
        body = reqs[0]["body"]
        assert body["stop"] == ["\n\n"] and body["temperature"] == 0.25 and body["prompt"].endswith("Layout:")
        assert len({r["body"]["seed"] for r in reqs}) == 3  # one seed per sample
        rows = _rows(tmp_path / "run", "data")
        assert sorted(r["layout_id"] for r in rows) == ["p000000000#0", "p000000000#1", "p000000000#2"]
        assert [b["caption"] for b in rows[0]["boxes"]] == ["a red ball", "a blue cube"]
    finally:
        server.close()
