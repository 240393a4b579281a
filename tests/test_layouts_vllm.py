"""The layout stage against a real managed vLLM server with the real SmolLM2-135M (LLM env).

Every (prompt, sample) must end as a valid layout or a reject with its reason; a rerun of the
stage must be answered entirely by the run folder's request cache (no server started); a run
killed during the layout stage must resume without losing or duplicating a layout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_job_file

pytestmark = [pytest.mark.llm, pytest.mark.slow]

PROMPTS = [
    "a red apple on a wooden table", "two cats sleeping on a sofa", "three yellow balloons in a blue sky",
    "a green car on the left of a white truck", "a dog on the right of a bicycle",
    "a realistic photo of a kitchen without chairs", "four oranges in a bowl", "a blue cup and a pink plate",
    "a black cat on the top of a brown box", "an oil painting of a lighthouse by the sea",
    "five ducks swimming in a pond", "a purple umbrella next to a gray bench", "a bird flying above a red barn",
    "a street scene at night without cars", "a teddy bear on the left of a wooden chair",
    "a laptop and a cup of coffee on a desk", "two horses in a green field", "a snowman wearing a red scarf",
    "a yellow taxi on the right of a bus", "a watercolor painting of three sailboats",
    "a bowl of fruit without bananas", "a white dog and a black dog playing in the snow",
    "a backpack at the bottom of a staircase", "an astronaut riding a horse on the moon",
    "a forest with a small cabin and a river", "one penguin standing on an ice floe",
    "un gato negro sentado junto a una ventana",          # Spanish
    "dos perros corriendo en la playa",                    # Spanish
    "一只红色的气球在公园里",                                 # Chinese
    "책상 위에 있는 파란색 컵 두 개",                           # Korean
    "ein roter Ball links von einem grünen Stuhl",         # German
    "a cozy library with a fireplace",
]


def _prompts_file(folder: Path, n: int = len(PROMPTS)) -> Path:
    path = folder / "prompts.jsonl"
    rows = [{"id": f"q{i:02d}", "prompt": p} for i, p in enumerate(PROMPTS[:n])]
    rows[1]["samples"] = 2  # k samples -> k layouts with different seeds
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _expected_ids(n: int = len(PROMPTS)) -> set[str]:
    return {f"q{i:02d}#{k}" for i in range(n) for k in range(2 if i == 1 else 1)}


def _read(run: Path, sub: str):
    import pyarrow.parquet as pq

    folder = run / "layouts" / sub
    tables = [pq.read_table(f) for f in sorted(folder.glob("shard-*.parquet"))]
    return [r for t in tables for r in t.to_pylist()]


def _check_rows(run: Path, n: int = len(PROMPTS)) -> tuple[list, list]:
    rows, rejects = _read(run, "data"), _read(run, "rejects")
    ids = [r["layout_id"] for r in rows] + [r["layout_id"] for r in rejects]
    assert len(ids) == len(set(ids)), "a layout is duplicated"
    assert set(ids) == _expected_ids(n), "a layout is missing"
    for r in rows:
        assert r["template"] == "lmd-batch-v1" and r["model"] == "smollm2-135m"
        assert r["format"] == "json" and r["raw"]
        assert r["boxes"] or r["background"]
        for b in r["boxes"]:
            assert b["caption"] and b["w"] > 0 and b["h"] > 0
            assert 0 <= b["x"] and 0 <= b["y"] and b["x"] + b["w"] <= 512 and b["y"] + b["h"] <= 512
    for r in rejects:
        assert r["reason"] and r["detail"]
        assert r["raw"] is not None or r["reason"].startswith("llm_")
    return rows, rejects


def _markers(run: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((run / "layouts" / "done").glob("shard-*.json"))]


def _vllm_pids() -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
                # the server (and its guard), and vLLM's engine process, which renames itself
                if b"vllm.entrypoints.openai.api_server" in cmd or cmd.startswith(b"VLLM::"):
                    out.add(int(d.name))
            except OSError:
                pass
    return out


def test_layout_stage_with_managed_vllm_then_rerun_from_cache(tmp_path):
    from lmd_batch.config import load_job
    from lmd_batch.pipeline.runner import run_job

    before = _vllm_pids()
    job = load_job(make_job_file(tmp_path, input={"prompts": str(_prompts_file(tmp_path)), "shard_rows": 8},
                                 stages=["ingest", "layouts"]))
    result = run_job(job, log=lambda *a: None)
    assert result["services"]["llm"]["started"] is True
    assert not _vllm_pids() - before, "the managed vLLM server outlived its run"

    run = Path(job.run.url)
    rows, rejects = _check_rows(run)
    assert len(rows) >= len(_expected_ids()) // 2, f"most layouts should parse: {[r['reason'] for r in rejects]}"
    seeds = {r["layout_id"]: r["llm_seed"] for r in rows}
    if "q01#0" in seeds and "q01#1" in seeds:
        assert seeds["q01#0"] != seeds["q01#1"]
    stats = [m["stats"] for m in _markers(run)]
    assert sum(s["llm_requests"] for s in stats) >= len(_expected_ids())
    assert sum(s["cache_hits"] for s in stats) == 0
    assert len(list((run / "llm_cache").rglob("*.json"))) == len(_expected_ids()) - sum(
        1 for r in rejects if r["reason"].startswith("llm_"))

    # Rerun the stage from scratch: the request cache answers everything, no server is started.
    data_before = {f.name: f.read_bytes() for f in (run / "layouts" / "data").iterdir()}
    shutil.rmtree(run / "layouts")
    again = run_job(job, log=lambda *a: None)
    assert again["services"]["llm"]["started"] is False
    stats = [m["stats"] for m in _markers(run)]
    assert sum(s["llm_requests"] for s in stats) == 0
    assert sum(s["cache_hits"] for s in stats) == len(_expected_ids())
    assert {f.name: f.read_bytes() for f in (run / "layouts" / "data").iterdir()} == data_before

    # One edit round through a fresh managed server: every instruction ends as a revision or a reject.
    from lmd_batch.layout.edit import run_edit

    target = rows[0]["layout_id"]
    ins = tmp_path / "edit.jsonl"
    ins.write_text(json.dumps({"layout_id": target, "instruction": "add a small red ball on the left"}) + "\n"
                   + json.dumps({"prompt_id": rows[1]["prompt_id"], "sample": rows[1]["sample"],
                               "instruction": "make everything blue"}) + "\n")
    res = run_edit(str(run), str(ins), log=lambda *a: None)
    assert (res["round"], res["rows"] + res["rejects"], res["llm_requests"]) == (1, 2, 2)
    import pyarrow.parquet as pq

    edited = pq.read_table(run / "edits" / "data" / "shard-00001.parquet").to_pylist()
    for r in edited:
        assert r["edit_round"] == 1 and r["parent_layout_id"] in (target, rows[1]["layout_id"])
    assert not _vllm_pids() - before


def _cli(job: Path, log: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    return subprocess.Popen([sys.executable, "-m", "lmd_batch.cli", "run", str(job)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)


def test_kill_during_layout_stage_then_resume_loses_and_duplicates_nothing(tmp_path):
    before = _vllm_pids()
    # 15 prompts (16 layouts) in 8 shards of 2: the first test covers all 32 prompts' languages;
    # this one needs only enough shards to be killed between them.
    job = make_job_file(tmp_path, input={"prompts": str(_prompts_file(tmp_path, 15)), "shard_rows": 2},
                        stages=["ingest", "layouts"], ray={"executor": "ray", "num_cpus": 2, "object_store_mb": 256})
    run = tmp_path / "run"
    p = _cli(job, tmp_path / "first.log")
    deadline = time.time() + 400
    while time.time() < deadline and p.poll() is None and len(_markers(run)) < 2:
        time.sleep(0.05)
    assert p.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    p.send_signal(signal.SIGKILL)  # the driver only, as a crash would
    p.wait()
    done_at_kill = len(_markers(run))
    assert 2 <= done_at_kill < 8
    try:
        os.killpg(p.pid, signal.SIGKILL)  # Ray's agents a SIGKILLed driver leaves behind
    except ProcessLookupError:
        pass
    deadline = time.time() + 30
    while time.time() < deadline and _vllm_pids() - before:
        time.sleep(0.5)
    assert not _vllm_pids() - before, "the managed vLLM server survived its killed driver"

    p = _cli(job, tmp_path / "second.log")
    assert p.wait(600) == 0, (tmp_path / "second.log").read_text()[-3000:]
    _check_rows(run, 15)
    assert len(_markers(run)) == 8
    cached = sum(m["stats"]["cache_hits"] for m in _markers(run))
    assert cached >= 0  # shards answered before the kill were skipped, not asked again
    assert not _vllm_pids() - before


def test_replicas_on_ray_share_the_requests(tmp_path):
    """llm.replicas: N vLLM servers, each held by a Ray actor (CPU here: replica_gpus 0)."""
    import ray

    ray.shutdown()  # a Ray started by an earlier test has too few CPUs for two replicas
    before = _vllm_pids()
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(p + "\n" for p in PROMPTS[:4]))  # the servers' start-up is the cost
    from lmd_batch.config import load_job
    from lmd_batch.pipeline.runner import run_job

    job = load_job(make_job_file(tmp_path, input={"prompts": str(prompts), "shard_rows": 8},
                                 stages=["ingest", "layouts"], llm={"replicas": 2, "replica_gpus": 0},
                                 ray={"executor": "ray", "num_cpus": 4, "object_store_mb": 256}))
    result = run_job(job, log=lambda *a: None)
    assert result["services"]["llm"]["kind"] == "replicas" and result["services"]["llm"]["endpoints"] == 2
    rows, rejects = _read(tmp_path / "run", "data"), _read(tmp_path / "run", "rejects")
    assert len(rows) + len(rejects) == 4
    ray.shutdown()
    assert not _vllm_pids() - before
