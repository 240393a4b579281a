"""The committed shapes-world weights (`shapes-sd`, `shapes-gligen`) as built-in models.

The trained pipelines are part of the source tree (fp16 safetensors under shapes/weights/, with
the training.json that says which command and seed made them), so the demo and tests draw
recognisable scenes with no download. `models prepare` copies them into the model cache like the
other built-ins are built there; from then on they load through the normal loader.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lmd_batch.errors import UserError

WEIGHTS = Path(__file__).with_name("weights")

#: Components a pipeline shares with another committed one (stored once in the source tree):
#: GLIGEN trains only its UNet, so its text encoder, VAE and tokenizer are shapes-sd's.
SHARED = {"shapes-gligen": ("shapes-sd", ("text_encoder", "vae", "tokenizer"))}


def _install(name: str, out: Path) -> None:
    src = WEIGHTS / name
    if not (src / "model_index.json").is_file():
        raise UserError(f"the {name} weights are not in this installation ({src}); train them with "
                        f"`lmd-batch shapes train` (see README, 'The shapes world')")
    shutil.copytree(src, out, dirs_exist_ok=True)
    base, parts = SHARED.get(name, ("", ()))
    for part in parts:
        shutil.copytree(WEIGHTS / base / part, out / part, dirs_exist_ok=True)


def install_shapes_sd(out: Path, vocab: Path) -> None:
    _install("shapes-sd", out)


def install_shapes_gligen(out: Path, vocab: Path) -> None:
    _install("shapes-gligen", out)


def source_digest(name: str) -> str | None:
    """sha256 over the committed files' names and bytes (None when they are absent)."""
    import hashlib

    src = WEIGHTS / name
    if not src.is_dir():
        return None
    base, parts = SHARED.get(name, ("", ()))
    files = [(f.relative_to(src), f) for f in src.rglob("*") if f.is_file()]
    files += [(f.relative_to(WEIGHTS / base), f) for part in parts for f in (WEIGHTS / base / part).rglob("*")
              if f.is_file()]
    h = hashlib.sha256()
    for rel, f in sorted(files):
        h.update(str(rel).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()
