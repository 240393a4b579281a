"""Helpers shared by the box-latent and image stages: layout rows, model identity, mask RLE, names."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path


def row_layout(row: dict):
    """A `layouts` row as a `Layout` (boxes on the 512 canvas)."""
    from lmd_batch.layout.lmd_text import Box, Layout

    return Layout([Box(b["caption"], b["x"], b["y"], b["w"], b["h"]) for b in row["boxes"]], row["background"],
                  row["negative"])


def model_identity(ref: str) -> str:
    """What names a model's weights in cache keys: the reference plus, for local folders (built-ins
    included), a digest of its config files and weight file sizes, so a rebuilt model is new."""
    from lmd_batch.models.registry import BUILTINS, BUILDER_VERSION, resolve_model

    path = Path(resolve_model(ref))
    if not path.exists():
        return ref  # a Hugging Face id: the id (pin a revision by naming a local snapshot)
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and (f.suffix == ".json" or f.suffix in (".safetensors", ".bin", ".pth")):
            rel = str(f.relative_to(path))
            if rel.startswith("."):
                continue
            h.update(rel.encode())
            h.update(f.read_bytes() if f.suffix == ".json" else str(f.stat().st_size).encode())
    extra = f"builtin-v{BUILDER_VERSION}:" if ref in BUILTINS else ""
    return f"{ref}@{extra}{h.hexdigest()[:16]}"


def rle_counts(mask) -> list[int]:
    """COCO uncompressed run lengths of a {0,1} array: column-major, starting with a run of zeros."""
    import numpy as np

    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    if flat.size == 0:
        return [0]
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    return ([0] if flat[0] else []) + runs


def mask_rle(mask) -> dict:
    """COCO-style uncompressed RLE (column-major, counts start with zeros) of a {0,1} mask."""
    import numpy as np

    m = np.asarray(mask, dtype=np.uint8)
    return {"height": int(m.shape[0]), "width": int(m.shape[1]), "counts": rle_counts(m)}


def rle_decode(rle: dict):
    import numpy as np

    flat = np.zeros(rle["height"] * rle["width"], dtype=np.uint8)
    pos, value = 0, 0
    for c in rle["counts"]:
        flat[pos:pos + c] = value
        pos += c
        value = 1 - value
    return flat.reshape((rle["height"], rle["width"]), order="F")


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def safe_name(layout_id: str) -> str:
    """A file name for a layout id (ids are user data): readable part + short hash, never colliding."""
    readable = _UNSAFE.sub("_", layout_id)[:60]
    return f"{readable}-{hashlib.sha256(layout_id.encode('utf-8')).hexdigest()[:8]}"


def png_bytes(image) -> bytes:
    """PNG bytes of a uint8 image, deterministic (no timestamps or text chunks)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def jsonable(obj) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
