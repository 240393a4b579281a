"""Random scenes of the shapes world, their captions, and their rendering with boxes and masks.

A scene is drawn from a seed (numpy's PCG64), so the same seed gives the same scene, caption and
pixels on every machine. Objects never overlap (at least 2 pixels apart at 64 px), which keeps
counts and masks unambiguous. Rendering is supersampled 4x with PIL and box-filtered down, so
edges are anti-aliased the way a VAE would see natural images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmd_batch.shapes.vocab import BACKGROUNDS, COLORS, SHAPES, STYLES, phrase

SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    box: tuple[float, float, float, float]  # x, y, w, h as fractions of the canvas

    @property
    def cx(self) -> float:
        return self.box[0] + self.box[2] / 2

    @property
    def cy(self) -> float:
        return self.box[1] + self.box[3] / 2


@dataclass(frozen=True)
class Background:
    style: str           # plain | gradient | dotted | striped
    colors: tuple[str, ...]

    def phrase(self) -> str:
        if self.style == "plain":
            return f"a {self.colors[0]} background"
        if self.style == "gradient":
            return f"a {self.colors[0]} to {self.colors[1]} gradient background"
        return f"a {self.style} {self.colors[0]} background"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: Background
    relation: str | None = None  # 'left of' | 'right of' | 'above' | 'below' between the two groups
    caption: str = field(default="", compare=False)


def groups(objects) -> list[tuple[str, str, int]]:
    """(colour, shape, count) in order of first appearance."""
    out: dict[tuple[str, str], int] = {}
    for o in objects:
        out[(o.color, o.shape)] = out.get((o.color, o.shape), 0) + 1
    return [(c, s, n) for (c, s), n in out.items()]


def make_caption(objects, background: Background, relation: str | None = None, form: str = "on") -> str:
    """'two red circles and a blue star on a sand background'; with a relation between exactly
    two groups: 'two red circles on the left of a blue star on a sand background'.

    form "with" is the shape of the prompts LMD itself writes (spec.py: per box "{background} with
    {caption}", overall "{background} with {phrase}, {phrase}"): 'a sand background with two red
    circles, a blue star'; an empty scene is the background phrase alone. Part of the training
    captions take this form so that LMD's per-box and overall prompts are in the model's language.
    """
    gs = groups(objects)
    parts = [phrase(n, c, s) for c, s, n in gs]
    if form == "with":
        return f"{background.phrase()} with {', '.join(parts)}" if parts else background.phrase()
    if not gs:
        return f"an empty scene on {background.phrase()}"
    if relation is not None and len(parts) == 2:
        words = {"left of": "on the left of", "right of": "on the right of", "above": "above", "below": "below"}
        return f"{parts[0]} {words[relation]} {parts[1]} on {background.phrase()}"
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{body} on {background.phrase()}"


def _relation(objects) -> str | None:
    """The relation that holds between all objects of group 1 and all of group 2, if any."""
    gs = groups(objects)
    if len(gs) != 2:
        return None
    a = [o for o in objects if (o.color, o.shape) == gs[0][:2]]
    b = [o for o in objects if (o.color, o.shape) == gs[1][:2]]
    if max(o.box[0] + o.box[2] for o in a) < min(o.box[0] for o in b):
        return "left of"
    if min(o.box[0] for o in a) > max(o.box[0] + o.box[2] for o in b):
        return "right of"
    if max(o.box[1] + o.box[3] for o in a) < min(o.box[1] for o in b):
        return "above"
    if min(o.box[1] for o in a) > max(o.box[1] + o.box[3] for o in b):
        return "below"
    return None


def sample_scene(seed: int, max_objects: int = 5, relation_share: float = 0.4, size: int = 64,
                 with_share: float = 0.35) -> Scene:
    """A random scene: 0..max_objects objects (mostly 1-3), at most 3 distinct (colour, shape)
    groups, sizes 20-40% of the canvas (smaller when crowded), no overlaps. A share `with_share`
    of the captions take LMD's "{background} with {phrases}" form (no relation stated)."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    weights = np.array([0.04, 0.3, 0.3, 0.18, 0.1, 0.08][: max_objects + 1])
    n = int(rng.choice(len(weights), p=weights / weights.sum()))
    n_groups = min(n, int(rng.integers(1, 4))) if n else 0
    kinds = []
    while len(kinds) < n_groups:
        k = (str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)))
        if k not in kinds:
            kinds.append(k)
    members = [kinds[i % n_groups] for i in range(n)] if n else []
    rng.shuffle(members)
    gap = 2.0 / size
    objects: list[ShapeObject] = []
    hi = 0.40 if n <= 2 else 0.32 if n <= 3 else 0.26
    for color, shape in members:
        for _ in range(500):
            s = float(rng.uniform(0.20, hi))
            x, y = float(rng.uniform(0, 1 - s)), float(rng.uniform(0, 1 - s))
            if all(x + s + gap <= o.box[0] or o.box[0] + o.box[2] + gap <= x or
                   y + s + gap <= o.box[1] or o.box[1] + o.box[3] + gap <= y for o in objects):
                objects.append(ShapeObject(shape, color, (x, y, s, s)))
                break
        else:
            hi = max(0.20, hi - 0.04)  # crowded: drop this object rather than loop forever
    style = str(rng.choice([s for s, _ in STYLES], p=[p for _, p in STYLES]))
    names = list(BACKGROUNDS)
    if style == "gradient":
        i, j = rng.choice(len(names), size=2, replace=False)
        bg = Background(style, (names[int(i)], names[int(j)]))
    else:
        bg = Background(style, (names[int(rng.integers(len(names)))],))
    rel = _relation(objects) if rng.random() < relation_share else None
    form = "with" if rng.random() < with_share else "on"
    if form == "with":
        rel = None
    objects_t = tuple(objects)
    return Scene(objects_t, bg, rel, make_caption(objects_t, bg, rel, form))


