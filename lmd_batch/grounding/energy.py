"""LMD's cross-attention box energy (LMD-REFERENCE.md 2.2) and attention transfer (2.6).

Box energy, per layer, per phrase i with box mask b (union of the phrase's boxes at the layer's
resolution), per token v of the phrase, with A = the conditional softmax (heads, h*w, 77):

    k_fg = max(1, floor(fg_top_p * |b|)),   k_bg = max(1, floor(bg_top_p * |1 - b|))
    fg   = sum_heads (1 - mean(topk_{k_fg}(A[:, :, v] * b)))
    bg   = sum_heads mean(topk_{k_bg}(A[:, :, v] * (1 - b)))
    E_iv = fg_weight * fg + bg_weight * bg

E_i is the mean over the phrase's tokens; the sample's energy is the sum over phrases and layers
divided by (phrases * layers). Defaults: top-p 0.2 / 0.2, weights 1 / 4 (the paper's w = 4).
Heads are summed, not averaged, as in the reference: `loss_threshold` 5.0 assumes SD1.x's 8 heads.

Token span (the job's `energy_tokens: prompt`, not the reference's default): a phrase with a
`span` [s, e) has the attention renormalised over the prompt's own word tokens before the
energy, A' = A[..., s:e] / sum(A[..., s:e]), as Attend-and-Excite does. Why: a model may park
almost all of its text attention on padding (the shapes model puts ~95% there at its 8x8 and
16x16 maps), so A of an object's tokens is ~0.05 even on the object; the fg term then sits at
its maximum, its gradient is tiny and the bg term's push mostly erases objects. Renormalised,
the same maps give values near 1 on the object and guidance moves it (measured: per-box objects
inside their run box 33% -> 67%).

Attention transfer (overall generation only), per box j of phrase i, per layer, word token only:
mask the composed map and the per-box run's reference map by box j, normalise each to sum 1
inside the box (eps 1e-5), L1 over pixels, mean over heads; divided by phrase i's number of boxes
and by (phrases * layers), weighted by `ref_ca_loss_weight` (lambda = 2) and added to E.

Batches: every function takes maps with a leading batch dimension and returns one energy per
sample, (B,). Samples are independent, so `energy.sum().backward()` gives each sample's latent
its own gradient: one backward serves a whole batch of boxes.

Maps are what `attention.AttentionStore` records: a sequence over layers of (B, heads, h, w, T)
tensors. Token indices index T (the prompt positions when all 77 columns were captured).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from lmd_batch.grounding.boxes import Box, box_mask

FG_TOP_P = 0.2
BG_TOP_P = 0.2
FG_WEIGHT = 1.0
BG_WEIGHT = 4.0
TRANSFER_EPS = 1e-5


@dataclass(frozen=True)
class PhraseTarget:
    """One phrase (object name) of one sample: what its tokens should attend to.

    tokens:     the phrase's token columns (all of them are guided);
    boxes:      its boxes on the layout canvas, [x, y, w, h]; the energy uses their union;
    word_token: the column of the last sub-token of its last word (attention transfer, masks);
    span:       [start, end) token columns to renormalise the attention over before the energy
                (the prompt's word tokens, `tokens.word_span`), or None: LMD's raw softmax.
    """

    tokens: tuple[int, ...]
    boxes: tuple[tuple[float, float, float, float], ...]
    word_token: int | None = None
    span: tuple[int, int] | None = None


@dataclass(frozen=True)
class TransferTarget:
    """One box of one sample for attention transfer.

    phrase:    index into the sample's PhraseTarget list (its word token is compared);
    box:       the box on the layout canvas, [x, y, w, h];
    reference: per energy layer, in the same order as the maps, the per-box run's word-token
               attention at the same denoising step, (heads, h, w), already shifted into `box`.
    """

    phrase: int
    box: tuple[float, float, float, float]
    reference: tuple[torch.Tensor, ...] = field(compare=False)


def _topk_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.topk(k, dim=-1).values.mean(dim=-1)


def renormalised(attn: torch.Tensor, span: tuple[int, int], eps: float = 1e-8) -> torch.Tensor:
    """The attention (..., T) restricted to token columns [start, end) and renormalised to sum 1."""
    a = attn[..., span[0]:span[1]]
    return a / (a.sum(dim=-1, keepdim=True) + eps)


def phrase_energy(attn: torch.Tensor, tokens: Sequence[int], mask: torch.Tensor, *, fg_top_p: float = FG_TOP_P,
                  bg_top_p: float = BG_TOP_P, fg_weight: float = FG_WEIGHT, bg_weight: float = BG_WEIGHT,
                  span: tuple[int, int] | None = None) -> torch.Tensor:
    """E_i of one phrase on one layer of one sample: attn (heads, h, w, T), mask (h, w) -> scalar.
    With `span`, the attention is first renormalised over those token columns (module doc)."""
    if span is not None:
        if not all(span[0] <= t < span[1] for t in tokens):
            raise ValueError(f"phrase tokens {tuple(tokens)} are not all inside the span {tuple(span)}")
        attn = renormalised(attn, span)
        tokens = [t - span[0] for t in tokens]
    a = attn[..., list(tokens)].flatten(1, 2).permute(0, 2, 1)  # (heads, n_tokens, h*w)
    inside = int(mask.sum().item())  # masks are built on the CPU: no device sync here
    b = mask.reshape(-1).to(a.device, a.dtype)
    k_fg = max(1, int(fg_top_p * inside))
    k_bg = max(1, int(bg_top_p * (b.numel() - inside)))
    fg = (1 - _topk_mean(a * b, k_fg)).sum(dim=0)  # sum over heads -> (n_tokens,)
    bg = _topk_mean(a * (1 - b), k_bg).sum(dim=0)
    return (fg_weight * fg + bg_weight * bg).mean()


def _check(maps: Sequence[torch.Tensor], n: int) -> None:
    if not maps:
        raise ValueError("no attention maps: capture at least one layer")
    for m in maps:
        if m.ndim != 5 or m.shape[0] != n:
            raise ValueError(f"maps must be (B={n}, heads, h, w, T) per layer; got {tuple(m.shape)}")


def box_energy(maps: Sequence[torch.Tensor], phrases: Sequence[Sequence[PhraseTarget]], *, canvas=512,
               fg_top_p: float = FG_TOP_P, bg_top_p: float = BG_TOP_P, fg_weight: float = FG_WEIGHT,
               bg_weight: float = BG_WEIGHT) -> torch.Tensor:
    """The box energy of every sample, (B,): `phrases[b]` lists sample b's phrases.

    Phrases with no tokens (not found in the prompt) are skipped and not counted; a sample with
    no phrase left has energy 0 (and no gradient).
    """
    _check(maps, len(phrases))
    out = []
    for b, sample in enumerate(phrases):
        live = [p for p in sample if p.tokens]
        total = maps[0].new_zeros(())
        for layer in maps:
            h, w = layer.shape[2:4]
            for p in live:
                mask = box_mask(p.boxes, h, w, canvas)
                total = total + phrase_energy(layer[b], p.tokens, mask, fg_top_p=fg_top_p, bg_top_p=bg_top_p,
                                              fg_weight=fg_weight, bg_weight=bg_weight, span=p.span)
        out.append(total / max(1, len(live) * len(maps)))
    return torch.stack(out)


def transfer_distance(attn: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor,
                      eps: float = TRANSFER_EPS) -> torch.Tensor:
    """Mean over heads of the L1 distance of two (heads, h, w) maps, each normalised inside `mask`."""
    m = mask.to(attn.dtype)
    a = attn * m
    r = reference.to(attn.device, attn.dtype) * m
    a = a / (a.sum(dim=(-2, -1), keepdim=True) + eps)
    r = r / (r.sum(dim=(-2, -1), keepdim=True) + eps)
    return (a - r).abs().sum(dim=(-2, -1)).mean()


def transfer_energy(maps: Sequence[torch.Tensor], phrases: Sequence[Sequence[PhraseTarget]],
                    transfers: Sequence[Sequence[TransferTarget]], *, canvas=512) -> torch.Tensor:
    """The attention-transfer term of every sample, (B,), before the lambda weight."""
    _check(maps, len(phrases))
    out = []
    for b, (sample, refs) in enumerate(zip(phrases, transfers)):
        live = [p for p in sample if p.tokens]
        total = maps[0].new_zeros(())
        for t in refs:
            p = sample[t.phrase]
            if p.word_token is None:
                continue
            if len(t.reference) != len(maps):
                raise ValueError(f"a transfer reference has {len(t.reference)} layers, the maps {len(maps)}")
            for layer, ref in zip(maps, t.reference):
                h, w = layer.shape[2:4]
                mask = box_mask(t.box, h, w, canvas, device=layer.device, dtype=layer.dtype)
                d = transfer_distance(layer[b, ..., p.word_token], ref, mask)
                total = total + d / max(1, len(p.boxes))
        out.append(total / max(1, len(live) * len(maps)))
    return torch.stack(out)


def lmd_energy(maps: Sequence[torch.Tensor], phrases: Sequence[Sequence[PhraseTarget]],
               transfers: Sequence[Sequence[TransferTarget]] | None = None, *, ref_ca_loss_weight: float = 2.0,
               canvas=512, **box_kwargs) -> torch.Tensor:
    """E = box energy + ref_ca_loss_weight * attention transfer, per sample (B,).

    Without `transfers` (per-box runs) this is the box energy alone. `box_kwargs`: fg_top_p,
    bg_top_p, fg_weight, bg_weight.
    """
    e = box_energy(maps, phrases, canvas=canvas, **box_kwargs)
    if transfers is not None and any(len(t) for t in transfers) and ref_ca_loss_weight:
        e = e + ref_ca_loss_weight * transfer_energy(maps, phrases, transfers, canvas=canvas)
    return e


def in_box_attention_ratio(maps: torch.Tensor | Sequence[torch.Tensor], token_indices: Sequence[int], box: Box,
                           size=512) -> float:
    """Share of the tokens' attention mass that falls inside `box`, in [0, 1].

    maps: one tensor or a sequence (layers) of tensors shaped (..., h, w, T): any leading dims
    (batch, heads) are summed. `box` is [x, y, w, h] on a canvas of `size` (512, or (W, H)),
    scaled to each map's resolution. Masses are summed over tokens and layers before dividing.
    A diagnostic for tests and reports ("is the object where the layout put it?").
    """
    if isinstance(maps, torch.Tensor):
        maps = [maps]
    inside = total = 0.0
    for m in maps:
        h, w = m.shape[-3:-1]
        mass = m[..., list(token_indices)].detach().float().sum(dim=-1)
        mass = mass.reshape(-1, h, w).sum(dim=0)
        mask = box_mask(box, h, w, size, device=mass.device)
        inside += float((mass * mask).sum())
        total += float(mass.sum())
    return inside / total if total > 0 else 0.0
