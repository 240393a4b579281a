"""Training data for the shapes model: scenes -> images, token ids, and per-token box masks.

The attention-localisation loss needs to know, for every object group of a caption, which token
positions hold its colour and shape words and where its boxes are. Captions are built by
`scene.make_caption` in group order, and background names are never palette colours, so walking
the caption's words in order finds each group's colour word and then its shape word.
"""

from __future__ import annotations

from lmd_batch.shapes.scene import Scene, groups, render
from lmd_batch.shapes.vocab import COLORS, SHAPES, plural

MAX_GROUPS = 3


def token_positions(tokenizer, caption: str) -> list[tuple[int, int]]:
    """[(colour token index, shape token index)] per object group, in the padded id sequence
    (index 0 is <|startoftext|>); words that tokenise to several pieces point at their first."""
    shape_words = {s: s for s in SHAPES} | {plural(s): s for s in SHAPES}
    pos, out, colour_at = 1, [], None
    for word in caption.replace(",", " ,").split():
        n = len(tokenizer(word, add_special_tokens=False).input_ids)
        if word in COLORS:
            colour_at = pos
        elif word in shape_words and colour_at is not None:
            out.append((colour_at, pos))
            colour_at = None
        pos += n
    return out


def group_masks(scene: Scene, side: int):
    """(MAX_GROUPS, side, side) float box masks: the union of each group's boxes, cell centres."""
    import torch

    g = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    masks = torch.zeros(MAX_GROUPS, side, side)
    for k, (colour, shape, _n) in enumerate(groups(scene.objects)[:MAX_GROUPS]):
        for o in scene.objects:
            if (o.color, o.shape) == (colour, shape):
                x, y, w, h = o.box
                mx = ((g >= x) & (g <= x + w)).float()
                my = ((g >= y) & (g <= y + h)).float()
                masks[k] = torch.maximum(masks[k], my[:, None] * mx[None, :])
    return masks


def image_tensor(scenes, size: int):
    """(N, 3, size, size) float in [-1, 1] of rendered scenes."""
    import numpy as np
    import torch

    arr = np.stack([render(s, size)[0] for s in scenes]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
