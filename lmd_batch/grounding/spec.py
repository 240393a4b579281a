"""A parsed layout as the prompts and boxes stage 2 generates from (LMD-REFERENCE.md 2.0).

`layout_to_spec` turns a `Layout` (captioned [x, y, w, h] boxes on the 512 canvas, a background
prompt, the LLM's negative prompt) into the `GroundingSpec` contract of `types.py`:

- every box is clipped to the canvas (noted); a box with no area left is dropped (noted);
- more than `max_boxes` boxes: the first `max_boxes` in the layout's order are kept (noted
  "capped N boxes to M"); this bounds the per-box work one layout can ask for;
- the boxes are sorted by caption (stable: equal captions keep the layout's order), *before*
  prompts are built and identical captions are grouped, as the reference does;
- per box: prompt "{background} with {caption}" (the caption alone when the background is
  empty); `word` = the caption's last whitespace word (punctuation stripped), whose last
  sub-token is the attention token for SAM and attention transfer;
- overall: identical captions are grouped ("a cat" x2 -> "two cats": a number in words and a
  naive English plural of the head noun, leading article dropped; the reference uses `inflect`,
  which the project does not depend on); the prompt is "{background} with {phrases, ...}";
- zero boxes is a valid spec: the overall prompt is the background alone (plain generation).

Boxes in the spec are always on the 512 canvas: a layout drawn on another `canvas` is rescaled.
This module needs no torch (it is imported by light code paths too).
"""

from __future__ import annotations

import math
import re

from lmd_batch.grounding.tokens import last_word
from lmd_batch.grounding.types import GroundingSpec, SpecBox

SPEC_CANVAS = 512  # the frame of every SpecBox.box

# prompt.py in the reference: the per-box ("single object") negative prompt, and the overall one
# (its first 9 terms, up to "duplicate").
DEFAULT_SO_NEGATIVE_PROMPT = (
    "artifacts, blurry, smooth texture, bad quality, distortions, unrealistic, distorted image, bad proportions, "
    "duplicate, two, many, group, occlusion, occluded, side, border, collate")
DEFAULT_OVERALL_NEGATIVE_PROMPT = (
    "artifacts, blurry, smooth texture, bad quality, distortions, unrealistic, distorted image, bad proportions, "
    "duplicate")


def _join_negative(llm_negative: str, default: str) -> str:
    llm_negative = (llm_negative or "").strip()
    return f"{llm_negative}, {default}" if llm_negative else default


#: diffusion.negative_prompt: "lmd" = the LLM's negative, then LMD's default terms (the reference);
#: "llm" = the LLM's negative alone; "none" = no negative prompt in any run (negation then comes
#: from the layout alone: an excluded object simply gets no box).
NEGATIVE_MODES = ("lmd", "llm", "none")


def _negative(spec: GroundingSpec, mode: str, default: str) -> str:
    if mode not in NEGATIVE_MODES:
        raise ValueError(f"negative prompt mode must be one of {NEGATIVE_MODES}, not {mode!r}")
    if mode == "none":
        return ""
    return _join_negative(spec.negative, default) if mode == "lmd" else (spec.negative or "").strip()


def per_box_negative(spec: GroundingSpec, mode: str = "lmd") -> str:
    """Negative prompt of the per-box runs: the LLM's negative (if any), then the per-box default
    (mode "lmd"); the LLM's alone ("llm"); nothing ("none")."""
    return _negative(spec, mode, DEFAULT_SO_NEGATIVE_PROMPT)


def overall_negative(spec: GroundingSpec, mode: str = "lmd") -> str:
    """Negative prompt of the overall run: the LLM's negative (if any), then the overall default
    (mode "lmd"); the LLM's alone ("llm"); nothing ("none")."""
    return _negative(spec, mode, DEFAULT_OVERALL_NEGATIVE_PROMPT)


def baseline_negative(spec: GroundingSpec, mode: str = "lmd") -> str:
    """Negative prompt of the baselines: the LLM's negative as it is, or nothing in mode "none"."""
    return "" if mode == "none" else (spec.negative or "").strip()


