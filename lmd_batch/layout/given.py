"""Layouts given up front instead of asked of the LLM (`llm.given_layouts`).

Why: to separate stage-1 from stage-2 errors a benchmark draws from ground-truth ("oracle")
layouts; a user may also have layouts from another system. The file is JSONL, one
{"prompt_id": ..., "layout": ...} per line, where layout is LMD's text format or a JSON layout
(a string or an object): exactly what an LLM could have answered, so it goes through the same
reader, repairs and checks as a completion, and a bad one becomes a reject row like any other.
"""

from __future__ import annotations

import json

from lmd_batch.errors import UserError

GIVEN_MODEL = "given"  # the `model` column of rows whose layout was given


def load_given_layouts(url: str, storage_options: dict | None = None) -> dict[str, str]:
    """{prompt_id: completion text}; one-line errors naming the file and line."""
    import fsspec

    try:
        with fsspec.open(url, "rt", encoding="utf-8", **(storage_options or {})) as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"cannot read llm.given_layouts {url}: {type(exc).__name__}: {exc}") from None
    out: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{url} line {n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt_id"), (str, int)) or "layout" not in row:
            raise UserError(f"{url} line {n}: expected an object with prompt_id and layout")
        layout = row["layout"]
        if not isinstance(layout, (str, dict)):
            raise UserError(f"{url} line {n}: layout must be LMD text or a JSON object")
        pid = str(row["prompt_id"])
        if pid in out:
            raise UserError(f"{url} line {n}: prompt_id {pid!r} appears twice")
        out[pid] = layout if isinstance(layout, str) else json.dumps(layout)
    return out