def _shape_polygon(shape: str, x0: float, y0: float, w: float, h: float):
    import math

    if shape == "triangle":
        return [(x0 + w / 2, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    if shape == "star":
        cx, cy, r = x0 + w / 2, y0 + h / 2, min(w, h) / 2
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a) + r * 0.1))
        return pts
    raise ValueError(shape)


def _draw(draw, shape: str, box_px, fill) -> None:
    x0, y0, w, h = box_px
    if shape == "circle":
        draw.ellipse((x0, y0, x0 + w - 1, y0 + h - 1), fill=fill)
    elif shape == "square":
        m = w * 0.06  # a square a little inside its box, so it never fills it edge to edge
        draw.rectangle((x0 + m, y0 + m, x0 + w - 1 - m, y0 + h - 1 - m), fill=fill)
    else:
        draw.polygon(_shape_polygon(shape, x0, y0, w - 1, h - 1), fill=fill)


def _background(bg: Background, big: int):
    import numpy as np

    c0 = np.array(BACKGROUNDS[bg.colors[0]], dtype=np.float32)
    img = np.broadcast_to(c0, (big, big, 3)).copy()
    if bg.style == "gradient":
        c1 = np.array(BACKGROUNDS[bg.colors[1]], dtype=np.float32)
        t = np.linspace(0, 1, big, dtype=np.float32)[:, None, None]
        img = c0 * (1 - t) + c1 * t + np.zeros((1, big, 3), np.float32)
    elif bg.style == "striped":
        stripes = ((np.arange(big) // (big // 8)) % 2 == 1)[None, :, None]
        img = np.where(stripes, img * 0.9, img)
    elif bg.style == "dotted":
        yy, xx = np.mgrid[0:big, 0:big]
        step = big // 8
        dots = ((yy % step - step // 2) ** 2 + (xx % step - step // 2) ** 2) <= (step // 6) ** 2
        img = np.where(dots[..., None], img * 0.88, img)
    return np.clip(img, 0, 255).astype(np.uint8)


def render(scene: Scene, size: int = 64):
    """(RGB uint8 array (size, size, 3), [bool mask (size, size) per object], [pixel box per object])."""
    import numpy as np
    from PIL import Image, ImageDraw

    big = size * SUPERSAMPLE
    canvas = Image.fromarray(_background(scene.background, big))
    draw = ImageDraw.Draw(canvas)
    masks, boxes = [], []
    for o in scene.objects:
        box_px = tuple(v * big for v in o.box)
        _draw(draw, o.shape, box_px, COLORS[o.color])
        m = Image.new("L", (big, big), 0)
        _draw(ImageDraw.Draw(m), o.shape, box_px, 255)
        masks.append(np.asarray(m.resize((size, size), Image.BOX)) >= 128)
        boxes.append(tuple(round(v * size, 3) for v in o.box))
    image = np.asarray(canvas.resize((size, size), Image.BOX))
    return image, masks, boxes
