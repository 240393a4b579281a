"""Prompt files: finding them, recognising their format, and reading their rows.

Formats: Parquet (column 'prompt', optional 'id', 'samples'), JSONL (objects with the same keys),
CSV (a header with the same column names) and plain text (one prompt per line). Local paths,
globs and fsspec URLs all work.

Line formats (text, JSONL) are read as bytes and split on b"\\n", so an undecodable or broken
line is one bad row, not a broken file, and shards can start at recorded byte offsets.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass

from lmd_batch.errors import UserError

FORMATS = ("parquet", "jsonl", "csv", "text")
_EXT = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
        ".csv": "csv", ".txt": "text", ".text": "text"}


@dataclass
class RawRow:
    """One input row before the checks: text fields are None when absent; `error` is (reason, detail)."""

    row: int
    prompt: str | None = None
    id: str | None = None
    samples: object = None
    raw: bytes | None = None  # the undecoded line, for line formats
    error: tuple[str, str] | None = None


def detect_format(path: str, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    lower = path.lower()
    for ext in sorted(_EXT, key=len, reverse=True):
        if lower.endswith(ext) or lower.endswith(ext + ".gz"):
            return _EXT[ext]
    return "text"


def expand(patterns: list[str], storage_options: dict) -> list[tuple[object, str, str]]:
    """(fs, path, display URL) for every input file, in the given order, globs sorted."""
    import fsspec.core

    out = []
    for pattern in patterns:
        try:
            fs, path = fsspec.core.url_to_fs(pattern, **storage_options)
        except Exception as exc:
            raise UserError(f"cannot open prompt location {pattern}: {type(exc).__name__}: {exc}") from None
        if any(c in path for c in "*?["):
            matches = sorted(fs.glob(path))
            if not matches:
                raise UserError(f"no prompt file matches {pattern}")
            local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
            out.extend((fs, m, m if local else fs.unstrip_protocol(m)) for m in matches)
            continue
        try:
            if not fs.exists(path):
                raise UserError(f"prompt file not found: {pattern}")
            if fs.isdir(path):
                raise UserError(f"prompt location is a folder, not a file: {pattern} (use a glob such as {pattern}/*.jsonl)")
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"cannot reach prompt file {pattern}: {type(exc).__name__}: {exc}") from None
        out.append((fs, path, pattern))
    return out


def read_all_bytes(fs, path: str, shown: str) -> bytes:
    try:
        with fs.open(path, "rb", compression="infer") as f:
            return f.read()
    except Exception as exc:
        raise UserError(f"cannot read prompt file {shown}: {type(exc).__name__}: {exc}") from None


def line_offsets(data: bytes) -> list[int]:
    """Start offsets of the lines of `data`, plus the end. A final newline ends the last line."""
    starts = [0]
    pos = data.find(b"\n")
    while pos != -1:
        starts.append(pos + 1)
        pos = data.find(b"\n", pos + 1)
    if starts[-1] != len(data):
        starts.append(len(data))
    return starts


def split_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def _decode(raw: bytes) -> str | None:
    """UTF-8 text, or None when undecodable. A byte-order mark (first line of many files) is dropped."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text[1:] if text.startswith("\ufeff") else text


def parse_text_line(row: int, raw: bytes) -> RawRow:
    text = _decode(raw)
    if text is None:
        return RawRow(row, raw=raw, error=("invalid_utf8", "the line is not valid UTF-8"))
    return RawRow(row, prompt=text, raw=raw)


def parse_jsonl_line(row: int, raw: bytes) -> RawRow:
    text = _decode(raw)
    if text is None:
        return RawRow(row, raw=raw, error=("invalid_utf8", "the line is not valid UTF-8"))
    if not text.strip():
        return RawRow(row, prompt="", raw=raw)
    try:
        obj = json.loads(text)
    except ValueError as exc:
        return RawRow(row, raw=raw, error=("bad_row", f"not valid JSON: {exc}"))
    if not isinstance(obj, dict):
        return RawRow(row, raw=raw, error=("bad_row", "a JSONL row must be an object with a 'prompt' key"))
    return _from_mapping(row, obj, raw)


