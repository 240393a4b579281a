"""Resumable shapes training: the whole training state every N steps, without pickle.

Why: the default training is ~1 hour on 2 AVX-512 cores and ~3.5 hours on AVX2-only ones, longer
than many sessions, preemptible nodes or scheduled jobs get. Rerunning the same `shapes train`
command resumes from the last checkpoint and gives the same bytes as an uninterrupted run: the
checkpoint holds every tensor the remaining steps read (model and EMA weights, AdamW moments and
step counts, the CPU generator's state) as safetensors, plus JSON for the step, phase and metrics.
Nothing is pickled (torch.save would), so a checkpoint from elsewhere cannot run code.

Layout: OUT/.checkpoint/{state.json, tensors.safetensors}, replaced atomically (written beside,
then renamed), removed once the pipeline is saved.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from lmd_batch.errors import UserError

FOLDER = ".checkpoint"
#: Config fields that do not change a single weight (tests/test_shapes.py checks `workers`), so a
#: run may resume with other values for them.
FREE_FIELDS = ("workers", "checkpoint_every")


def _comparable(cfg) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in FREE_FIELDS}


def save(out: Path, cfg, phase: str, step: int, modules: dict, opts: dict, gen, metrics: dict,
         extra: dict | None = None) -> None:
    """Write the state after `step` steps of `phase` ('vae' or 'unet'); `extra`: more named tensors."""
    import torch
    from safetensors.torch import save_file

    tensors = {"gen": gen.get_state()}
    tensors |= {f"extra.{k}": v.detach().cpu().contiguous() for k, v in (extra or {}).items()}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"model.{name}.{key}"] = value.detach().cpu().contiguous()
    for name, opt in opts.items():
        for idx, state in opt.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"opt.{name}.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    final = out / FOLDER
    tmp = out / f"{FOLDER}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_unshared(tensors), str(tmp / "tensors.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"config": _comparable(cfg), "phase": phase, "step": step,
                                                "metrics": metrics}, indent=1))
    old = out / f"{FOLDER}.old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _unshared(tensors: dict) -> dict:
    """Copy any tensor whose memory another entry already uses: safetensors refuses aliased tensors
    (the UNet phase's two loss sums are one zeros tensor right after each history row, and a
    model with tied weights would be the same)."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        ptr = value.untyped_storage().data_ptr()
        out[key] = value.clone() if ptr in seen and value.numel() else value
        seen.add(ptr)
    return out


def load(out: Path, cfg) -> dict | None:
    """The saved state (phase, step, metrics, tensors) of a run of this config in `out`, or None."""
    from safetensors.torch import load_file

    folder = out / FOLDER
    if not (folder / "state.json").is_file():
        return None
    try:
        state = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "tensors.safetensors"))
    except (OSError, ValueError) as exc:
        raise UserError(f"the training checkpoint in {folder} is unreadable ({exc}); delete that folder to "
                        f"start over") from None
    if state.get("config") != _comparable(cfg):
        changed = sorted(k for k, v in _comparable(cfg).items() if state.get("config", {}).get(k) != v)
        raise UserError(f"{out} holds a checkpoint of a training run with other settings ({', '.join(changed)}); "
                        f"rerun with the same options to resume, or delete {folder} to start over")
    state["tensors"] = tensors
    return state


def restore(state: dict, modules: dict, opts: dict, gen) -> None:
    """Load the saved weights, optimiser moments and generator state into the live objects."""
    tensors = state["tensors"]
    gen.set_state(tensors["gen"])
    for name, module in modules.items():
        prefix = f"model.{name}."
        own = module.state_dict()
        module.load_state_dict({k[len(prefix):]: v.to(own[k[len(prefix):]].device) for k, v in tensors.items()
                                if k.startswith(prefix)})
    for name, opt in opts.items():
        prefix = f"opt.{name}."
        saved: dict = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                idx, field = key[len(prefix):].split(".", 1)
                saved.setdefault(int(idx), {})[field] = value
        state_dict = opt.state_dict()
        state_dict["state"] = saved  # load_state_dict puts each tensor where its parameter is
        opt.load_state_dict(state_dict)


def clear(out: Path) -> None:
    shutil.rmtree(out / FOLDER, ignore_errors=True)
