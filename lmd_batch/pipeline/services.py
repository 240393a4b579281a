"""Run-wide services shared by every worker of a stage: today the LLM endpoints.

A service lives once per run: in-process for the local executor, as one Ray actor under Ray (so
all stage actors share one managed vLLM server). The runner opens the services the selected
stages need before the pipeline starts and closes them when it ends or fails, so a managed
server never outlives its run.
"""

from __future__ import annotations

import importlib

from lmd_batch.llm.endpoints import ServiceRef

SERVICES: dict[str, str] = {
    "llm": "lmd_batch.llm.endpoints:LLMEndpoints",
}


def needed_services(stages: list[str]) -> list[str]:
    from lmd_batch.pipeline.registry import stage_class

    out: list[str] = []
    for name in stages:
        for svc in stage_class(name).needs:
            if svc not in out:
                out.append(svc)
    return out


def _service_class(name: str):
    module, _, cls = SERVICES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


class RunServices:
    """Context manager: `.targets` are what workers receive (objects or Ray actor handles)."""

    def __init__(self, job, stages: list[str], use_ray: bool):
        self.job, self.names, self.use_ray = job, needed_services(stages), use_ray
        self.targets: dict = {}

    def __enter__(self):
        job_json = self.job.model_dump_json()
        for name in self.names:
            cls = _service_class(name)
            if self.use_ray:
                import ray

                # max_concurrency 1: the first caller starts the server, the others wait for it.
                self.targets[name] = ray.remote(num_cpus=0)(cls).remote(job_json)
            else:
                self.targets[name] = cls(job_json)
        return self

    def info(self) -> dict:
        return {name: ServiceRef(t).call("info") for name, t in self.targets.items()}

    def __exit__(self, *exc):
        for name, t in self.targets.items():
            try:
                ServiceRef(t).call("close")
            except Exception:
                pass
            if self.use_ray:
                import ray

                ray.kill(t)
        self.targets = {}


def refs(targets: dict) -> dict:
    return {name: ServiceRef(t) for name, t in (targets or {}).items()}
