"""Parser for LMD's stage-1 text format, written so model output is never executed.

The reference implementation runs ``ast.literal_eval`` on whatever the LLM returns. That is
"safe" in the narrow sense, but it still drives the full Python parser with untrusted input
(deep nesting can exhaust the stack, huge numeric literals cost CPU) and silently accepts
Python-only values (sets, dicts, bytes, complex numbers). In a batch pipeline that feeds
millions of completions, we want a tiny, bounded grammar with one clear failure type instead:

    completion := [prose "Objects:"] boxlist "Background prompt:" text ["Negative prompt:" text]
    boxlist    := "[" [ entry ("," entry)* [","] ] "]"   (a tuple "( ... )" is accepted too)
    entry      := "(" string "," coords [","] ")"        (a list "[ ... ]" is accepted too)
    coords     := "[" number "," number "," number "," number [","] "]"  (or a tuple)

Anything else raises :class:`LayoutParseError` with a short reason that can be stored in a
run's failure records. Layout semantics (dropping degenerate boxes, rescaling) are kept in
:func:`filter_boxes` so the raw parse can be cached and re-normalised later.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

CANVAS = 512
#: Hard caps so one hostile completion cannot stall a worker.
MAX_TEXT_CHARS = 1_000_000
MAX_BOXES = 1000
MAX_NUMBER_CHARS = 64

_OBJECTS_MARK = "Objects:"
_BG_MARK = "Background prompt:"
_NEG_MARK = "Negative prompt:"


class LayoutParseError(ValueError):
    """A completion that is not a usable layout; ``reason`` is short and safe to log."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Box:
    """One object box, ``[x, y, w, h]`` in canvas pixels (512x512, origin top-left)."""

    caption: str
    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        """Centre x; the spatial predicate compares centres."""
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        """Centre y (y grows downward)."""
        return self.y + self.h / 2

    def as_list(self) -> list:
        return [self.x, self.y, self.w, self.h]


@dataclass(frozen=True)
class Layout:
    """A parsed completion: boxes, background prompt, negative prompt ("" when absent)."""

    boxes: list[Box] = field(default_factory=list)
    background: str = ""
    negative: str = ""


# --------------------------------------------------------------------------- tokenizer

_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:_\d+)*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_PUNCT = "[](),"
_SIMPLE_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r",
                   "a": "\a", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


def _read_string(text: str, i: int) -> tuple[str, int]:
    """Read a quoted string starting at ``text[i]`` (either quote type); return (value, end)."""
    quote = text[i]
    if text.startswith(quote * 3, i):
        raise LayoutParseError("triple-quoted strings not supported")
    i += 1
    out: list[str] = []
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\n":
            raise LayoutParseError("newline inside string")
        if ch == "\\":
            if i + 1 >= n:
                break
            nxt = text[i + 1]
            if nxt in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[nxt])
                i += 2
                continue
            width = {"x": 2, "u": 4, "U": 8}.get(nxt)
            if width:
                digits = text[i + 2:i + 2 + width]
                if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    raise LayoutParseError("bad escape in string")
                code = int(digits, 16)
                if code > 0x10FFFF:
                    raise LayoutParseError("bad escape in string")
                out.append(chr(code))
                i += 2 + width
                continue
            out.append("\\")  # unknown escapes keep the backslash, as Python does
            i += 1
            continue
        out.append(ch)
        i += 1
    raise LayoutParseError("unterminated string")


