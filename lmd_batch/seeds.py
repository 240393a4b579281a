"""Seeds derived from names, not from a running RNG, so that any shard on any worker, in any order,
after any number of resumes, draws the same numbers: seed = hash(job seed, prompt id, sample, ...)."""

from __future__ import annotations

import hashlib


def derive_seed(job_seed: int, *parts: object, bits: int = 31) -> int:
    """A stable non-negative integer below 2**bits from the job seed and a path of names/indices.

    31 bits by default: OpenAI-compatible servers and torch generators both accept it.
    """
    text = "\x1f".join([str(int(job_seed))] + [str(p) for p in parts])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % (1 << bits)
