"""Capturing cross-attention probabilities through diffusers attention processors.

LMD reads the softmax of the text cross-attention at a few layers (LMD-REFERENCE.md 2.2, 2.4):
the energy is computed on it, per-box runs save the word token's map for SAM and attention
transfer. diffusers' default processor (SDPA) never materialises those probabilities, so on the
selected layers we install a `CaptureProcessor` that

1. calls the layer's own processor unchanged to produce the output, so the UNet's output is
   bit-identical with and without capture, and every other layer keeps SDPA; then
2. recomputes softmax(q k^T * scale) in fp32 (fp64 for an fp64 model) for the conditional part
   of the batch only and records it. The extra cost is one query/key projection on the selected
   layers (77 keys: small next to a UNet forward), and the output keeps its fast kernel.

When autograd is on (guidance: a separate conditional-only forward with grad), the recorded maps
are part of the graph, so d(energy)/d(latents) flows through them.

Batch layout, made explicit because pipelines and guidance differ:
- "cfg":  the batch is [uncond..., cond...] (diffusers' CFG order); only the second half is kept;
- "cond": the whole batch is conditional (guidance forwards); everything is kept.

Maps are stored as (B_cond, heads, h, w, T) fp32 (fp64) tensors: spatial dims explicit (the
UNet's forward pre-hook records the latent size, the layer's downscale gives h and w), T = 77,
or the selected token columns when `tokens` is set (per-box runs keep only the word token).
"""

from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from typing import Iterable, Literal

import torch

from lmd_batch.grounding.layers import (  # re-exported: the layer helpers belong to this API
    CrossAttentionLayer, cross_attention_layers, layers_by_block, map_resolution, resolve_layers, select_layers)

__all__ = ["AttentionStore", "CaptureHandle", "CaptureProcessor", "StopUNetForward", "install_attention_capture",
           "run_unet_capturing", "CrossAttentionLayer", "cross_attention_layers", "layers_by_block", "map_resolution",
           "resolve_layers", "select_layers"]


class StopUNetForward(Exception):
    """Raised inside the UNet once every layer in `AttentionStore.stop_after` is recorded.

    A guidance forward needs the attention of mid/up_blocks[1] only, not the UNet's output; the
    rest of the up path (the high-resolution, most expensive part) is skipped, forward and
    backward. Catch it with `run_unet_capturing`.
    """


