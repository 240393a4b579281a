"""The shapes benchmark: LMD's four categories over the shapes world, judged by the shapes detector.

Why a second suite: on these machines no real Stable Diffusion weights exist, so the LMD
benchmark can only be run end to end with the shapes model (`shapes-sd`). The prompts follow the
model's own caption grammar (scene.make_caption) and the categories are LMD's, made hard enough
that plain generation demonstrably fails (counts up to 5, three-object binding, left/right/
above/below, negation the text encoder never saw):

- negation:    "two red circles and no blue stars on a sand background"; passes when no blue star
               is detected and at least one red circle is;
- numeracy:    "four green triangles on a grey background"; exactly n green triangles (n = 1..5);
- attribution: "a red circle, a blue square and a green star on ..."; each colour on its shape;
- spatial:     "a red circle on the left of a blue star on ..."; both present and the centres of
               the largest detection of each in that relation.

Prompts are drawn from a seeded generator (same count, same seed, same prompts) and can be
parsed back from their text (`parse_prompt`), so any run whose prompts use this grammar is
scored without side files. `oracle_layout` gives each prompt a ground-truth layout (boxes that
satisfy it, LMD's caption/background/negative fields) to separate stage-1 from stage-2 errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmd_batch.shapes.vocab import BACKGROUNDS, COLORS, NUMBER_WORDS, SHAPES, phrase, plural

CATEGORIES: tuple[str, ...] = ("negation", "numeracy", "attribution", "spatial")
RELATIONS = {"left of": "on the left of", "right of": "on the right of", "above": "above", "below": "below"}
CANVAS = 512
RELATION_MARGIN = CANVAS / 64  # one pixel of the 64x64 image, in canvas units


@dataclass(frozen=True)
class ShapesPrompt:
    category: str
    prompt: str
    groups: tuple[tuple[int, str, str], ...]   # (count, colour, shape) that must be drawn
    absent: tuple[str, str] | None = None      # negation: (colour, shape) that must not be
    relation: str | None = None                # spatial: group 0 <relation> group 1
    background: str = ""

    def to_dict(self) -> dict:
        return dict(category=self.category, prompt=self.prompt, groups=[list(g) for g in self.groups],
                    absent=list(self.absent) if self.absent else None, relation=self.relation,
                    background=self.background)


def _backgrounds() -> list[str]:
    out = []
    for name in BACKGROUNDS:
        out += [f"a {name} background", f"a dotted {name} background", f"a striped {name} background"]
    return out


def _kind(rng, exclude=()) -> tuple[str, str]:
    while True:
        k = (str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)))
        if k not in exclude:
            return k


def shapes_prompts(per_category: int = 100, seed: int = 0) -> list[ShapesPrompt]:
    """`per_category` prompts of each category, in CATEGORIES order; numeracy cycles n = 1..5."""
    import numpy as np

    if per_category < 1:
        raise ValueError("per_category must be at least 1")
    rng = np.random.Generator(np.random.PCG64(seed))
    bgs = _backgrounds()
    out: list[ShapesPrompt] = []
    for i in range(per_category):  # negation
        (ca, sa), n = _kind(rng), int(rng.integers(1, 4))
        cb, sb = _kind(rng, exclude=[(ca, sa)])
        bg = str(rng.choice(bgs))
        text = f"{phrase(n, ca, sa)} and no {cb} {plural(sb)} on {bg}"
        out.append(ShapesPrompt("negation", text, ((n, ca, sa),), (cb, sb), None, bg))
    for i in range(per_category):  # numeracy
        (c, s), n = _kind(rng), i % 5 + 1
        bg = str(rng.choice(bgs))
        out.append(ShapesPrompt("numeracy", f"{phrase(n, c, s)} on {bg}", ((n, c, s),), None, None, bg))
    for i in range(per_category):  # attribution: three objects, distinct colours and shapes
        colours = [str(c) for c in rng.choice(list(COLORS), size=3, replace=False)]
        shapes = [str(s) for s in rng.choice(SHAPES, size=3, replace=False)]
        bg = str(rng.choice(bgs))
        parts = [phrase(1, c, s) for c, s in zip(colours, shapes)]
        text = f"{parts[0]}, {parts[1]} and {parts[2]} on {bg}"
        out.append(ShapesPrompt("attribution", text, tuple((1, c, s) for c, s in zip(colours, shapes)), None, None, bg))
    rels = list(RELATIONS)
    for i in range(per_category):  # spatial
        (ca, sa) = _kind(rng)
        cb, sb = _kind(rng, exclude=[(ca, sa)])
        rel, bg = rels[i % 4], str(rng.choice(bgs))
        text = f"{phrase(1, ca, sa)} {RELATIONS[rel]} {phrase(1, cb, sb)} on {bg}"
        out.append(ShapesPrompt("spatial", text, ((1, ca, sa), (1, cb, sb)), None, rel, bg))
    return out


_COL = "|".join(COLORS)
_SHP = "|".join(SHAPES)
_BG = r"(?P<bg>an? (?:(?:dotted|striped) )?(?:" + "|".join(BACKGROUNDS) + r") background)"
_ONE = rf"an? (?:{_COL}) (?:{_SHP})"
_N = rf"(?:an? (?:{_COL}) (?:{_SHP})|(?:{'|'.join(NUMBER_WORDS[2:])}) (?:{_COL}) (?:{'|'.join(plural(s) for s in SHAPES)}))"
_PATTERNS = {
    "negation": re.compile(rf"(?P<a>{_N}) and no (?P<bc>{_COL}) (?P<bs>{'|'.join(plural(s) for s in SHAPES)}) on {_BG}"),
    "numeracy": re.compile(rf"(?P<a>{_N}) on {_BG}"),
    "attribution": re.compile(rf"(?P<a>{_ONE}), (?P<b>{_ONE}) and (?P<c>{_ONE}) on {_BG}"),
    "spatial": re.compile(rf"(?P<a>{_ONE}) (?P<rel>{'|'.join(RELATIONS.values())}) (?P<b>{_ONE}) on {_BG}"),
}


def _group(text: str) -> tuple[int, str, str]:
    words = text.split()
    n = 1 if words[0] in ("a", "an") else NUMBER_WORDS.index(words[0])
    shape = words[2][:-1] if n > 1 else words[2]
    return n, words[1], shape


def parse_prompt(text: str) -> ShapesPrompt | None:
    """The benchmark prompt this text is (any prompt in the suite's grammar), or None."""
    text = " ".join(str(text).split())
    for category, pattern in _PATTERNS.items():
        m = pattern.fullmatch(text)
        if not m:
            continue
        bg = m.group("bg")
        if category == "negation":
            absent = (m.group("bc"), m.group("bs")[:-1])
            a = _group(m.group("a"))
            if absent == a[1:]:
                return None
            return ShapesPrompt(category, text, (a,), absent, None, bg)
        if category == "numeracy":
            return ShapesPrompt(category, text, (_group(m.group("a")),), None, None, bg)
        if category == "attribution":
            return ShapesPrompt(category, text, tuple(_group(m.group(k)) for k in "abc"), None, None, bg)
        rel = {v: k for k, v in RELATIONS.items()}[m.group("rel")]
        return ShapesPrompt(category, text, (_group(m.group("a")), _group(m.group("b"))), None, rel, bg)
    return None


def _centre(box) -> tuple[float, float]:
    x, y, w, h = box
    return x + w / 2, y + h / 2


def _holds(relation: str, a_box, b_box, margin: float = 0.0) -> bool:
    (ax, ay), (bx, by) = _centre(a_box), _centre(b_box)
    return {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[relation] > margin


def judge(p: ShapesPrompt, found: list[tuple[str, str, tuple]]) -> bool:
    """Whether detections [(colour, shape, (x, y, w, h))] satisfy the prompt (see the module doc)."""
    def of(kind):
        return [box for c, s, box in found if (c, s) == kind]

    if p.category == "negation":
        return not of(p.absent) and bool(of(p.groups[0][1:]))
    if p.category == "numeracy":
        n, c, s = p.groups[0]
        return len(of((c, s))) == n
    if p.category == "attribution":
        return all(of(g[1:]) for g in p.groups)
    a, b = of(p.groups[0][1:]), of(p.groups[1][1:])
    if not a or not b:
        return False
    largest = lambda boxes: max(boxes, key=lambda bx: bx[2] * bx[3])  # noqa: E731
    return _holds(p.relation, largest(a), largest(b))


_CAPTION = re.compile(rf"(?:an? |one )?(?P<c>{_COL}) (?P<s>{_SHP})s?")


def caption_kind(caption: str) -> tuple[str, str] | None:
    """(colour, shape) a layout box caption names ('a red circle', 'red circles'), or None."""
    m = _CAPTION.fullmatch(" ".join(str(caption).lower().split()))
    return (m.group("c"), m.group("s")) if m else None


def judge_layout(p: ShapesPrompt, boxes) -> bool:
    """The same predicate on a layout's boxes ([(caption, x, y, w, h)]): stage 1's upper bound."""
    found = []
    for caption, x, y, w, h in boxes:
        kind = caption_kind(caption)
        if kind is not None:
            found.append((kind[0], kind[1], (x, y, w, h)))
    return judge(p, found)


def oracle_layout(p: ShapesPrompt, seed: int = 0) -> dict:
    """A ground-truth layout for the prompt: {boxes: [{caption, x, y, w, h}] on 512, background,
    negative}; boxes 20-32% of the canvas, 4% apart, satisfying the relation (seeded).

    The relation is checked on the rounded pixel boxes with the centres at least one 64x64 image
    pixel apart (RELATION_MARGIN): checked on unrounded floats, one layout's centres came out
    equal after rounding and failed its own predicate, and a sub-pixel relation is a coin flip for
    any detector."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64([seed, abs(hash_text(p.prompt))]))
    kinds = [(c, s) for n, c, s in p.groups for _ in range(n)]
    hi = 0.40 if len(kinds) <= 2 else 0.32 if len(kinds) <= 3 else 0.26
    for _attempt in range(2000):
        placed = []
        for _ in kinds:
            for _try in range(200):
                size = float(rng.uniform(0.20, hi))
                x, y = float(rng.uniform(0, 1 - size)), float(rng.uniform(0, 1 - size))
                gap = 0.04
                if all(x + size + gap <= a or a + s + gap <= x or y + size + gap <= b or b + s + gap <= y
                       for a, b, s in placed):
                    placed.append((x, y, size))
                    break
        if len(placed) == len(kinds) and (p.relation is None or _holds(
                p.relation, _rounded(placed[0]), _rounded(placed[1]), RELATION_MARGIN)):
            break
    else:  # pragma: no cover - the ranges above always admit a layout
        raise RuntimeError(f"no oracle layout found for {p.prompt!r}")
    boxes = [dict(caption=phrase(1, c, s), x=round(x * CANVAS), y=round(y * CANVAS), w=round(sz * CANVAS),
                  h=round(sz * CANVAS)) for (c, s), (x, y, sz) in zip(kinds, placed)]
    negative = f"{p.absent[0]} {plural(p.absent[1])}" if p.absent else ""
    return dict(boxes=boxes, background=p.background, negative=negative)


def _rounded(placed) -> tuple[int, int, int, int]:
    x, y, s = placed
    return round(x * CANVAS), round(y * CANVAS), round(s * CANVAS), round(s * CANVAS)


def hash_text(text: str) -> int:
    """A stable 63-bit hash of a prompt (Python's hash() is salted per process)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def layout_text(layout: dict) -> str:
    """The layout in LMD's text format (what an LLM would answer), for `llm.given_layouts`."""
    lines = [f"Objects: [{', '.join(repr_box(b) for b in layout['boxes'])}]",
             f"Background prompt: {layout['background']}", f"Negative prompt: {layout['negative']}"]
    return "\n".join(lines)


def repr_box(b: dict) -> str:
    return f"('{b['caption']}', [{b['x']}, {b['y']}, {b['w']}, {b['h']}])"
