"""ShardWorker: the bookkeeping around a stage, identical under Ray and in-process.

For one (stage, shard): skip it when a valid marker exists (its upstream digest still matches),
otherwise read the upstream shard, let the stage compute, and write data, rejects and marker.
"""

from __future__ import annotations

import time

from lmd_batch.pipeline.registry import stage_class
from lmd_batch.storage.run_folder import RunFolder

MANIFEST_UPSTREAM = "manifest"


class ShardWorker:
    """Holds one loaded stage; `run_shard` is called once per shard."""

    def __init__(self, stage_name: str, job, manifest_sha: str, reporter=None, services=None):
        from lmd_batch.pipeline.services import refs

        self.job = job
        self.run = RunFolder(job.run.url, job.run.storage_options)
        self.stage = stage_class(stage_name)(job, self.run, refs(services))
        self.manifest_sha = manifest_sha
        self.reporter = reporter

    def upstream_digest(self, shard_id: int):
        """(upstream key, digest, upstream marker) the output of this shard depends on."""
        up = self.stage.upstream
        if up is None:
            return MANIFEST_UPSTREAM, self.manifest_sha, None
        marker = self.run.marker(up, shard_id)
        if marker is None:
            return up, None, None
        return up, marker.data_sha256, marker

    def run_shard(self, shard: dict) -> dict:
        name, shard_id = self.stage.name, int(shard["shard_id"])
        up_key, up_digest, up_marker = self.upstream_digest(shard_id)
        if up_digest is None:
            return self._status(shard_id, "upstream_missing", 0, 0, 0.0)
        existing = self.run.marker(name, shard_id)
        if existing is not None and existing.upstream.get(up_key) == up_digest:
            self._report(shard_id, "skipped", existing.rows, existing.rejects)
            return self._status(shard_id, "skipped", existing.rows, existing.rejects, 0.0)
        t0 = time.perf_counter()
        upstream_table = None if up_marker is None else self.run.read_data(self.stage.upstream, shard_id, up_marker)
        result = self.stage.process(shard, upstream_table)
        seconds = time.perf_counter() - t0
        stats = dict(result.stats, seconds=round(seconds, 3))
        marker = self.run.write_shard(name, shard_id, result.data, result.rejects, self.stage.data_schema,
                                      self.stage.rejects_schema, {up_key: up_digest}, stats)
        self._report(shard_id, "done", marker.rows, marker.rejects, seconds)
        return self._status(shard_id, "done", marker.rows, marker.rejects, seconds)

    def _report(self, shard_id, status, rows, rejects, seconds=0.0):
        if self.reporter is not None:
            self.reporter(self.stage.name, shard_id, status, rows, rejects, seconds)

    def _status(self, shard_id, status, rows, rejects, seconds):
        return dict(stage=self.stage.name, shard_id=shard_id, status=status, rows=rows, rejects=rejects,
                    seconds=seconds)

    def close(self):
        self.stage.close()
