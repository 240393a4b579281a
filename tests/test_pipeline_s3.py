"""The whole pipeline with its run folder and box-latent cache on s3:// (SeaweedFS `weed mini` on loopback).

1. ingest -> layouts -> box_latents -> images (tiny models, layouts from the replay endpoint) with
   `run.url` and `run.cache_url` on the session's SeaweedFS server: every image row is there, the
   PNGs read back through fsspec match their sha256, the cache entries are on S3, and
   `lmd-batch status s3://...` (endpoint and credentials from AWS_* environment variables) agrees.
2. The same job through the CLI against a SeaweedFS server of its own, killed once the first
   images marker appears: the CLI exits non-zero with one `error: ...` line naming the storage URL
   (no traceback); after restarting the server on the same ports and data folder the rerun
   completes, every marker's data and rejects exist with the marker's sha256, and every prompt is
   imaged exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import BUCKET, LOOPBACK, _free_port_pairs, _wait_for_bucket, make_job_file, run_cli, weed_mini_command
from llm_replay import ReplayLLM

pytestmark = [pytest.mark.slow, pytest.mark.s3]

N = 8
SHARD_ROWS = 2
SHARDS = N // SHARD_ROWS
KEY = "sk-pipeline-s3"
STAGES = ["ingest", "layouts", "box_latents", "images", "evaluate"]
LAYOUTS = [
    "[('a red ball', [40, 200, 150, 150])]\nBackground prompt: a park",
    "[('a red ball', [40, 200, 150, 150]), ('a blue cube', [300, 180, 160, 160])]\nBackground prompt: a table",
    "[]\nBackground prompt: an empty beach",
]
ANSWERS = {f"s3 prompt number {i}": LAYOUTS[i % len(LAYOUTS)] for i in range(N)}
PROMPT_IDS = [f"p{i:09d}" for i in range(N)]
# Both tests run under Ray. Ray 2.60 Data loses a stage actor's exception cause on the way to the
# driver; the runner's progress ledger carries the one-line error back (runner.RayStageActor).
KILL_EXECUTOR = "ray"
# cache entries: one per box (every box differs by prompt and seed)
BOXES = sum(LAYOUTS[i % len(LAYOUTS)].count("('") for i in range(N))


@pytest.fixture(scope="module")
def endpoint():
    server = ReplayLLM(ANSWERS, api_key=KEY)
    yield server
    server.close()


def _job(folder: Path, endpoint, run_url: str, cache_url: str, storage_options: dict, executor: str) -> Path:
    prompts = folder / "prompts.txt"
    prompts.write_text("".join(p + "\n" for p in ANSWERS))
    ray = {"executor": executor}
    if executor == "ray":
        ray.update(num_cpus=2, object_store_mb=128)
    return make_job_file(folder, input={"prompts": str(prompts), "shard_rows": SHARD_ROWS},
                         run={"url": run_url, "cache_url": cache_url, "storage_options": storage_options},
                         stages=None, ray=ray,
                         llm=dict(url=endpoint.url, model="replay", api_key_env="S3_PIPELINE_KEY", structured=False),
                         diffusion=dict(method="lmd", model="tiny-sd", mask="box", steps=3, size=128,
                                        guidance_steps=2))


def _check_run(run_url: str, cache_url: str, storage_options: dict) -> list[dict]:
    """Every stage fully marked; every marker's data and rejects exist and match its sha256 (read
    through RunFolder, which verifies them); each prompt imaged exactly once; PNGs and cache
    entries readable from S3. Returns the image rows."""
    import fsspec
    from PIL import Image

    from lmd_batch.pipeline.status import run_status
    from lmd_batch.storage.latent_cache import LatentCache
    from lmd_batch.storage.run_folder import RunFolder, data_path, rejects_path, sha256

    run = RunFolder(run_url, storage_options)
    manifest_sha = run.manifest_sha256()
    tables = {}
    for stage in STAGES:
        markers = run.markers(stage)
        assert sorted(markers) == list(range(SHARDS)), f"{stage}: markers {sorted(markers)}"
        rows = []
        for sid, m in sorted(markers.items()):
            data = run.read_data(stage, sid, m)  # raises StorageError when missing or not matching
            rejects = run.read_rejects(stage, sid, m)
            assert (data.num_rows, rejects.num_rows) == (m.rows, m.rejects)
            assert sha256(run.loc.read_bytes(data_path(stage, sid))) == m.data_sha256
            assert sha256(run.loc.read_bytes(rejects_path(stage, sid))) == m.rejects_sha256
            rows += data.to_pylist()
        tables[stage] = rows
    # the upstream chain of every marker is intact (what `status` and a rerun trust)
    st = run_status(run)
    for stage in STAGES:
        s = st["stages"][stage]
        assert (s["done"], s["total"], s["rejects"]) == (SHARDS, SHARDS, 0), (stage, s)
    assert run.markers("ingest")[0].upstream == {"manifest": manifest_sha}

    images = tables["images"]
    assert sorted(r["prompt_id"] for r in images) == PROMPT_IDS, "a prompt is missing or imaged twice"
    assert sorted(r["prompt"] for r in images) == sorted(ANSWERS)
    fs, _ = fsspec.core.url_to_fs(run_url, **storage_options)
    for r in images:
        with fsspec.open(f"{run_url}/{r['image_path']}", "rb", **storage_options) as f:
            png = f.read()
        assert hashlib.sha256(png).hexdigest() == r["image_sha256"]
        with fsspec.open(f"{run_url}/{r['image_path']}", "rb", **storage_options) as f:
            img = Image.open(f)
            img.load()
            assert img.size == (128, 128)
    fs.invalidate_cache()
    pngs = fs.find(f"{run.loc.root}/images/png")
    assert len(pngs) == N, pngs  # one PNG per layout, none left over

    boxes = tables["box_latents"]
    assert len(boxes) == BOXES
    cache = LatentCache(cache_url, storage_options)
    keys = {b["cache_key"] for b in boxes}
    assert len(keys) == BOXES
    for k in keys:
        assert cache.get(k) is not None, f"cache entry {k} missing or unreadable"
    cfs, croot = fsspec.core.url_to_fs(cache_url, **storage_options)
    cfs.invalidate_cache()
    assert len([p for p in cfs.find(f"{croot}/boxes") if p.endswith(".safetensors")]) == BOXES
    return images


# ---------------------------------------------------------------------------------------------
# 1. the whole pipeline on the session's SeaweedFS
# ---------------------------------------------------------------------------------------------

def test_whole_pipeline_on_seaweed_s3(tmp_path, endpoint, seaweed_s3, monkeypatch):
    from lmd_batch.config import load_job
    from lmd_batch.pipeline.runner import run_job

    unique = f"pipe-{uuid.uuid4().hex[:10]}"
    run_url = f"{seaweed_s3['url']}/{unique}/run"
    cache_url = f"{seaweed_s3['url']}/{unique}/cache"
    opts = dict(seaweed_s3["storage_options"])
    job_file = _job(tmp_path, endpoint, run_url, cache_url, opts, "ray")
    monkeypatch.setenv("S3_PIPELINE_KEY", KEY)
    job = load_job(job_file)
    assert job.run.url == run_url and job.run.cache_url == cache_url
    t0 = time.perf_counter()
    try:
        result = run_job(job, log=lambda *a: None)
    finally:
        import ray

        ray.shutdown()
    print(f"pipeline on s3 (ray): {time.perf_counter() - t0:.1f} s")
    assert (result["shards"], result["pending"]) == (SHARDS, SHARDS)
    _check_run(run_url, cache_url, opts)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # nothing on local disk

    # `lmd-batch status` takes no storage options: endpoint and credentials from the environment.
    env = {"AWS_ENDPOINT_URL": seaweed_s3["endpoint"], "AWS_ACCESS_KEY_ID": opts["key"],
           "AWS_SECRET_ACCESS_KEY": opts["secret"]}
    proc = run_cli("status", run_url, "--json", cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    st = json.loads(proc.stdout)
    assert st["run"] == run_url
    assert {k: (v["done"], v["total"]) for k, v in st["stages"].items()} == {s: (SHARDS, SHARDS) for s in STAGES}
    assert st["stages"]["images"]["rows"] == N
    proc = run_cli("status", run_url, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "images" in proc.stdout and "box_latents" in proc.stdout

    # a rerun has nothing to do
    assert run_job(load_job(job_file), log=lambda *a: None)["pending"] == 0


# ---------------------------------------------------------------------------------------------
# 2. the server stopped mid-run, restarted, the run resumed
# ---------------------------------------------------------------------------------------------

class Seaweed:
    """A `weed mini` of this test only, restartable on the same ports and data folder."""

    KEY, SECRET = "lmdkillkey", "lmdkillsecret"

    def __init__(self, folder: Path):
        self.folder = folder
        self.data = folder / "data"
        self.data.mkdir(parents=True)
        self.ports = _free_port_pairs(5)
        self.endpoint = f"http://{LOOPBACK}:{self.ports[3]}"
        self.proc = None
        self.log = None
        self.starts = 0

    @property
    def storage_options(self) -> dict:
        return {"endpoint_url": self.endpoint, "key": self.KEY, "secret": self.SECRET}

    def start(self):
        self._remove_sockets()
        cmd = weed_mini_command(self.folder, self.data, self.ports)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.KEY, AWS_SECRET_ACCESS_KEY=self.SECRET)
        self.starts += 1
        log_path = self.folder / f"weed-{self.starts}.log"
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.folder, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        _wait_for_bucket(self.proc, self.endpoint, self.KEY, self.SECRET, log_path)

    def kill(self):
        """Stop it the hard way (SIGKILL): what a crashed or unplugged server looks like."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=20)
        if self.log is not None:
            self.log.close()
            self.log = None

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        self._remove_sockets()

    def _remove_sockets(self):
        for name in ("filer.sock", "s3.sock"):
            (self.folder / name).unlink(missing_ok=True)
        for port in self.ports:
            for p in (port, port + 10000):
                for sock in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):
                    sock.unlink(missing_ok=True)


