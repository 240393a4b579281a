"""A persistent cache of LLM answers inside the run folder: a rerun asks nothing already answered.

One small JSON file per request at `llm_cache/<k[:2]>/<k>.json`, written (atomically) as soon as the
answer arrives, so a run killed in the middle of a shard keeps every answer it paid for. The key
is the sha256 of everything that determines the answer: model, template id and its text's
fingerprint, prompt (or conversation), sample index and its seed, and the sampling parameters.
Errors are never cached: a rerun asks again.
"""

from __future__ import annotations

import hashlib
import json

CACHE_DIR = "llm_cache"


def request_key(fields: dict) -> str:
    blob = json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class RequestCache:
    """get/put completions by key in a run folder `Location` (any fsspec URL)."""

    def __init__(self, loc):
        self.loc = loc

    @staticmethod
    def path(key: str) -> str:
        return f"{CACHE_DIR}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict | None:
        raw = self.loc.read_bytes_or_none(self.path(key))
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return None  # a damaged entry is a miss, the answer is asked again
        return record if isinstance(record, dict) and record.get("key") == key and "text" in record else None

    def put(self, key: str, text: str, finish_reason: str | None, usage: dict, fields: dict) -> None:
        record = dict(key=key, text=text, finish_reason=finish_reason, usage=usage, request=fields)
        self.loc.write_bytes(self.path(key), json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8"))
