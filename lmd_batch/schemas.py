"""Arrow schemas of every table lmd-batch writes, loaded from the JSON files in `schemas/`.

The JSON files are the contract that users and downstream tools read; this module turns them
into `pyarrow.Schema` objects and checks tables against them before anything is written, so a
writer can never put a table of the wrong shape on storage.

Type strings: string, int32, int64, float32, float64, bool, binary, list<T>,
struct<name: T, ...>, e.g. `list<struct<caption: string, x: int32>>`.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

SCHEMA_VERSION_KEY = b"lmd_batch.schema"


def _schema_dirs() -> list[Path]:
    # A checkout or editable install has schemas/ next to the package; a wheel installs it as data.
    return [Path(__file__).resolve().parent.parent / "schemas", Path(sys.prefix) / "share" / "lmd-batch" / "schemas"]


def parse_type(text: str):
    """Parse a type string such as 'list<struct<caption: string, x: int32>>' into a pyarrow type."""
    import pyarrow as pa

    simple = {
        "string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(),
        "float64": pa.float64(), "bool": pa.bool_(), "binary": pa.binary(), "int8": pa.int8(),
        "uint8": pa.uint8(), "float16": pa.float16(),
    }
    text = text.strip()
    if text in simple:
        return simple[text]
    if text.startswith("list<") and text.endswith(">"):
        return pa.list_(parse_type(text[5:-1]))
    if text.startswith("struct<") and text.endswith(">"):
        fields = []
        for part in _split_top(text[7:-1]):
            name, _, typ = part.partition(":")
            if not typ:
                raise ValueError(f"struct field without a type: {part!r}")
            fields.append(pa.field(name.strip(), parse_type(typ)))
        return pa.struct(fields)
    raise ValueError(f"unknown type {text!r}")


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside <...>."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return parts


@functools.cache
def get_schema(name: str):
    """The pyarrow schema named `name` (file schemas/{name}.json)."""
    import pyarrow as pa

    for d in _schema_dirs():
        f = d / f"{name}.json"
        if f.is_file():
            spec = json.loads(f.read_text())
            fields = [
                pa.field(x["name"], parse_type(x["type"]), nullable=x.get("nullable", True))
                for x in spec["fields"]
            ]
            meta = {SCHEMA_VERSION_KEY: f"{spec['name']}/{spec['version']}".encode()}
            return pa.schema(fields, metadata=meta)
    raise FileNotFoundError(f"no schema named {name!r} in {[str(d) for d in _schema_dirs()]}")


def schema_names() -> list[str]:
    for d in _schema_dirs():
        if d.is_dir():
            return sorted(p.stem for p in d.glob("*.json"))
    return []


def conform(table, name: str):
    """Return `table` cast to schema `name`, or raise ValueError saying what does not fit.

    Columns must match by name and order; types must be castable without loss; non-nullable
    columns must hold no nulls. The schema's metadata (name/version) is attached.
    """
    schema = get_schema(name)
    if table.schema.names != schema.names:
        raise ValueError(f"table for schema {name!r} has columns {table.schema.names}, expected {schema.names}")
    for field in schema:
        col = table.column(field.name)
        if not field.nullable and col.null_count:
            raise ValueError(f"schema {name!r}: column {field.name!r} must not contain nulls")
    try:
        return table.cast(schema, safe=True)
    except Exception as exc:  # pyarrow raises several types here
        raise ValueError(f"table does not fit schema {name!r}: {exc}") from None


def table_from_rows(rows: list[dict], name: str):
    """Build a table of schema `name` from row dicts (the empty table when rows is empty)."""
    import pyarrow as pa

    schema = get_schema(name)
    return conform(pa.Table.from_pylist(rows, schema=schema), name)