@pytest.fixture
def own_seaweed(tmp_path):
    server = Seaweed(tmp_path / "seaweed")
    server.start()
    yield server
    server.stop()


def _cli(job: Path, env: dict, log: Path):
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", COLUMNS="200", NO_COLOR="1", **env)
    with open(log, "wb") as err:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "lmd_batch.cli", "run", str(job)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def test_server_killed_mid_run_then_restarted_resumes(tmp_path, endpoint, own_seaweed):
    import s3fs

    server = own_seaweed
    unique = f"kill-{uuid.uuid4().hex[:10]}"
    run_url = f"s3://{BUCKET}/{unique}/run"
    cache_url = f"s3://{BUCKET}/{unique}/cache"
    opts = server.storage_options
    job = _job(tmp_path, endpoint, run_url, cache_url, opts, KILL_EXECUTOR)
    # Where anything fell back to the default endpoint it would reach a closed loopback port, not AWS.
    env = {"S3_PIPELINE_KEY": KEY, "AWS_ENDPOINT_URL": f"http://{LOOPBACK}:{server.ports[0] + 1}"}
    fs = s3fs.S3FileSystem(endpoint_url=server.endpoint, key=server.KEY, secret=server.SECRET,
                           skip_instance_cache=True)
    done_dir = f"{BUCKET}/{unique}/run/images/done"

    def images_done() -> int:
        try:
            fs.invalidate_cache(done_dir)
            return len([p for p in fs.ls(done_dir, detail=False) if p.endswith(".json")])
        except (FileNotFoundError, OSError):
            return 0

    t0 = time.perf_counter()
    log1 = tmp_path / "run1.log"
    p = _cli(job, env, log1)
    try:
        deadline = time.monotonic() + 300
        while p.poll() is None and time.monotonic() < deadline and images_done() < 1:
            time.sleep(0.05)
        assert p.poll() is None, f"the run ended before the server could be stopped:\n{log1.read_text()[-3000:]}"
        assert images_done() < SHARDS, "no images shard left to interrupt"
        server.kill()
        t_kill = time.perf_counter()
        rc = p.wait(timeout=240)
        t_fail = time.perf_counter()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        try:
            os.killpg(p.pid, signal.SIGKILL)  # Ray processes the driver may leave behind
        except ProcessLookupError:
            pass
    stderr = log1.read_text(errors="replace")
    print(f"first run: server killed after {t_kill - t0:.1f} s; the CLI failed {t_fail - t_kill:.1f} s later")
    assert rc != 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    assert f"s3://{BUCKET}/{unique}/" in errors[0], errors[0]
    print(errors[0])

    server.start()  # same ports, same data folder
    log2 = tmp_path / "run2.log"
    p = _cli(job, env, log2)
    try:
        rc = p.wait(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert rc == 0, log2.read_text(errors="replace")[-3000:]
    print(f"rerun after restart: {time.perf_counter() - t_fail:.1f} s")
    _check_run(run_url, cache_url, opts)
