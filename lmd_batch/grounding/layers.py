"""The cross-attention layers of a diffusers UNet, and which of them LMD reads.

LMD names layers by position, (block, block index, attention index, transformer index)
(LMD-REFERENCE.md 2.2, 2.4), and on SD1.x those positions mean:

- guidance (and attention transfer): the mid block and the three attentions of `up_blocks[1]`,
  `mid_block.attentions.0...attn2` (8x8 at 512 px) and `up_blocks.1.attentions.{0,1,2}...attn2`
  (16x16): the two coarsest levels, where a box is a few cells and the layout is decided;
- the token map for SAM / attention masks: `down_blocks.2.attentions.1...attn2` (16x16), the last
  attention of the deepest down block that has cross-attention.

Other UNets (the tiny test UNet has one attention per down block and two per up block; SD2.x
has the same topology as SD1.x) do not have every one of those exact names, so the presets are
defined by *role*: "the mid block", "the first (coarsest) up block with cross-attention", "the
last attention of the deepest down block with cross-attention". On SD1.x/SD2.x they resolve to
exactly the reference's layers; on smaller UNets to their structural counterparts.

Resolutions come from the UNet's structure (which blocks down/upsample), not from a table, so a
layer's map size is known for any latent size: ceil-halving once per downsampler above it, like
the stride-2 convolutions do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

_NAME = re.compile(r"^(?:(down|up)_blocks\.(\d+)|mid_block)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.attn2$")

PRESETS = ("guidance", "transfer", "mask", "per_box")


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One cross-attention (`attn2`) layer of a UNet.

    name:       diffusers module path, e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
                (the attention processor's key is name + ".processor");
    block:      "down", "mid" or "up";
    position:   LMD's tuple (block, block index, attention index, transformer index);
    downscale:  the latent side over this layer's side (1, 2, 4, 8 on SD1.x);
    heads:      attention heads (the energy sums over them).
    """

    name: str
    block: str
    block_index: int
    attention_index: int
    transformer_index: int
    downscale: int
    heads: int

    @property
    def position(self) -> tuple[str, int, int, int]:
        return (self.block, self.block_index, self.attention_index, self.transformer_index)

    def resolution(self, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of this layer's attention map for a latent of (H, W)."""
        return map_resolution(latent_hw, self.downscale)


def map_resolution(latent_hw: tuple[int, int], downscale: int) -> tuple[int, int]:
    """Ceil-halve (H, W) log2(downscale) times, as diffusers' stride-2 downsamplers do."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    d = int(downscale)
    while d > 1:
        h, w, d = -(-h // 2), -(-w // 2), d // 2
    return h, w


def _factors(unet) -> tuple[list[int], int, list[int]]:
    """Downscale factor of every down block, of the mid block, and of every up block."""
    down, f = [], 1
    for block in unet.down_blocks:
        down.append(f)
        if getattr(block, "downsamplers", None):
            f *= 2
    mid = f
    up = []
    for block in unet.up_blocks:
        up.append(f)
        if getattr(block, "upsamplers", None):
            f //= 2
    return down, mid, up


def cross_attention_layers(unet) -> list[CrossAttentionLayer]:
    """Every cross-attention layer of `unet`, in execution order (down, mid, up)."""
    down, mid, up = _factors(unet)
    out = []
    for name, module in unet.named_modules():
        m = _NAME.match(name)
        if not m:
            continue
        kind, bi, ai, ti = m.group(1) or "mid", int(m.group(2) or 0), int(m.group(3)), int(m.group(4))
        factor = {"down": down, "up": up}[kind][bi] if kind != "mid" else mid
        out.append(CrossAttentionLayer(name, kind, bi, ai, ti, factor, int(module.heads)))
    order = {"down": 0, "mid": 1, "up": 2}
    out.sort(key=lambda l: (order[l.block], l.block_index, l.attention_index, l.transformer_index))
    return out


def layers_by_block(unet) -> dict[str, list[CrossAttentionLayer]]:
    """The cross-attention layers grouped as {"down": [...], "mid": [...], "up": [...]}."""
    groups: dict[str, list[CrossAttentionLayer]] = {"down": [], "mid": [], "up": []}
    for layer in cross_attention_layers(unet):
        groups[layer.block].append(layer)
    return groups


def _preset(layers: list[CrossAttentionLayer], preset: str) -> list[CrossAttentionLayer]:
    first = [l for l in layers if l.transformer_index == 0]  # LMD reads transformer block 0
    if preset in ("guidance", "transfer"):
        mid = [l for l in first if l.block == "mid"]
        up_blocks = sorted({l.block_index for l in first if l.block == "up"})
        up = [l for l in first if l.block == "up" and up_blocks and l.block_index == up_blocks[0]]
        return mid + up
    if preset == "mask":
        down_blocks = sorted({l.block_index for l in first if l.block == "down"})
        if not down_blocks:
            return []
        deepest = [l for l in first if l.block == "down" and l.block_index == down_blocks[-1]]
        return [max(deepest, key=lambda l: l.attention_index)]
    if preset == "per_box":
        chosen = {l.name for l in _preset(layers, "mask") + _preset(layers, "transfer")}
        return [l for l in layers if l.name in chosen]
    raise ValueError(f"unknown layer preset {preset!r}; presets: {', '.join(PRESETS)}")


def _pick(values: Sequence[int], index: int) -> int | None:
    """A literal index if present; a negative one counts from the end of the present ones."""
    values = sorted(set(values))
    if index < 0:
        return values[index] if -index <= len(values) else None
    return index if index in values else None


def _by_position(layers: list[CrossAttentionLayer], pos: Sequence) -> CrossAttentionLayer | None:
    block, bi, ai, ti = pos
    cands = [l for l in layers if l.block == block]
    b = _pick([l.block_index for l in cands], int(bi))
    cands = [l for l in cands if l.block_index == b]
    a = _pick([l.attention_index for l in cands], int(ai))
    cands = [l for l in cands if l.attention_index == a]
    t = _pick([l.transformer_index for l in cands], int(ti))
    cands = [l for l in cands if l.transformer_index == t]
    return cands[0] if cands else None


MODEL_PRESETS_KEY = "_lmd_layers"


def model_presets(unet) -> dict:
    """Presets a model carries in its UNet config (`_lmd_layers`: {preset: [layer names]}).

    Why: the role rules below are right for SD1.x/2.x, but a model trained to localise its
    attention at other resolutions (the shapes model: 8x8 and 16x16 maps of a 16x16 latent, where
    the "mid + first up block" rule would land on 4x4 maps) knows better which layers LMD should
    read; it says so in its own config, which diffusers keeps through save and load.
    """
    config = getattr(unet, "config", None)
    found = config.get(MODEL_PRESETS_KEY) if hasattr(config, "get") else None
    return dict(found) if isinstance(found, dict) else {}


def resolve_layers(unet, spec: str | Iterable) -> list[CrossAttentionLayer]:
    """Like `select_layers`, returning the layer records (names, positions, downscale, heads)."""
    layers = cross_attention_layers(unet)
    own = model_presets(unet)
    if isinstance(spec, str) and spec in PRESETS and own:
        if spec == "per_box":
            chosen = resolve_layers(unet, "mask") + resolve_layers(unet, "transfer")
            return [l for l in layers if l in chosen]
        if spec in own:
            return resolve_layers(unet, list(own[spec]))
    if isinstance(spec, str) and spec in PRESETS:
        chosen = _preset(layers, spec)
        if not chosen:
            raise ValueError(f"the UNet has no cross-attention layers for preset {spec!r}")
        return chosen
    if isinstance(spec, str):
        if "." not in spec:
            raise ValueError(f"unknown layer preset {spec!r}; presets: {', '.join(PRESETS)} (or give layer names)")
        spec = [spec]
    by_name = {l.name: l for l in layers}
    chosen = []
    for item in spec:
        if isinstance(item, str):
            layer = by_name.get(item.removesuffix(".processor"))
        else:
            layer = _by_position(layers, item)
        if layer is None:
            raise ValueError(f"no cross-attention layer {item!r} in this UNet; it has: "
                             + ", ".join(l.name for l in layers))
        if layer not in chosen:
            chosen.append(layer)
    return chosen


def select_layers(unet, spec: str | Iterable) -> list[str]:
    """Names of the cross-attention layers that `spec` selects, in execution order for presets.

    spec is one of
    - a preset: "guidance" (energy layers: mid + first up block with cross-attention),
      "transfer" (attention-transfer layers; LMD uses the guidance layers), "mask" (the token map
      for SAM/attention masks: last attention of the deepest cross-attention down block),
      "per_box" (mask + transfer: what a per-box run must store);
    - an iterable of layer names (with or without ".processor") and/or LMD position tuples
      (block, block_index, attention_index, transformer_index), e.g. ("up", 1, 0, 0). A negative
      index counts from the end of what exists, so ("down", -1, -1, 0) is the "mask" layer on any UNet.
    """
    return [l.name for l in resolve_layers(unet, spec)]
