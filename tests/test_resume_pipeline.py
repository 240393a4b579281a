"""Resume of the whole pipeline under Ray: SIGKILL the driver at five moments of a 64-prompt run
(tiny models, layouts from the replay endpoint); every rerun goes on, and the finished run has every
prompt imaged exactly once, with PNGs and tables byte-identical to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_job_file
from llm_replay import ReplayLLM

pytestmark = pytest.mark.slow

N = 64
KEY = "sk-resume"
LAYOUTS = [
    "[('a red ball', [40, 200, 150, 150])]\nBackground prompt: a park",
    "[('a red ball', [40, 200, 150, 150]), ('a blue cube', [300, 180, 160, 160])]\nBackground prompt: a table",
    "[('a cat', [60, 220, 150, 140]), ('a cat', [280, 220, 150, 140]), ('a dog', [200, 40, 120, 120])]\n"
    "Background prompt: a sofa",
]


def _job(folder: Path, url: str, name: str) -> Path:
    prompts = folder / "prompts.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(N)))
    return make_job_file(folder, _file=f"{name}.yaml", input={"prompts": str(prompts), "shard_rows": 8},
                         run={"url": name, "cache_url": f"{name}-cache"}, stages=None,
                         ray={"executor": "ray", "num_cpus": 2, "object_store_mb": 256},
                         llm=dict(url=url, model="replay", api_key_env="RESUME_KEY", structured=False),
                         diffusion=dict(method="lmd", model="tiny-sd", mask="box", steps=3, size=128,
                                        guidance_steps=2, box_batch_size=4))


def _cli(job: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", RESUME_KEY=KEY)
    log = open(job.with_suffix(".log"), "ab")
    return subprocess.Popen([sys.executable, "-m", "lmd_batch.cli", "run", str(job)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def _done(run: Path, stage: str) -> int:
    d = run / stage / "done"
    return len(list(d.glob("shard-*.json"))) if d.is_dir() else 0


def _snapshot(run: Path) -> dict[str, bytes]:
    out = {}
    for sub in ("images/data", "images/png", "evaluate/data"):
        for f in sorted((run / sub).rglob("*")):
            if f.is_file():
                assert not f.name.startswith(".tmp"), f"temporary file left behind: {f}"
                out[str(f.relative_to(run))] = f.read_bytes()
    return out


@pytest.fixture(scope="module")
def server():
    replay = ReplayLLM({f"prompt number {i}": LAYOUTS[i % 3] for i in range(N)}, api_key=KEY)
    yield replay
    replay.close()


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory) -> Path:
    """One uninterrupted run that both tests compare against."""
    folder = tmp_path_factory.mktemp("resume-reference")
    ref_job = _job(folder, server.url, "reference")
    p = _cli(ref_job)
    assert p.wait(900) == 0, ref_job.with_suffix(".log").read_text()[-3000:]
    ref = folder / "reference"
    assert _done(ref, "images") == N // 8 and _done(ref, "evaluate") == N // 8
    return ref


def test_sigkill_whole_pipeline_five_times_then_resume_is_byte_identical(tmp_path, server, reference):
    import pyarrow.parquet as pq

    job = _job(tmp_path, server.url, "killed")
    run = tmp_path / "killed"
    # Kill points: while planning, during layouts, during box latents, then twice during images.
    points = [("manifest", 0), ("layouts", 1), ("box_latents", 2), ("images", 1), ("images", 2)]
    kills = 0
    for stage, extra in points:
        target = (_done(run, stage) + extra) if stage != "manifest" else 0
        p = _cli(job)
        deadline = time.time() + 600
        while time.time() < deadline and p.poll() is None:
            if stage == "manifest" and (run / "manifest").exists():
                break
            if stage != "manifest" and _done(run, stage) >= target:
                break
            time.sleep(0.02)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
        else:
            assert p.returncode == 0, job.with_suffix(".log").read_text()[-3000:]
        try:
            os.killpg(p.pid, signal.SIGKILL)  # Ray's agents a SIGKILLed driver leaves behind
        except ProcessLookupError:
            pass
    assert kills >= 4, "the run finished before most kill points"
    assert _done(run, "images") < N // 8, "no interruption left work to resume"

    p = _cli(job)
    assert p.wait(900) == 0, job.with_suffix(".log").read_text()[-3000:]
    assert _done(run, "images") == N // 8
    ref_files, run_files = _snapshot(reference), _snapshot(run)
    assert ref_files.keys() == run_files.keys()
    different = [k for k in ref_files if ref_files[k] != run_files[k]]
    assert not different, f"differs from the uninterrupted run: {different[:5]}"
    ids = [r for f in sorted((run / "images" / "data").glob("*.parquet"))
           for r in pq.read_table(f, columns=["prompt_id"]).column("prompt_id").to_pylist()]
    assert sorted(ids) == sorted(f"p{i:09d}" for i in range(N)), "a prompt is missing or duplicated"


def _ray_workers(name: str) -> list[int]:
    """PIDs of Ray Data map workers whose process title names the stage actor class."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if name.encode() in cmd:
                out.append(int(d.name))
    return out


def test_killed_worker_actor_is_restarted_and_its_shard_redone_identically(tmp_path, server, reference):
    job = _job(tmp_path, server.url, "workerkill")
    run = tmp_path / "workerkill"
    p = _cli(job)
    killed = []
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None and not killed:
        if _done(run, "box_latents") >= 1 and _done(run, "images") < N // 8 - 2:
            workers = _ray_workers("MapWorker(MapBatches(RayStageActor))")
            if len(workers) >= 2:  # the stage actors of box latents and images are up: kill one
                os.kill(workers[-1], signal.SIGKILL)
                killed.append(workers[-1])
        time.sleep(0.05)
    assert killed, "no worker actor was found to kill"
    assert p.wait(900) == 0, job.with_suffix(".log").read_text()[-3000:]
    ref_files, run_files = _snapshot(reference), _snapshot(run)
    assert ref_files == run_files
