"""Planning a run's shards: the frozen manifest.

Every input file is read once to count its rows, to note the byte offset of each shard's first
line (line formats), and to find rows whose explicit id repeats an earlier one (the first
occurrence wins; the others become rejects). A shard never spans two files, and shards are
numbered in input order, so the same inputs always give the same manifest.
"""

from __future__ import annotations

import hashlib
from lmd_batch.errors import UserError
from lmd_batch.prompts import sources


def generated_id(global_row: int) -> str:
    """The id of a row without one: stable as long as the inputs before it do not change."""
    return f"p{global_row:09d}"


def plan_shards(patterns: list[str], fmt: str, storage_options: dict, shard_rows: int):
    """Return the manifest rows. Raises UserError for missing, unreadable or empty inputs."""
    files = sources.expand(patterns, storage_options)
    manifest = []
    seen_ids: set[str] = set()
    global_row = 0
    for fs, path, shown in files:
        form = sources.detect_format(path, fmt)
        data = sources.read_all_bytes(fs, path, shown) if form != "parquet" else None
        if form == "parquet":
            pf = sources.open_parquet(fs, path, shown)
            n = pf.metadata.num_rows
            ids = _parquet_ids(pf, shown) if "id" in pf.schema_arrow.names else [None] * n
            offsets = None
        elif form in ("text", "jsonl"):
            offsets = sources.line_offsets(data)
            lines = sources.split_lines(data)
            n = len(lines)
            ids = [sources.jsonl_id(ln) for ln in lines] if form == "jsonl" else [None] * n
        else:  # csv
            header, records = sources.csv_records(data, shown)
            n = len(records)
            id_col = header.index("id") if "id" in header else None
            ids = [(r[id_col] or None) if id_col is not None and id_col < len(r) else None for r in records]
            offsets = None
        dup_rows = []
        for i, rid in enumerate(ids):
            key = rid if rid is not None else generated_id(global_row + i)
            if key in seen_ids:
                dup_rows.append(i)
            else:
                seen_ids.add(key)
        for start in range(0, n, shard_rows):
            end = min(n, start + shard_rows)
            manifest.append(dict(
                shard_id=len(manifest), source=shown, format=form, row_start=start, row_end=end,
                byte_start=offsets[start] if offsets else 0, byte_end=offsets[end] if offsets else 0,
                global_row_start=global_row + start,
                duplicate_rows=[r for r in dup_rows if start <= r < end],
            ))
        global_row += n
    if global_row == 0:
        shown = ", ".join(f[2] for f in files)
        raise UserError(f"no prompts: the prompt file(s) are empty ({shown})")
    return manifest


def _parquet_ids(pf, shown: str) -> list[str | None]:
    try:
        col = pf.read(columns=["id"]).column("id").to_pylist()
    except Exception as exc:
        raise UserError(f"cannot read Parquet file {shown}: {type(exc).__name__}: {exc}") from None
    return [None if v is None else (v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else str(v)) for v in col]


def _file_digest(fs, path: str, shown: str) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    try:
        with fs.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    except Exception as exc:
        raise UserError(f"cannot read prompt file {shown}: {type(exc).__name__}: {exc}") from None
    return h.hexdigest(), size


def input_fingerprints(patterns: list[str], fmt: str, storage_options: dict) -> list[dict]:
    """Size and sha256 of every input file, to detect inputs changed under a running job."""
    out = []
    for fs, path, shown in sources.expand(patterns, storage_options):
        digest, size = _file_digest(fs, path, shown)
        out.append(dict(source=shown, size=size, sha256=digest))
    return out
