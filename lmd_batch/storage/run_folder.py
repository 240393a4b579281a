"""The run folder: every path a run writes, spelled out literally.

    {run}/run.json                              resolved job, fingerprint, versions, inputs (written when planned)
    {run}/manifest/shards.parquet               frozen shard list (written once, before run.json)
    {run}/{stage}/data/shard-00042.parquet      accepted rows of a shard (name from stage + shard only)
    {run}/{stage}/rejects/shard-00042.parquet   rejected rows with their reasons
    {run}/{stage}/done/shard-00042.json         the marker, written LAST: rows, bytes, sha256, upstream digests

Readers trust only marked shards and verify the data's sha256 against the marker. A rerun
overwrites unmarked files. Never pickle: Parquet and JSON only.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass

from lmd_batch.errors import RunFolderError, StorageError
from lmd_batch.schemas import conform
from lmd_batch.storage.location import Location

RUN_JSON = "run.json"
MANIFEST = "manifest/shards.parquet"
RUN_FORMAT = "lmd-batch-run/1"


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}"


def data_path(stage: str, shard_id: int) -> str:
    return f"{stage}/data/{shard_name(shard_id)}.parquet"


def rejects_path(stage: str, shard_id: int) -> str:
    return f"{stage}/rejects/{shard_name(shard_id)}.parquet"


def done_path(stage: str, shard_id: int) -> str:
    return f"{stage}/done/{shard_name(shard_id)}.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parquet_bytes(table) -> bytes:
    """Serialise a table deterministically: same table and versions give the same bytes."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True, store_schema=True)
    return buf.getvalue()


def read_parquet_bytes(data: bytes):
    """Read from an Arrow buffer, not io.BytesIO: a Python file makes Arrow's I/O threads call back
    into Python, and one still finishing at interpreter exit aborts the process ("terminate called
    without an active exception", exit -6; seen in CI on about half the runs of a resumed benchmark)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data))


@dataclass(frozen=True)
class Marker:
    """Contents of {stage}/done/shard-NNNNN.json."""

    stage: str
    shard_id: int
    rows: int
    rejects: int
    data_sha256: str
    data_bytes: int
    rejects_sha256: str
    upstream: dict
    stats: dict

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Marker":
        d = json.loads(data)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


class RunFolder:
    """One run's folder on any fsspec URL."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.loc = Location(url, storage_options)
        self.url = self.loc.url

    # run.json and manifest -------------------------------------------------------------------
    def read_run_info(self) -> dict | None:
        raw = self.loc.read_bytes_or_none(RUN_JSON)
        if raw is None:
            return None
        try:
            info = json.loads(raw)
        except ValueError:
            raise RunFolderError(f"{self.loc.display(RUN_JSON)} is not valid JSON; use --new-run to start over") from None
        if info.get("format") != RUN_FORMAT:
            raise RunFolderError(f"{self.loc.display(RUN_JSON)} is not an lmd-batch run ({info.get('format')!r})")
        return info

    def write_run_info(self, info: dict) -> None:
        self.loc.write_bytes(RUN_JSON, json.dumps(info, sort_keys=True, indent=1).encode())

    def write_manifest(self, table) -> str:
        data = parquet_bytes(conform(table, "manifest"))
        self.loc.write_bytes(MANIFEST, data)
        return sha256(data)

    def read_manifest(self):
        raw = self.loc.read_bytes_or_none(MANIFEST)
        if raw is None:
            raise RunFolderError(f"{self.loc.display(MANIFEST)} is missing; use --new-run to start over")
        return read_parquet_bytes(raw)

    def manifest_sha256(self) -> str:
        return sha256(self.loc.read_bytes(MANIFEST))

    def foreign_entries(self) -> list[str]:
        """Top-level entries that a half-planned lmd-batch run would not have.

        A driver killed while planning leaves `manifest/` and maybe a temporary run.json
        (`.tmp-*`) but no run.json: that folder is ours and is planned again on the next run.
        """
        return [n for n in self.loc.list_names("") if n not in ("manifest", RUN_JSON) and not n.startswith(".tmp-")]

    def remove_stale_temp_files(self) -> int:
        """Delete temporary files a killed local writer left behind (object stores have none)."""
        if not self.loc.is_local:
            return 0
        import glob
        import os

        stale = glob.glob(os.path.join(self.loc.root, "**", ".tmp-*"), recursive=True)
        for f in stale:
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass
        return len(stale)

    def clear(self) -> None:
        self.loc.delete_tree("")

    # shards ----------------------------------------------------------------------------------
    def markers(self, stage: str) -> dict[int, Marker]:
        """All markers of a stage, from one listing (cheap on object stores)."""
        out = {}
        for name in self.loc.list_names(f"{stage}/done"):
            if not (name.startswith("shard-") and name.endswith(".json")):
                continue
            shard_id = int(name[len("shard-"):-len(".json")])
            raw = self.loc.read_bytes_or_none(done_path(stage, shard_id))
            if raw is None:
                continue
            try:
                out[shard_id] = Marker.from_json(raw)
            except (ValueError, KeyError, TypeError):
                continue  # a damaged marker means: not done
        return out

    def marker(self, stage: str, shard_id: int) -> Marker | None:
        raw = self.loc.read_bytes_or_none(done_path(stage, shard_id))
        if raw is None:
            return None
        try:
            return Marker.from_json(raw)
        except (ValueError, KeyError, TypeError):
            return None

    def write_shard(self, stage: str, shard_id: int, data, rejects, data_schema: str, rejects_schema: str,
                    upstream: dict, stats: dict) -> Marker:
        """Write data, then rejects, then the marker. Tables are checked against their schemas."""
        data_raw = parquet_bytes(conform(data, data_schema))
        rejects_raw = parquet_bytes(conform(rejects, rejects_schema))
        self.loc.write_bytes(data_path(stage, shard_id), data_raw)
        self.loc.write_bytes(rejects_path(stage, shard_id), rejects_raw)
        marker = Marker(stage=stage, shard_id=shard_id, rows=data.num_rows, rejects=rejects.num_rows,
                        data_sha256=sha256(data_raw), data_bytes=len(data_raw),
                        rejects_sha256=sha256(rejects_raw), upstream=dict(upstream), stats=dict(stats))
        self.loc.write_bytes(done_path(stage, shard_id), marker.to_json())
        return marker

    def _read_checked(self, rel: str, expected_sha: str):
        raw = self.loc.read_bytes_or_none(rel)
        if raw is None or sha256(raw) != expected_sha:
            raise StorageError(f"{self.loc.display(rel)} is missing or does not match its marker; "
                               f"delete the marker and rerun to redo the shard")
        return read_parquet_bytes(raw)

    def read_data(self, stage: str, shard_id: int, marker: Marker | None = None):
        """The data table of a marked shard, verified against the marker's sha256."""
        marker = marker or self.marker(stage, shard_id)
        if marker is None:
            raise RunFolderError(f"{stage} shard {shard_id} is not done")
        return self._read_checked(data_path(stage, shard_id), marker.data_sha256)

    def read_rejects(self, stage: str, shard_id: int, marker: Marker | None = None):
        marker = marker or self.marker(stage, shard_id)
        if marker is None:
            raise RunFolderError(f"{stage} shard {shard_id} is not done")
        return self._read_checked(rejects_path(stage, shard_id), marker.rejects_sha256)
