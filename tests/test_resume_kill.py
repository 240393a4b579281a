"""Resume after SIGKILL: a 20,000-prompt ingest killed at several moments ends byte-identical to an
uninterrupted run, with every prompt id exactly once (accepted or rejected)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

N_PROMPTS = 20_000
SHARD_ROWS = 25
KILL_STEP = 100  # finished shards between two kills: independent of how fast the machine is


def _write_inputs(folder: Path) -> Path:
    lines = []
    for i in range(N_PROMPTS):
        if i % 997 == 0:
            lines.append(json.dumps({"id": f"x{i}", "prompt": "   "}))  # empty -> reject
        elif i % 1499 == 0:
            lines.append(json.dumps({"id": "x3", "prompt": "a duplicate id"}))  # duplicate -> reject
        else:
            lines.append(json.dumps({"id": f"x{i}", "prompt": f"a photo of {i % 7 + 1} red cubes, number {i}"}))
    f = folder / "prompts.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


def _job(folder: Path, prompts: Path, run: Path) -> Path:
    job = folder / f"job-{run.name}.yaml"
    job.write_text(
        f"name: kill-test\ninput:\n  prompts: {prompts}\n  shard_rows: {SHARD_ROWS}\n"
        f"run:\n  url: {run}\nray:\n  num_cpus: 2\n  object_store_mb: 256\nstages: [ingest]\n"
    )
    return job


def _cli(job: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0")
    # stderr to a file, not a pipe nobody reads while polling (a full pipe would stall the driver).
    log = open(job.with_suffix(".log"), "w+b")
    # Own session, so that the Ray agents a SIGKILLed driver leaves behind can be reaped (killpg).
    p = subprocess.Popen([sys.executable, "-m", "lmd_batch.cli", "run", str(job)], env=env,
                         stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    p.log = log
    return p


def _stderr(p) -> str:
    p.wait()
    p.log.seek(0)
    text = p.log.read().decode(errors="replace")
    p.log.close()
    return text[-3000:]


def _reap(p) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _done(run: Path) -> int:
    d = run / "ingest" / "done"
    return len([n for n in os.listdir(d) if n.endswith(".json")]) if d.is_dir() else 0


def _files(run: Path) -> dict[str, bytes]:
    out = {}
    for sub in ("manifest", "ingest/data", "ingest/rejects"):
        for f in sorted((run / sub).iterdir()):
            assert not f.name.startswith(".tmp"), f"temporary file left behind: {f}"
            out[f"{sub}/{f.name}"] = f.read_bytes()
    return out


def test_sigkill_during_ingest_then_resume_is_byte_identical(tmp_path):
    import pyarrow.parquet as pq

    prompts = _write_inputs(tmp_path)
    total = N_PROMPTS // SHARD_ROWS

    reference = tmp_path / "reference"
    p = _cli(_job(tmp_path, prompts, reference))
    err = _stderr(p)
    assert p.returncode == 0, err
    assert _done(reference) == total

    run = tmp_path / "killed"
    job = _job(tmp_path, prompts, run)
    kills = 0
    # Kill points: while planning (no marker yet), then each time KILL_STEP more shards are marked.
    for point in range(5):
        target = 0 if point == 0 else _done(run) + KILL_STEP
        p = _cli(job)
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None:
            if (point == 0 and (run / "manifest").exists()) or (point and _done(run) >= target):
                break
            time.sleep(0.01)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)  # the driver only, as a crash would
            p.wait()
            kills += 1
        err = _stderr(p)
        assert kills > point or p.returncode == 0, f"resume {point} failed by itself: {err}"
        _reap(p)
        assert _done(run) < total or p.returncode == 0
    assert kills >= 4, "the run finished before most kill points; the test did not interrupt it"
    assert _done(run) < total, "no interruption left work to resume"

    p = _cli(job)
    err = _stderr(p)
    assert p.returncode == 0, err
    assert _done(run) == total

    ref_files, run_files = _files(reference), _files(run)
    assert ref_files.keys() == run_files.keys()
    different = [k for k in ref_files if ref_files[k] != run_files[k]]
    assert not different, f"files differ from the uninterrupted run: {different[:5]}"

    ids = []
    for sub in ("data", "rejects"):
        for f in sorted((run / "ingest" / sub).iterdir()):
            ids += pq.read_table(f, columns=["prompt_id", "row"]).column("row").to_pylist()
    assert sorted(ids) == list(range(N_PROMPTS)), "a row is missing or duplicated"