class AttentionStore:
    """What the capture processors recorded: `records[call][layer_name] -> Tensor`.

    One record (a dict keyed by layer name) per UNet forward call, opened by the UNet's forward
    pre-hook. Settings (plain attributes, change them between calls or use `scoped`):

    batch_layout: "cfg" (keep the second half of the batch) or "cond" (keep all of it);
    tokens:       None (all 77 columns), a LongTensor (n,) for every sample, or (B_cond, n)
                  per sample: the kept columns, in that order;
    max_records:  keep at most this many records (oldest dropped); None keeps every call;
    enabled:      False records nothing (the processors then cost nothing extra);
    detach:       store detached copies even when autograd is on (for saving trajectories);
    device:       move stored maps there (e.g. "cpu" to keep per-step maps off the GPU); only
                  applied to detached maps, a map in the autograd graph stays where it is;
    stop_after:   layer names; once all are recorded in the current call, raise StopUNetForward.
    """

    def __init__(self, batch_layout: Literal["cfg", "cond"] = "cfg", tokens: torch.Tensor | None = None,
                 max_records: int | None = None, enabled: bool = True, detach: bool = False, device=None,
                 stop_after: Iterable[str] | None = None):
        self.batch_layout = batch_layout
        self.tokens = tokens
        self.max_records = max_records
        self.enabled = enabled
        self.detach = detach
        self.device = device
        self.stop_after = frozenset(stop_after) if stop_after else None
        self.records: list[dict[str, torch.Tensor]] = []
        self.latent_hw: tuple[int, int] | None = None

    # ---- reading ----------------------------------------------------------------------------
    def last(self) -> dict[str, torch.Tensor]:
        """The maps of the latest UNet call ({} if nothing was recorded)."""
        return self.records[-1] if self.records else {}

    def maps(self, name: str) -> list[torch.Tensor]:
        """One layer's map from every stored call, oldest first (calls without it are skipped)."""
        return [r[name] for r in self.records if name in r]

    def clear(self) -> None:
        self.records.clear()

    # ---- settings -----------------------------------------------------------------------------
    @contextmanager
    def scoped(self, **settings):
        """Temporarily change settings, with fresh records; restores both on exit.

        Used by guidance: its conditional-only forwards must not leave records in the store a
        CFG generation is filling, nor change its settings.
        """
        names = list(settings) + ["records", "latent_hw"]
        saved = {k: getattr(self, k) for k in names}
        for k, v in settings.items():
            if not hasattr(self, k):
                raise AttributeError(f"AttentionStore has no setting {k!r}")
            setattr(self, k, frozenset(v) if k == "stop_after" and v else v)
        self.records = []
        try:
            yield self
        finally:
            for k, v in saved.items():
                setattr(self, k, v)

    # ---- used by the hook and the processors ------------------------------------------------------
    def cond_slice(self, batch: int) -> slice:
        if self.batch_layout == "cfg":
            if batch % 2:
                raise ValueError(f"batch_layout 'cfg' needs an even batch ([uncond, cond]); got {batch}")
            return slice(batch // 2, batch)
        if self.batch_layout == "cond":
            return slice(0, batch)
        raise ValueError(f"unknown batch_layout {self.batch_layout!r} (use 'cfg' or 'cond')")

    def begin_call(self, latent_hw: tuple[int, int] | None) -> None:
        self.latent_hw = latent_hw
        if self.enabled:
            self.records.append({})
            if self.max_records is not None and len(self.records) > self.max_records:
                del self.records[: len(self.records) - self.max_records]

    def record(self, name: str, probs: torch.Tensor) -> None:
        if not self.records:
            self.records.append({})
        if self.detach or not probs.requires_grad:
            probs = probs.detach()
            if self.device is not None:
                probs = probs.to(self.device)
        current = self.records[-1]
        current[name] = probs
        if self.stop_after is not None and self.stop_after <= current.keys():
            raise StopUNetForward()


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


class CaptureProcessor:
    """An attention processor that delegates to `inner` and records the cond-part probabilities."""

    def __init__(self, name: str, inner, store: AttentionStore, downscale: int):
        self.name = name
        self.inner = inner
        self.store = store
        self.downscale = downscale

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        call = dict(encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask)
        if temb is not None:
            call["temb"] = temb
        call.update({k: v for k, v in kwargs.items() if _accepts(self.inner.__call__, k)})
        out = self.inner(attn, hidden_states, **call)
        if self.store.enabled and encoder_hidden_states is not None:
            self.store.record(self.name, self.probabilities(attn, hidden_states, encoder_hidden_states, attention_mask))
        return out

    def probabilities(self, attn, hidden_states, encoder_hidden_states, attention_mask=None) -> torch.Tensor:
        """softmax(q k^T * scale) of the conditional samples, at least fp32, as (B_cond, heads, h, w, T')."""
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise NotImplementedError(f"{self.name}: capture supports transformer-block cross-attention only")
        batch = hidden_states.shape[0]
        part = self.store.cond_slice(batch)
        h = hidden_states[part]
        ctx = encoder_hidden_states[part]
        if attn.norm_cross:
            ctx = attn.norm_encoder_hidden_states(ctx)
        q, k = attn.to_q(h), attn.to_k(ctx)
        b, n, inner = q.shape
        heads = attn.heads
        q = q.view(b, n, heads, inner // heads).transpose(1, 2)
        k = k.view(b, k.shape[1], heads, inner // heads).transpose(1, 2)
        if getattr(attn, "norm_q", None) is not None:
            q = attn.norm_q(q)
        if getattr(attn, "norm_k", None) is not None:
            k = attn.norm_k(k)
        dtype = torch.promote_types(q.dtype, torch.float32)  # fp16/bf16 models: maps in fp32
        scores = torch.matmul(q.to(dtype), k.to(dtype).transpose(-1, -2)) * attn.scale
        if attention_mask is not None:
            t = ctx.shape[1]
            mask = attn.prepare_attention_mask(attention_mask, t, batch)  # (batch*heads, 1|n, t)
            scores = scores + mask.view(batch, heads, -1, t)[part].to(dtype)
        probs = scores.softmax(dim=-1)  # (b, heads, n, T)
        tokens = self.store.tokens
        if tokens is not None:
            tokens = torch.as_tensor(tokens, device=probs.device, dtype=torch.long)
            if tokens.ndim == 1:
                probs = probs.index_select(-1, tokens)
            else:
                idx = tokens.view(b, 1, 1, -1).expand(b, heads, n, tokens.shape[-1])
                probs = torch.gather(probs, -1, idx)
        return probs.reshape(b, heads, *self._spatial(n), probs.shape[-1])

    def _spatial(self, n: int) -> tuple[int, int]:
        if self.store.latent_hw is not None:
            hw = map_resolution(self.store.latent_hw, self.downscale)
            if hw[0] * hw[1] == n:
                return hw
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{self.name}: cannot tell the map shape of {n} pixels (no latent size recorded)")
        return side, side


class CaptureHandle:
    """Installed capture: `.store`, `.layers` (names), `.restore()`; also a context manager."""

    def __init__(self, unet, store: AttentionStore, originals: dict, hook):
        self.unet = unet
        self.store = store
        self.originals = originals
        self.layers = list(originals)
        self._hook = hook

    def restore(self) -> None:
        """Put the original processors back and remove the forward hook (idempotent)."""
        for name, proc in self.originals.items():
            self.unet.get_submodule(name).set_processor(proc)
        self.originals = {}
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()


def install_attention_capture(unet, layer_names: Iterable[str] | str, store: AttentionStore | None = None
                              ) -> CaptureHandle:
    """Record the cross-attention of `layer_names` (names, positions or a preset; see
    `select_layers`) into `store` (a new "cfg"-layout store by default). Other layers keep their
    processors. Returns a handle; `handle.restore()` or `with install_attention_capture(...)`
    undoes it.

    Install once per UNet, on the union of the layers a run needs (e.g. "per_box" covers the mask
    and the guidance layers), and share the store: guidance reads its layers from the same store
    in a `scoped` call. A layer that is already capturing is refused.
    """
    store = store if store is not None else AttentionStore()
    layers = resolve_layers(unet, layer_names)
    busy = [l.name for l in layers if isinstance(unet.get_submodule(l.name).processor, CaptureProcessor)]
    if busy:
        raise ValueError(f"attention capture is already installed on {busy}; restore that handle first")
    originals = {}
    for layer in layers:
        module = unet.get_submodule(layer.name)
        originals[layer.name] = module.processor
        module.set_processor(CaptureProcessor(layer.name, module.processor, store, layer.downscale))

    def pre_hook(module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        store.begin_call(tuple(sample.shape[-2:]) if sample is not None else None)

    hook = unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return CaptureHandle(unet, store, originals, hook)


def run_unet_capturing(unet, store: AttentionStore, *args, **kwargs):
    """Call `unet(*args, **kwargs)`; if the store stopped it early (stop_after) return None."""
    try:
        return unet(*args, **kwargs)
    except StopUNetForward:
        return None
