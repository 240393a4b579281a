"""The ingest checks: each input row is accepted or becomes a reject row with a reason.

Order of the checks (the first that fails names the reason):
invalid_utf8, bad_row (broken JSON, missing prompt, bad CSV record), control_characters (binary
junk), empty, too_long, duplicate_id, bad_samples. Nothing is dropped silently.
"""

from __future__ import annotations

import re

from lmd_batch.prompts.sources import RawRow

PREVIEW_CHARS = 200
MAX_SAMPLES = 1000
# C0 controls except tab/newline/carriage return, DEL, and C1 controls: typical of binary junk.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def preview(row: RawRow) -> tuple[str, int]:
    if row.prompt is not None:
        return row.prompt[:PREVIEW_CHARS], len(row.prompt)
    raw = row.raw or b""
    return raw[: PREVIEW_CHARS * 4].decode("utf-8", "backslashreplace")[:PREVIEW_CHARS], len(raw)


def check_row(row: RawRow, prompt_id: str, *, duplicate: bool, max_chars: int, default_samples: int,
              source: str) -> tuple[dict | None, dict | None]:
    """Return (accepted row, None) or (None, reject row), shaped for the ingest schemas."""

    def reject(reason: str, detail: str):
        text, chars = preview(row)
        return None, dict(prompt_id=prompt_id, source=source, row=row.row, reason=reason, detail=detail,
                          preview=text, chars=chars)

    if row.error:
        return reject(*row.error)
    prompt = row.prompt or ""
    if _CONTROL.search(prompt):
        return reject("control_characters", "the prompt holds control characters (binary data?)")
    prompt = prompt.strip()
    if not prompt:
        return reject("empty", "the prompt is empty")
    if len(prompt) > max_chars:
        return reject("too_long", f"{len(prompt)} characters, over the limit of {max_chars} (input.max_prompt_chars)")
    if duplicate:
        return reject("duplicate_id", f"id {prompt_id!r} already appears earlier in the input")
    samples = row.samples
    if samples is None:
        samples = default_samples
    else:
        try:
            if isinstance(samples, bool) or float(samples) != int(float(samples)):
                raise ValueError
            samples = int(float(samples))
        except (TypeError, ValueError, OverflowError):
            return reject("bad_samples", f"'samples' must be a whole number, not {row.samples!r}")
        if not 1 <= samples <= MAX_SAMPLES:
            return reject("bad_samples", f"'samples' must be between 1 and {MAX_SAMPLES}, not {samples}")
    return dict(prompt_id=prompt_id, prompt=prompt, samples=samples, source=source, row=row.row), None
