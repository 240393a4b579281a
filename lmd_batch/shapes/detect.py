"""A classical detector for the shapes world: colour segmentation plus shape classification.

No training, so it can judge a trained model without sharing its mistakes: pixels whose HSV
saturation is high are foreground (backgrounds are pale by construction), 4-connected components
are objects, the majority nearest palette hue of a component's core pixels is its colour (hue,
not RGB distance: a generated object's blurred or shaded pixels keep their hue while their
lightness drifts towards a neighbouring palette colour),
and two scale-free measures name its shape: fill (area / bounding box; square ~1, circle ~0.79,
triangle ~0.5, star ~0.38) and solidity (area / convex hull; the star alone is far below 1).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmd_batch.shapes.vocab import COLORS

FG_SATURATION = 0.35
CORE_SATURATION = 0.55
MIN_VALUE = 50


@dataclass(frozen=True)
class ShapeDetection:
    color: str
    shape: str
    box: tuple[int, int, int, int]  # x, y, w, h in pixels
    area: int
    fill: float
    solidity: float

    @property
    def label(self) -> str:
        from lmd_batch.shapes.vocab import phrase

        return phrase(1, self.color, self.shape)


def _components(mask) -> list[list[tuple[int, int]]]:
    """4-connected components of a boolean (h, w) array, in raster order of their first pixel."""
    h, w = mask.shape
    seen = [[False] * w for _ in range(h)]
    rows = mask.tolist()
    out = []
    for y0 in range(h):
        for x0 in range(w):
            if not rows[y0][x0] or seen[y0][x0]:
                continue
            seen[y0][x0] = True
            stack, pixels = [(y0, x0)], []
            while stack:
                y, x = stack.pop()
                pixels.append((y, x))
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < h and 0 <= nx < w and rows[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        stack.append((ny, nx))
            out.append(pixels)
    return out


def _hull_area(pixels) -> float:
    """Area of the convex hull of the pixels' corner points (monotone chain + shoelace)."""
    pts = sorted({(x + dx, y + dy) for y, x in pixels for dx in (0, 1) for dy in (0, 1)})
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]
    return abs(sum(hull[i][0] * hull[i - 1][1] - hull[i - 1][0] * hull[i][1] for i in range(len(hull)))) / 2.0


def _hue(rgb):
    """Hue in degrees [0, 360) of RGB values (..., 3)."""
    import numpy as np

    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = np.maximum(mx - mn, 1e-6)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return h * 60.0


def classify_shape(fill: float, solidity: float) -> str:
    if solidity < 0.78:
        return "star"
    if fill >= 0.9:  # (0.86 would forgive generated squares' soft corners, but reads 12 px discs as squares)
        return "square"
    if fill >= 0.66:
        return "circle"
    return "triangle"


def detect_shapes(image, min_area: int | None = None) -> list[ShapeDetection]:
    """Objects in an RGB uint8 image (h, w, 3), in raster order of their top-left-most pixel."""
    import numpy as np

    rgb = np.asarray(image, dtype=np.float32)[..., :3]
    hi, lo = rgb.max(-1), rgb.min(-1)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
    fg = (sat >= FG_SATURATION) & (hi >= MIN_VALUE)
    h, w = fg.shape
    min_area = min_area if min_area is not None else max(6, (h * w) // 500)
    names = list(COLORS)
    palette = _hue(np.array([COLORS[n] for n in names], dtype=np.float32))
    diff = np.abs(_hue(rgb)[..., None] - palette)
    nearest = np.argmin(np.minimum(diff, 360.0 - diff), axis=-1)
    core = sat >= CORE_SATURATION
    out = []
    for pixels in _components(fg):
        if len(pixels) < min_area:
            continue
        ys = np.array([p[0] for p in pixels])
        xs = np.array([p[1] for p in pixels])
        sel = core[ys, xs]
        votes = np.bincount(nearest[ys[sel], xs[sel]] if sel.any() else nearest[ys, xs], minlength=len(names))
        x0, y0 = int(xs.min()), int(ys.min())
        bw, bh = int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1
        area = len(pixels)
        fill = area / float(bw * bh)
        hull = _hull_area(pixels)
        solidity = area / hull if hull > 0 else 1.0
        out.append(ShapeDetection(names[int(votes.argmax())], classify_shape(fill, solidity), (x0, y0, bw, bh),
                                  area, round(fill, 4), round(solidity, 4)))
    return out


def box_iou(a, b) -> float:
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def match(detections, truth, min_iou: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives): a detection is right when it has the
    colour and shape of an unmatched ground-truth object overlapping it by IoU >= min_iou.
    `truth`: [(colour, shape, (x, y, w, h) pixels)]."""
    used = set()
    tp = 0
    for d in detections:
        best, best_iou = None, min_iou
        for i, (c, s, box) in enumerate(truth):
            if i in used or (c, s) != (d.color, d.shape):
                continue
            v = box_iou(d.box, box)
            if v >= best_iou:
                best, best_iou = i, v
        if best is not None:
            used.add(best)
            tp += 1
    return tp, len(detections) - tp, len(truth) - tp
