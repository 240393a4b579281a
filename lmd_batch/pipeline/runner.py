"""Running a job: plan or resume the run folder, then push every pending shard through the stages.

Under Ray (the default) each stage is a pool of actors in one streaming Ray Dataset whose rows are
shard descriptors: `map_batches(StageActor, compute=ActorPoolStrategy(size=n), batch_size=1)`
per stage, so shard k can be in stage 2 while shard k+1 is in stage 1, with Ray's backpressure
and actor restarts. The run folder gives resume: a worker skips shards whose marker is valid.
The 'local' executor runs the same ShardWorker in-process, one shard at a time.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from lmd_batch.errors import UserError
from lmd_batch.pipeline.prepare import prepare_run
from lmd_batch.pipeline.status import valid_markers
from lmd_batch.pipeline.worker import ShardWorker


class RayStageActor:
    """A Ray Data actor holding one loaded stage (models are loaded once per actor)."""

    def __init__(self, stage_name: str, job_json: str, manifest_sha: str, reporter, services=None):
        from lmd_batch.config import Job

        job = Job.model_validate_json(job_json)
        self.ledger = reporter
        self.worker = ShardWorker(stage_name, job, manifest_sha,
                                  reporter=lambda *a: reporter.report.remote(*a), services=services)

    def __call__(self, batch: dict) -> dict:
        import ray

        for shard_json in batch["shard"]:
            try:
                self.worker.run_shard(json.loads(shard_json))
            except UserError as exc:
                # Ray Data wraps worker exceptions and loses their cause on the way to the driver;
                # the ledger carries the one-line error back instead.
                ray.get(self.ledger.fail.remote(exc))
                raise
        return batch


class ProgressLedger:
    """Per-stage counters, updated from ShardWorker reports (through a Ray actor under Ray)."""

    def __init__(self):
        self.events: list[tuple] = []
        self.failures: list = []

    def fail(self, exc) -> None:
        self.failures.append(exc)

    def first_failure(self):
        return self.failures[0] if self.failures else None

    def report(self, stage, shard_id, status, rows, rejects, seconds):
        self.events.append((stage, shard_id, status, rows, rejects, seconds))

    def drain(self) -> list[tuple]:
        out, self.events = self.events, []
        return out


def _find_user_error(exc: BaseException) -> UserError | None:
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return None


def init_ray(job, log=print):
    """Join RAY_ADDRESS / ray.address, or start a local Ray sized by the job file."""
    import os

    from lmd_batch.errors import require

    ray = require("ray", "ray")
    require("ray.data", "ray")
    if ray.is_initialized():
        return
    address = job.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    if address:
        log(f"joining the Ray cluster at {address}")
        ray.init(address=address, **kwargs)
    else:
        mb = job.ray.object_store_mb or 1024
        ray.init(num_cpus=job.ray.num_cpus, object_store_memory=mb * 2**20, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _execute_ray(job, stages, shards, manifest_sha, on_event, log, services):
    import ray

    ledger = ray.remote(num_cpus=0)(ProgressLedger).remote()
    ds = ray.data.from_items([{"shard": json.dumps(s)} for s in shards], override_num_blocks=len(shards))
    for name in stages:
        res = job.resources(name)
        ds = ds.map_batches(
            RayStageActor,
            fn_constructor_kwargs=dict(stage_name=name, job_json=job.model_dump_json(), manifest_sha=manifest_sha,
                                       reporter=ledger, services=services),
            compute=ray.data.ActorPoolStrategy(size=res.pool_size),
            num_cpus=res.num_cpus, num_gpus=res.num_gpus, batch_size=1, batch_format="default",
        )
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            for ev in ray.get(ledger.drain.remote()):
                on_event(*ev)
            stop.wait(0.3)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        for _ in ds.iter_batches(batch_size=None):
            pass
    except Exception:
        failure = ray.get(ledger.first_failure.remote())
        if failure is not None:
            raise failure from None
        raise
    finally:
        stop.set()
        t.join()
        for ev in ray.get(ledger.drain.remote()):
            on_event(*ev)


def _execute_local(job, stages, shards, manifest_sha, on_event, log, services):
    workers = {name: ShardWorker(name, job, manifest_sha, reporter=on_event, services=services) for name in stages}
    try:
        for shard in shards:
            for name in stages:
                workers[name].run_shard(shard)
    finally:
        for w in workers.values():
            w.close()


def run_job(job, new_run: bool = False, log=print, progress=None, on_start=None) -> dict:
    """Run (or resume) a job; returns {'run': url, 'shards': n, 'pending': n, 'seconds': s, 'stages': [...]}.

    `on_start(stages, total_shards, {stage: shards already done})` is called once planning is done;
    `progress(stage, shard_id, status, rows, rejects, seconds)` as shards finish.
    """
    t0 = time.perf_counter()
    if job.ray.executor == "ray" and job.run.url.startswith("memory://"):
        raise UserError("a memory:// run folder lives inside one process, so Ray workers cannot share it; "
                        "use --executor local (or ray.executor: local) with memory://")
    run, manifest, manifest_sha, _info = prepare_run(job, new_run=new_run, log=log)
    stages = job.selected_stages()
    valid = valid_markers(run, stages, manifest_sha)
    todo = [s for s in manifest if any(s["shard_id"] not in valid[name] for name in stages)]
    if on_start is not None:
        on_start(stages, len(manifest), {name: len(valid[name]) for name in stages})
    on_event = progress or (lambda *a: None)
    services_info = {}
    if todo:
        from lmd_batch.pipeline.services import RunServices, needed_services

        use_ray = job.ray.executor == "ray"
        if "llm" in needed_services(stages):
            from lmd_batch.llm.endpoints import check_llm_settings

            check_llm_settings(job)
        executor = _execute_ray if use_ray else _execute_local
        try:
            if use_ray:
                init_ray(job, log)
            with RunServices(job, stages, use_ray) as services:
                executor(job, stages, todo, manifest_sha, on_event, log, services.targets)
                services_info = services.info()
        except UserError:
            raise
        except Exception as exc:
            found = _find_user_error(exc)
            if found is not None:
                raise found from None
            raise
    return dict(run=run.url, shards=len(manifest), pending=len(todo), seconds=time.perf_counter() - t0,
                stages=stages, services=services_info)
