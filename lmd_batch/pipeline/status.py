"""What a run folder says about itself: which (stage, shard) pairs are validly done.

A marker is valid when its upstream digest matches the current upstream (the manifest for the
first stage, the upstream stage's valid marker otherwise). One listing per stage, so this is
cheap on object stores.
"""

from __future__ import annotations

from lmd_batch.pipeline.registry import stage_class
from lmd_batch.pipeline.worker import MANIFEST_UPSTREAM


def valid_markers(run, stages: list[str], manifest_sha: str) -> dict[str, dict]:
    """{stage: {shard_id: Marker}} holding only markers whose upstream chain is intact."""
    out: dict[str, dict] = {}
    for name in stages:
        up = stage_class(name).upstream
        markers = run.markers(name)
        if up is None:
            out[name] = {k: m for k, m in markers.items() if m.upstream.get(MANIFEST_UPSTREAM) == manifest_sha}
            continue
        up_markers = out[up] if up in out else valid_markers(run, [up], manifest_sha)[up]
        out[name] = {k: m for k, m in markers.items()
                     if k in up_markers and m.upstream.get(up) == up_markers[k].data_sha256}
    return out


def run_status(run) -> dict:
    """Per-stage done/total shards, rows, rejects and compute seconds of a run folder."""
    from lmd_batch.errors import RunFolderError

    info = run.read_run_info()
    if info is None:
        raise RunFolderError(f"{run.url} is not an lmd-batch run folder (no run.json)")
    manifest_sha = run.manifest_sha256()
    stages = info["job"].get("stages") or _registered()
    valid = valid_markers(run, stages, manifest_sha)
    total = info["shards"]
    out = {"run": run.url, "job": info["job"]["name"], "shards": total, "stages": {}}
    for name in stages:
        ms = valid[name].values()
        out["stages"][name] = dict(done=len(valid[name]), total=total, rows=sum(m.rows for m in ms),
                                   rejects=sum(m.rejects for m in ms),
                                   rows_in=sum(m.stats.get("rows_in", 0) for m in ms),
                                   seconds=round(sum(m.stats.get("seconds", 0.0) for m in ms), 3),
                                   counters=_counters(ms))
    return out


def _counters(markers) -> dict:
    """Sums of the stages' own integer counters (llm_requests, cache_hits, ...) over done shards."""
    out: dict[str, int] = {}
    for m in markers:
        for k, v in m.stats.items():
            if k not in ("rows_in", "seconds") and isinstance(v, int) and not isinstance(v, bool):
                out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def _registered():
    from lmd_batch.pipeline.registry import stage_names

    return stage_names()
