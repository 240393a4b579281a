"""Where layout requests go: a given URL, one managed vLLM server, or N vLLM replicas on Ray.

Started lazily, on the first request the cache cannot answer: a resumed run whose answers are all
cached never pays the server's start-up (about 20 s on CPU). The runner creates one `LLMEndpoints`
per run (a Ray actor under Ray, so every stage actor shares the same servers) and closes it when
the run ends or fails.
"""

from __future__ import annotations

import os

from lmd_batch.errors import UserError


def api_key(job) -> str | None:
    """The endpoint's API key, read from the variable the job names; never logged or stored."""
    name = job.llm.api_key_env
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise UserError(f"llm.api_key_env names {name}, which is not set in the environment")
    return value


def check_llm_settings(job) -> None:
    """Fail before any work starts when the LLM cannot be reached as configured."""
    api_key(job)
    if job.llm.url is None and job.llm.replicas == 0:
        from lmd_batch.models.registry import llm_python

        if job.llm.python is None:
            llm_python()  # raises a clear error when .venv-llm is missing


def _python(job) -> str:
    from lmd_batch.models.registry import llm_python

    return job.llm.python or llm_python()


def _on_cluster(job) -> bool:
    return bool(job.ray.address or os.environ.get("RAY_ADDRESS"))


class VLLMReplica:
    """One vLLM server held by a Ray actor (with its GPU); reachable from the other nodes."""

    def __init__(self, job_json: str):
        from lmd_batch.config import Job
        from lmd_batch.llm.server import ManagedServer
        from lmd_batch.models.registry import resolve_model

        job = Job.model_validate_json(job_json)
        device = "cuda" if job.llm.replica_gpus > 0 else "cpu"
        self.server = ManagedServer(_python(job), resolve_model(job.llm.model), job.llm.model, host="0.0.0.0",
                                    device=device, startup_timeout_s=job.llm.startup_timeout_s,
                                    max_model_len=job.llm.max_model_len)

    def start(self) -> str:
        import ray

        self.server.start()
        return f"http://{ray.util.get_node_ip_address()}:{self.server.port}/v1"

    def stop(self) -> None:
        self.server.stop()


class LLMEndpoints:
    """Lazily started endpoints for one run; `urls()` starts them on first use."""

    def __init__(self, job_json: str):
        from lmd_batch.config import Job

        self.job = Job.model_validate_json(job_json)
        self._urls: list[str] | None = [self.job.llm.url] if self.job.llm.url else None
        self._server = None
        self._replicas: list = []
        self.startup_s = 0.0

    def urls(self) -> list[str]:
        if self._urls is None:
            import time

            t0 = time.perf_counter()
            self._urls = self._start_replicas() if self.job.llm.replicas else [self._start_managed()]
            self.startup_s = time.perf_counter() - t0
        return self._urls

    def info(self) -> dict:
        kind = "url" if self.job.llm.url else ("replicas" if self.job.llm.replicas else "managed")
        return dict(kind=kind, started=self._urls is not None and kind != "url", startup_s=round(self.startup_s, 1),
                    endpoints=len(self._urls or []))

    def diagnose(self) -> str:
        """Why requests might fail: a managed server that died, with the end of its log ('' if none)."""
        srv = self._server
        if srv is not None and srv.proc is not None and srv.proc.poll() is not None:
            return (f"the managed vLLM server exited with code {srv.proc.returncode}; last lines of "
                    f"{srv.log_path}:\n{srv.log_tail(8)}")
        return ""

    def _start_managed(self) -> str:
        from lmd_batch.llm.server import ManagedServer
        from lmd_batch.models.registry import resolve_model

        host = "0.0.0.0" if _on_cluster(self.job) else "127.0.0.1"
        self._server = ManagedServer(_python(self.job), resolve_model(self.job.llm.model), self.job.llm.model,
                                     host=host, startup_timeout_s=self.job.llm.startup_timeout_s,
                                     max_model_len=self.job.llm.max_model_len, log=print)
        url = self._server.start()
        if host == "0.0.0.0":
            import ray

            url = f"http://{ray.util.get_node_ip_address()}:{self._server.port}/v1"
        return url

    def _start_replicas(self) -> list[str]:
        import ray

        cfg = self.job.llm
        actor = ray.remote(num_cpus=1, num_gpus=cfg.replica_gpus)(VLLMReplica)
        self._replicas = [actor.remote(self.job.model_dump_json()) for _ in range(cfg.replicas)]
        try:
            return ray.get([r.start.remote() for r in self._replicas], timeout=cfg.startup_timeout_s + 120)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise UserError(f"{cfg.replicas} vLLM replicas (each {cfg.replica_gpus} GPU, 1 CPU) did not start within "
                            f"{cfg.startup_timeout_s + 120:.0f} s: does the cluster have the resources?") from None
        except Exception as exc:
            from lmd_batch.pipeline.runner import _find_user_error

            self.close()
            raise _find_user_error(exc) or UserError(f"starting {cfg.replicas} vLLM replicas failed: {exc}") from None

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._replicas:
            import ray

            for r in self._replicas:
                try:
                    ray.get(r.stop.remote(), timeout=60)
                except Exception:
                    pass
                ray.kill(r)
            self._replicas = []
        if not self.job.llm.url:
            self._urls = None


class ServiceRef:
    """Calls a service the same way whether it is a plain object (local executor) or a Ray actor."""

    def __init__(self, target):
        self.target = target

    def call(self, method: str, *args):
        fn = getattr(self.target, method)
        if hasattr(fn, "remote"):
            import ray

            return ray.get(fn.remote(*args))
        return fn(*args)