def _from_mapping(row: int, obj: dict, raw: bytes | None) -> RawRow:
    prompt = obj.get("prompt")
    rid = obj.get("id")
    out = RawRow(row, raw=raw, samples=obj.get("samples"))
    if rid is not None:
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            out.error = ("bad_row", f"'id' must be a string or an integer, not {type(rid).__name__}")
            return out
        out.id = str(rid)
    if prompt is None:
        out.error = ("bad_row", "the row has no 'prompt'")
    elif not isinstance(prompt, str):
        out.error = ("bad_row", f"'prompt' must be a string, not {type(prompt).__name__}")
    else:
        out.prompt = prompt
    return out


def jsonl_id(raw: bytes) -> str | None:
    """The explicit id of a JSONL line, or None (used when planning, to find duplicates)."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, (str, int)) and not isinstance(rid, bool):
            return str(rid)
    return None


def csv_records(data: bytes, shown: str) -> tuple[list[str], list[list[str]]]:
    """Header and records. Undecodable bytes survive as surrogates and are rejected per row."""
    text = data.decode("utf-8", errors="surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        rows = list(reader)
    except csv.Error as exc:
        raise UserError(f"cannot parse CSV file {shown}: {exc}") from None
    if not rows:
        return [], []
    header = [h.strip() for h in rows[0]]
    if "prompt" not in header:
        raise UserError(f"CSV file {shown} has no 'prompt' column (its header: {header[:10]})")
    return header, rows[1:]


def parse_csv_record(row: int, header: list[str], rec: list[str]) -> RawRow:
    joined = ",".join(rec)
    try:
        joined.encode("utf-8")
    except UnicodeEncodeError:
        raw = joined.encode("utf-8", errors="surrogateescape")
        return RawRow(row, raw=raw, error=("invalid_utf8", "the row is not valid UTF-8"))
    if len(rec) != len(header):
        return RawRow(row, raw=joined.encode(), error=("bad_row", f"{len(rec)} fields, the header has {len(header)}"))
    obj = dict(zip(header, rec))
    if obj.get("id") == "":
        obj["id"] = None
    if obj.get("samples") == "":
        obj["samples"] = None
    return _from_mapping(row, obj, joined.encode())


def open_parquet(fs, path: str, shown: str):
    import pyarrow.parquet as pq

    try:
        f = fs.open(path, "rb")
        pf = pq.ParquetFile(f)
    except Exception as exc:
        raise UserError(f"cannot read Parquet file {shown}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    names = pf.schema_arrow.names
    if "prompt" not in names:
        raise UserError(f"Parquet file {shown} has no 'prompt' column (columns: {names[:10]})")
    return pf


def parquet_columns(pf) -> list[str]:
    return [c for c in ("prompt", "id", "samples") if c in pf.schema_arrow.names]


def parquet_rows(pf, shown: str, row_start: int, row_end: int) -> list[RawRow]:
    """Rows [row_start, row_end) of a Parquet file, reading only the row groups that hold them."""
    md = pf.metadata
    cols = parquet_columns(pf)
    groups, first = [], None
    pos = 0
    for g in range(md.num_row_groups):
        n = md.row_group(g).num_rows
        if pos + n > row_start and pos < row_end:
            groups.append(g)
            if first is None:
                first = pos
        pos += n
    if not groups:
        return []
    try:
        table = pf.read_row_groups(groups, columns=cols)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"cannot read Parquet file {shown}: {type(exc).__name__}: {first_line}") from None
    table = table.slice(row_start - first, row_end - row_start)
    out = []
    columns = {c: table.column(c).to_pylist() for c in cols}
    for i in range(table.num_rows):
        obj = {c: columns[c][i] for c in cols}
        if isinstance(obj.get("prompt"), bytes):
            text = _decode(obj["prompt"])
            if text is None:
                out.append(RawRow(row_start + i, raw=obj["prompt"], error=("invalid_utf8", "the prompt is not valid UTF-8")))
                continue
            obj["prompt"] = text
        if isinstance(obj.get("id"), bytes):
            obj["id"] = _decode(obj["id"]) or obj["id"].decode("utf-8", "backslashreplace")
        out.append(_from_mapping(row_start + i, obj, None))
    return out
