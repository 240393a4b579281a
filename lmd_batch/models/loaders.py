"""Opening models from any reference (see registry.resolve_model), with one-line errors.

The tiny built-ins load through exactly these functions, the same code path as production weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmd_batch.errors import UserError
from lmd_batch.models.registry import resolve_model


def _quiet_loading() -> None:
    """Batch workers load models in many processes: no per-component progress bars in the logs."""
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    except ImportError:
        pass


def _open(what: str, ref: str, fn):
    _quiet_loading()
    try:
        return fn()
    except UserError:
        raise
    except (OSError, ValueError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        offline = " (no model hub at run time: HF_HUB_OFFLINE is set; use a local folder or fsspec URL)" \
            if "offline" in str(exc).lower() or "hub" in str(exc).lower() else ""
        raise UserError(f"cannot load {what} {ref!r}: {first}{offline}") from None


def _load_pipeline(cls, what: str, ref: str, storage_options: dict | None, dtype):
    path = resolve_model(ref, storage_options)
    kwargs = dict(safety_checker=None, requires_safety_checker=False)
    if dtype is not None:
        kwargs["dtype"] = dtype
    pipe = _open(what, ref, lambda: cls.from_pretrained(path, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_sd_pipeline(ref: str, storage_options: dict | None = None, dtype=None):
    """A diffusers StableDiffusionPipeline (SD 1.x / 2.x) from a model reference."""
    from diffusers import StableDiffusionPipeline

    return _load_pipeline(StableDiffusionPipeline, "Stable Diffusion model", ref, storage_options, dtype)


def load_gligen_pipeline(ref: str, storage_options: dict | None = None, dtype=None):
    """A diffusers StableDiffusionGLIGENPipeline from a model reference."""
    from diffusers import StableDiffusionGLIGENPipeline

    return _load_pipeline(StableDiffusionGLIGENPipeline, "GLIGEN model", ref, storage_options, dtype)


SAM_REGISTRY_FILES = {"vit_b": "sam_vit_b", "vit_l": "sam_vit_l", "vit_h": "sam_vit_h"}


def load_sam(ref: str, storage_options: dict | None = None):
    """A segment-anything `Sam` from a folder holding our config (lmd_sam.json + sam.pth) or an
    official checkpoint file (sam_vit_b_*.pth, ...). Weights load with weights_only=True."""
    import torch

    from lmd_batch.models.tiny import SAM_CONFIG_FILE, SAM_WEIGHTS_FILE, sam_from_config

    path = Path(resolve_model(ref, storage_options))
    if path.is_dir() and (path / SAM_CONFIG_FILE).exists():
        cfg = json.loads((path / SAM_CONFIG_FILE).read_text())
        model = sam_from_config(cfg)
        state = _open("SAM weights", ref, lambda: torch.load(path / SAM_WEIGHTS_FILE, map_location="cpu", weights_only=True))
        model.load_state_dict(state)
        return model.eval()
    files = [path] if path.is_file() else sorted(path.glob("sam_vit_*.pth")) if path.is_dir() else []
    for f in files:
        for arch, prefix in SAM_REGISTRY_FILES.items():
            if f.name.startswith(prefix):
                from segment_anything import sam_model_registry

                return _open("SAM checkpoint", ref, lambda: sam_model_registry[arch](checkpoint=str(f))).eval()
    raise UserError(f"cannot load SAM {ref!r}: expected a folder with {SAM_CONFIG_FILE} or a sam_vit_[b|l|h]_*.pth file")


def load_owlvit(ref: str, storage_options: dict | None = None):
    """(OwlViTProcessor, OwlViTForObjectDetection) from a model reference."""
    from transformers import OwlViTForObjectDetection, OwlViTProcessor

    path = resolve_model(ref, storage_options)
    proc = _open("OWL-ViT processor", ref, lambda: OwlViTProcessor.from_pretrained(path))
    model = _open("OWL-ViT model", ref, lambda: OwlViTForObjectDetection.from_pretrained(path))
    return proc, model.eval()
