"""Training data for the shapes model: scenes -> images, token ids, and per-token box masks.

The attention-localisation loss needs to know, for every object group of a caption, which token
positions hold its colour and shape words and where its boxes are. Captions are built by
`scene.make_caption` in group order, and background names are never palette colours, so walking
the caption's words in order finds each group's colour word and then its shape word.
"""

from __future__ import annotations

import collections

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

    return _as_tensor(np.stack([render(s, size)[0] for s in scenes]))


def _as_tensor(images):
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]: the one conversion every training image takes."""
    import numpy as np
    import torch

    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def _render_seeds(job: tuple[int, int, int]):
    """Worker: uint8 (n, size, size, 3) images of the scenes seeded first .. first + n - 1."""
    import numpy as np

    from lmd_batch.shapes.scene import sample_scene

    first, n, size = job
    return np.stack([render(sample_scene(first + i, size=size), size)[0] for i in range(n)])


class SceneImages:
    """Rendered training images by seed, in `workers` processes when asked.

    Rendering (~5-10 ms a scene in Python) is what a GPU run waits on: 55,000 scenes for the
    default training. Each scene depends on its seed alone, so rendering ahead in a process pool
    gives the same pixels, hence the same weights, as rendering one by one in this process.
    `workers=1` renders in this process, on demand (what CPU training does)."""

    def __init__(self, size: int, workers: int = 1, chunk: int = 256):
        self.size, self.workers, self.chunk = size, max(1, workers), chunk
        self._pool = None
        self._todo: collections.deque = collections.deque()   # (first seed, count) not yet submitted
        self._ahead: collections.deque = collections.deque()  # (first seed, count, future), in order

    def __enter__(self):
        if self.workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
        return self

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def prefetch(self, first: int, n: int) -> None:
        """Queue seeds first .. first + n - 1 for rendering, in chunks; at most 4 chunks a worker are
        rendered ahead of what was consumed, so memory stays bounded (no-op without a pool)."""
        if self._pool is None:
            return
        for a in range(first, first + n, self.chunk):
            self._todo.append((a, min(self.chunk, first + n - a)))
        self._fill()

    def _fill(self) -> None:
        while self._todo and len(self._ahead) < 4 * self.workers:
            a, m = self._todo.popleft()
            self._ahead.append((a, m, self._pool.submit(_render_seeds, (a, m, self.size))))

    def tensor(self, first: int, n: int):
        """(n, 3, size, size) float in [-1, 1], as `image_tensor` of the same scenes gives. With a
        pool, the seeds must lie in prefetched ranges, asked for in order."""
        import numpy as np

        if self._pool is None:
            arr = _render_seeds((first, n, self.size))
        else:
            parts, end = [], first + n
            while first < end:
                if not self._ahead or not self._ahead[0][0] <= first < self._ahead[0][0] + self._ahead[0][1]:
                    raise ValueError(f"scene seed {first} was not prefetched in order")
                a, m, fut = self._ahead[0]
                hi = min(end, a + m)
                parts.append(fut.result()[first - a:hi - a])
                if hi == a + m:
                    self._ahead.popleft()
                    self._fill()
                first = hi
            arr = np.concatenate(parts)
        return _as_tensor(arr)