# ---------------------------------------------------------------------------------------------
# numbers and plurals (small, dependency-free stand-ins for inflect)
# ---------------------------------------------------------------------------------------------

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n: int) -> str:
    """0..999 in English words ("two", "twenty-one", "one hundred and five"); digits beyond."""
    n = int(n)
    if n < 0 or n > 999:
        return str(n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    return f"{_ONES[hundreds]} hundred" + (f" and {number_to_words(rest)}" if rest else "")


_IRREGULAR = {
    "man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice", "goose": "geese",
    "foot": "feet", "tooth": "teeth", "ox": "oxen", "louse": "lice", "die": "dice", "cactus": "cacti",
    "knife": "knives", "wife": "wives", "life": "lives", "leaf": "leaves", "loaf": "loaves", "wolf": "wolves",
    "shelf": "shelves", "half": "halves", "calf": "calves", "elf": "elves", "thief": "thieves", "scarf": "scarves",
    "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes", "echo": "echoes", "mango": "mangoes",
}
_UNCHANGED = {"sheep", "fish", "deer", "moose", "series", "species", "aircraft", "bison", "salmon", "trout",
              "shrimp", "glasses", "scissors", "pants", "jeans", "shorts", "people", "police"}
_ARTICLES = {"a", "an", "the", "one", "some"}
# the head noun of "a cup of coffee" is "cup": pluralise the word before the first of these
_SPLITTERS = {"of", "with", "in", "on", "at", "for", "from", "to", "under", "over", "near", "by", "wearing",
              "holding", "and"}


def plural_word(word: str) -> str:
    """A naive English plural of one word, keeping its capitalisation style."""
    if not word:
        return word
    lower = word.lower()
    if lower in _UNCHANGED:
        out = lower
    elif lower in _IRREGULAR:
        out = _IRREGULAR[lower]
    elif re.search(r"(s|x|z|ch|sh)$", lower):
        out = lower + "es"
    elif re.search(r"[^aeiou]y$", lower):
        out = lower[:-1] + "ies"
    else:
        out = lower + "s"
    if word.isupper() and len(word) > 1:
        return out.upper()
    if word[0].isupper():
        return out[0].upper() + out[1:]
    return out


def plural_phrase(phrase: str) -> str:
    """"a red apple" -> "red apples", "a cup of coffee" -> "cups of coffee" (article dropped)."""
    words = phrase.split()
    if len(words) > 1 and words[0].lower() in _ARTICLES:
        words = words[1:]
    if not words:
        return phrase
    head = len(words) - 1
    for i, w in enumerate(words):
        if i > 0 and w.lower() in _SPLITTERS:
            head = i - 1
            break
    # keep punctuation glued to the head word ("apple," stays "apples,")
    m = re.match(r"^(.*?)([^\w]*)$", words[head])
    core, tail = (m.group(1), m.group(2)) if m and m.group(1) else (words[head], "")
    words[head] = plural_word(core) + tail
    return " ".join(words)


def group_phrase(caption: str, count: int) -> str:
    """The overall prompt's phrase for `count` boxes with the same caption."""
    return caption if count <= 1 else f"{number_to_words(count)} {plural_phrase(caption)}"


# ---------------------------------------------------------------------------------------------
# layout -> spec
# ---------------------------------------------------------------------------------------------

def _word(caption: str) -> str:
    w = last_word(caption)
    if w:
        return w
    parts = caption.split()
    return parts[-1] if parts else caption


def _fmt(v: float) -> str:
    return f"{v:g}"


def layout_to_spec(layout, max_boxes: int = 16, canvas: int = 512) -> GroundingSpec:
    """A `Layout` (lmd_batch.layout.lmd_text) as a `GroundingSpec` (see the module docstring).

    `canvas` is the layout's coordinate frame (LMD's is 512); the spec's boxes are on 512.
    """
    if max_boxes < 0:
        raise ValueError("max_boxes must be >= 0")
    warnings: list[str] = []
    kept: list[tuple[str, tuple[float, float, float, float]]] = []
    scale = SPEC_CANVAS / float(canvas)
    for i, b in enumerate(layout.boxes):
        caption = " ".join(str(b.caption).split())
        x, y, w, h = float(b.x), float(b.y), float(b.w), float(b.h)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            warnings.append(f"box {i} ({caption!r}) dropped: non-finite coordinates")
            continue
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(canvas), x + w), min(float(canvas), y + h)
        if x1 <= x0 or y1 <= y0:
            warnings.append(f"box {i} ({caption!r}) dropped: no area on the {canvas}x{canvas} canvas")
            continue
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            warnings.append(f"box {i} ({caption!r}) clipped to the canvas: [{_fmt(x)}, {_fmt(y)}, {_fmt(w)}, "
                            f"{_fmt(h)}] -> [{_fmt(x0)}, {_fmt(y0)}, {_fmt(x1 - x0)}, {_fmt(y1 - y0)}]")
        box = (x0 * scale, y0 * scale, (x1 - x0) * scale, (y1 - y0) * scale)
        kept.append((caption, box))
    if len(kept) > max_boxes:
        warnings.append(f"capped {len(kept)} boxes to {max_boxes}")
        kept = kept[:max_boxes]

    kept.sort(key=lambda cb: cb[0])  # by caption, stable
    background = " ".join(str(layout.background or "").split())
    boxes = tuple(SpecBox(caption=c, box=b, word=_word(c)) for c, b in kept)
    per_box = tuple(f"{background} with {b.caption}" if background else b.caption for b in boxes)

    groups: dict[str, list[int]] = {}
    for i, b in enumerate(boxes):
        groups.setdefault(b.caption, []).append(i)
    phrases = tuple(group_phrase(c, len(idx)) for c, idx in groups.items())
    phrase_boxes = tuple(tuple(idx) for idx in groups.values())
    joined = ", ".join(phrases)
    if background and joined:
        overall = f"{background} with {joined}"
    else:
        overall = background or joined
    return GroundingSpec(boxes=boxes, background=background, negative=" ".join(str(layout.negative or "").split()),
                         per_box_prompts=per_box, overall_prompt=overall, overall_phrases=phrases,
                         overall_phrase_boxes=phrase_boxes, warnings=tuple(warnings))


def overall_words(spec: GroundingSpec) -> tuple[str, ...]:
    """The word of each overall phrase (its last word: "cats" for "two cats")."""
    return tuple(_word(p) for p in spec.overall_phrases)