def _tokenize(text: str) -> list[tuple[str, object]]:
    """Split the box list into ('punct', c) / ('str', s) / ('num', float) tokens."""
    tokens: list[tuple[str, object]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in _PUNCT:
            tokens.append(("punct", ch))
            i += 1
        elif ch in "'\"":
            value, i = _read_string(text, i)
            tokens.append(("str", value))
        else:
            m = _NUMBER_RE.match(text, i)
            if not m:
                raise LayoutParseError(f"unexpected character {ch!r} at {i}")
            lit = m.group(0)
            if len(lit) > MAX_NUMBER_CHARS:
                raise LayoutParseError("number literal too long")
            end = m.end()
            if end < n and (text[end].isalnum() or text[end] in "_.'\""):
                raise LayoutParseError(f"unexpected character {text[end]!r} at {end}")
            value = float(lit.replace("_", ""))
            if not math.isfinite(value):
                raise LayoutParseError("non-finite number")
            tokens.append(("num", value))
            i = end
    return tokens


class _Parser:
    """Recursive-descent parser over the fixed, three-level box grammar (no general nesting)."""

    _CLOSE = {"[": "]", "(": ")"}

    def __init__(self, tokens: list[tuple[str, object]]):
        self.toks = tokens
        self.pos = 0

    def _peek(self):
        return self.toks[self.pos] if self.pos < len(self.toks) else ("eof", None)

    def _take(self):
        tok = self._peek()
        if tok[0] == "eof":
            raise LayoutParseError("truncated box list")
        self.pos += 1
        return tok

    def _open(self, what: str) -> str:
        kind, val = self._take()
        if kind != "punct" or val not in self._CLOSE:
            raise LayoutParseError(f"expected '[' or '(' to start {what}")
        return self._CLOSE[val]

    def _sequence(self, what: str, item):
        """Parse '[' item (',' item)* [','] ']' with a matching closer; return the items."""
        close = self._open(what)
        items = []
        while True:
            if self._peek() == ("punct", close):
                self._take()
                return items
            items.append(item())
            kind, val = self._take()
            if (kind, val) == ("punct", close):
                return items
            if (kind, val) != ("punct", ","):
                raise LayoutParseError(f"expected ',' or {close!r} in {what}")

    def _scalar(self):
        kind, val = self._take()
        if kind not in ("str", "num"):
            raise LayoutParseError("unexpected bracket inside box entry")
        return val

    def _entry(self) -> Box:
        def entry_item():
            if self._peek() in (("punct", "["), ("punct", "(")):
                return self._sequence("coordinates", self._scalar)
            return self._scalar()

        parts = self._sequence("box entry", entry_item)
        if len(parts) != 2 or not isinstance(parts[0], str) or not isinstance(parts[1], list):
            raise LayoutParseError("box entry must be (name, [x, y, w, h])")
        coords = parts[1]
        if len(coords) != 4 or not all(isinstance(c, float) for c in coords):
            raise LayoutParseError("box must have 4 numbers")
        return Box(parts[0], *(_num(c) for c in coords))

    def parse(self) -> list[Box]:
        boxes = []

        def entry():
            if len(boxes) >= MAX_BOXES:
                raise LayoutParseError(f"more than {MAX_BOXES} boxes")
            box = self._entry()
            boxes.append(box)
            return box

        self._sequence("box list", entry)
        if self.pos != len(self.toks):
            raise LayoutParseError("trailing data after box list")
        return boxes


def _num(v: float) -> float | int:
    """Keep integers as ints (the common case) so round-trips look like the input."""
    return int(v) if v.is_integer() and abs(v) < 2**53 else v


def parse_box_list(text: str) -> list[Box]:
    """Parse just the ``[('name', [x, y, w, h]), ...]`` part."""
    return _Parser(_tokenize(text)).parse()


def parse_layout(text: str) -> Layout:
    """Parse one LMD completion (rules of §1.3) into a :class:`Layout`.

    Mirrors the reference: keep what follows "Objects:", require exactly one
    "Background prompt:", allow at most one "Negative prompt:", treat an empty box section or one
    saying "No objects" as ``[]``, strip fields, and map a negative prompt of "None" to "".
    """
    if not isinstance(text, str):
        raise LayoutParseError("completion is not text")
    if len(text) > MAX_TEXT_CHARS:
        raise LayoutParseError("completion too long")
    if _OBJECTS_MARK in text:
        text = text.split(_OBJECTS_MARK, 1)[1]
    parts = text.split(_BG_MARK)
    if len(parts) != 2:
        raise LayoutParseError("missing 'Background prompt:'" if len(parts) < 2
                               else "more than one 'Background prompt:'")
    box_text, rest = parts
    neg_parts = rest.split(_NEG_MARK)
    if len(neg_parts) > 2:
        raise LayoutParseError("more than one 'Negative prompt:'")
    background = neg_parts[0].strip()
    negative = neg_parts[1].strip() if len(neg_parts) == 2 else ""
    if negative == "None":
        negative = ""

    box_text = box_text.strip()
    try:
        boxes = parse_box_list(box_text)
    except LayoutParseError:
        if not box_text or "No objects" in box_text:
            boxes = []
        else:
            raise
    return Layout(boxes=boxes, background=background, negative=negative)


# --------------------------------------------------------------------------- filter_boxes

def _is_background(b: Box, canvas: int) -> bool:
    return (b.w >= canvas and b.h >= canvas) or b.x > canvas or b.y > canvas


def _out_of_bounds(b: Box, canvas: int) -> bool:
    return b.x < 0 or b.y < 0 or b.x + b.w > canvas or b.y + b.h > canvas


def filter_boxes(boxes: list[Box], canvas: int = CANVAS, max_scale: float = 3.0,
                 scale_boxes: bool = False) -> tuple[list[Box], list[str]]:
    """LMD's post-parse box clean-up (§1.3); returns (boxes, notes).

    Steps: drop boxes with w<=0 or h<=0; drop "background" boxes (w>=canvas and h>=canvas, or
    starting beyond the canvas); if any remaining box is out of bounds (or ``scale_boxes``, the
    reference's non-benchmark default), shift the group to the origin and scale it uniformly to
    fit, scale capped at ``max_scale``; strip a trailing "." from captions; round coordinates.
    ``notes`` records every change so a run can explain why a layout differs from the raw text.
    """
    notes: list[str] = []
    kept: list[Box] = []
    for i, b in enumerate(boxes):
        if not (b.w > 0 and b.h > 0):  # also drops NaN sizes
            notes.append(f"dropped box {i} ({b.caption!r}): non-positive size")
        elif _is_background(b, canvas):
            notes.append(f"dropped box {i} ({b.caption!r}): background box")
        else:
            kept.append(b)

    if kept and (scale_boxes or any(_out_of_bounds(b, canvas) for b in kept)):
        min_x = min(b.x for b in kept)
        min_y = min(b.y for b in kept)
        span_x = max(b.x + b.w for b in kept) - min_x
        span_y = max(b.y + b.h for b in kept) - min_y
        scale = min(canvas / span_x, canvas / span_y, max_scale)
        kept = [replace(b, x=(b.x - min_x) * scale, y=(b.y - min_y) * scale,
                        w=b.w * scale, h=b.h * scale) for b in kept]
        notes.append(f"rescaled all boxes: shift ({-min_x:g}, {-min_y:g}), scale {scale:.4g}")

    out = []
    for b in kept:
        caption = b.caption[:-1] if b.caption.endswith(".") else b.caption
        if caption != b.caption:
            notes.append(f"stripped trailing '.' from {b.caption!r}")
        out.append(Box(caption, round(b.x), round(b.y), round(b.w), round(b.h)))
    return out, notes
