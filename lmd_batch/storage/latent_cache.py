"""The content-addressed box-latent cache: one safetensors file per per-box run, on any fsspec URL.

The key is the sha256 of everything that determines a per-box trajectory (model identity,
method, scheduler and step count, size, prompts, boxes, seeds, guidance and mask settings); see
`box_key`. Composition settings (frozen-step ratio, transfer weight, guidance steps of the
overall pass) are *not* in it, and whole trajectories are stored, so a new run that changes only
those reuses every box. Shared by runs: by default `cache/` beside the run folder.

Safetensors, not pickle: tensors `latents`, `mask`, `attn/<layer>`, and the small JSON fields
(caption, box, shift, info) in the file's string metadata. Written whole and atomically (local:
temp + rename; object stores: one PUT), so a reader never sees half an entry.
"""

from __future__ import annotations

import hashlib
import json

KEY_VERSION = 1


def cache_url(job) -> str:
    """`run.cache_url`, or `cache` beside the run folder."""
    if job.run.cache_url:
        return job.run.cache_url
    url = job.run.url.rstrip("/")
    parent = url.rsplit("/", 1)[0] if "/" in url.split("://", 1)[-1] else url
    return f"{parent}/cache"


def box_key(fields: dict) -> str:
    blob = json.dumps(dict(fields, key_version=KEY_VERSION), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class LatentCache:
    def __init__(self, url: str, storage_options: dict | None = None):
        from lmd_batch.storage.location import Location

        self.loc = Location(url, storage_options or {})

    @staticmethod
    def path(key: str) -> str:
        return f"boxes/{key[:2]}/{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.loc.exists(self.path(key))

    def put(self, key: str, box) -> None:
        from safetensors.torch import save

        tensors = {"latents": box.latents.contiguous(), "mask": box.mask.contiguous()}
        for name, t in box.attn.items():
            tensors[f"attn/{name}"] = t.contiguous()
        meta = {"key": key, "index": str(box.index), "caption": box.caption, "box": json.dumps(list(box.box)),
                "shift": json.dumps(list(box.shift)), "info": json.dumps(box.info, sort_keys=True)}
        self.loc.write_bytes(self.path(key), save(tensors, metadata=meta))

    def get(self, key: str):
        """The cached `BoxLatents`, or None when missing or unreadable (then it is regenerated)."""
        from safetensors.torch import load

        from lmd_batch.grounding.types import BoxLatents

        raw = self.loc.read_bytes_or_none(self.path(key))
        if raw is None:
            return None
        try:
            tensors = load(raw)
            header_len = int.from_bytes(raw[:8], "little")
            meta = json.loads(raw[8:8 + header_len]).get("__metadata__", {})
            if meta.get("key") != key:
                return None
            attn = {k[len("attn/"):]: v for k, v in tensors.items() if k.startswith("attn/")}
            return BoxLatents(index=int(meta["index"]), caption=meta["caption"], box=tuple(json.loads(meta["box"])),
                              latents=tensors["latents"], mask=tensors["mask"], attn=attn, image=None,
                              shift=tuple(json.loads(meta["shift"])), info=json.loads(meta["info"]))
        except Exception:
            return None
