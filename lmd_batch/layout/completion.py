"""Read any stage-1 completion, JSON or LMD text format, into a :class:`Layout`.

Models do not always answer in the format they were asked for: a chat model may wrap JSON in a
code fence or add a sentence around it, and a completion model prompted with the text format may
still emit JSON. One reader that detects the format keeps the pipeline from failing on those
cosmetic differences, while anything structurally wrong still becomes a
:class:`LayoutParseError` with a short reason fit for a failure record.

Nothing is evaluated. JSON goes through ``json.loads`` only after a small bounded scanner has
found one balanced object (capping nesting depth, so hostile input cannot reach Python's
recursion limit); NaN/Infinity are rejected; the shape is then checked by hand.
"""

from __future__ import annotations

import json
import math
import re

from lmd_batch.layout.lmd_text import MAX_BOXES, MAX_TEXT_CHARS, Box, Layout, LayoutParseError, parse_layout

#: Deepest JSON nesting we read; a valid layout needs 3 ({ objects [ { box [ ).
MAX_JSON_DEPTH = 20

_FENCE_LANG = re.compile(r"[A-Za-z0-9_+-]*[ \t]*\r?\n?")


def _strip_fence(text: str) -> str:
    """Return the inside of the first ``` fence (to its end, if the closing fence was cut off)."""
    start = text.find("```")
    if start < 0:
        return text
    body = text[start + 3:]
    body = body[_FENCE_LANG.match(body).end():]
    end = body.find("```")
    return body if end < 0 else body[:end]


def _balanced_object(text: str, start: int) -> str:
    """The JSON object starting at ``text[start] == '{'``, found by counting brackets outside strings."""
    depth = 0
    in_string = escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise LayoutParseError("json: nested too deeply")
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    raise LayoutParseError("json: truncated")


def _reject_constant(name: str):
    raise LayoutParseError(f"json: {name} is not allowed")


def _number(value, where: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LayoutParseError(f"json: {where} is not a number")
    try:
        as_float = float(value)
    except OverflowError:
        as_float = math.inf
    if not math.isfinite(as_float):
        raise LayoutParseError(f"json: {where} is not finite")
    if isinstance(value, int):
        return value
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _text_field(obj: dict, key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LayoutParseError(f"json: {key} is not a string")
    return value.strip()


def _first(obj: dict, *keys):
    for key in keys:
        if key in obj:
            return obj[key]
    return None


def _layout_from_json(data) -> Layout:
    """Check the decoded value against the layout shape (leniently: ``bbox``/``name`` accepted)."""
    if not isinstance(data, dict):
        raise LayoutParseError("json: top level is not an object")
    objects = data.get("objects")
    if objects is None:
        raise LayoutParseError("json: missing objects")
    if not isinstance(objects, list):
        raise LayoutParseError("json: objects is not a list")
    if len(objects) > MAX_BOXES:
        raise LayoutParseError("too many boxes")
    boxes = []
    for i, obj in enumerate(objects):
        where = f"objects[{i}]"
        if not isinstance(obj, dict):
            raise LayoutParseError(f"json: {where} is not an object")
        caption = _first(obj, "caption", "name")
        if not isinstance(caption, str):
            raise LayoutParseError(f"json: {where}.caption is not a string")
        box = _first(obj, "box", "bbox")
        if not isinstance(box, list):
            raise LayoutParseError(f"json: {where}.box is not a list")
        if len(box) != 4:
            raise LayoutParseError(f"json: {where}.box has {len(box)} numbers")
        coords = [_number(v, f"{where}.box[{j}]") for j, v in enumerate(box)]
        boxes.append(Box(caption, *coords))
    background = _text_field(data, "background")
    negative = _text_field(data, "negative")
    if negative.lower() == "none":
        negative = ""
    return Layout(boxes=boxes, background=background, negative=negative)


def _parse_json(text: str, start: int) -> Layout:
    candidate = _balanced_object(text, start)
    try:
        data = json.loads(candidate, parse_constant=_reject_constant)
    except LayoutParseError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, over-long integer literals
        msg = getattr(exc, "msg", None) or "invalid"
        raise LayoutParseError(f"json: {msg}") from None
    return _layout_from_json(data)


def parse_completion(text: str) -> tuple[Layout, str]:
    """Parse one completion; returns (layout, "json" | "text") or raises LayoutParseError.

    JSON is chosen when, after removing a code fence, a ``{`` comes before any ``[`` (so prose
    around the object is tolerated); everything else goes to LMD's text-format parser.
    """
    if not isinstance(text, str):
        raise LayoutParseError("completion is not text")
    if len(text) > MAX_TEXT_CHARS:
        raise LayoutParseError("completion too long")
    body = _strip_fence(text).strip()
    brace = body.find("{")
    if brace >= 0:
        bracket = body.find("[")
        if bracket < 0 or brace < bracket:
            return _parse_json(body, brace), "json"
    return parse_layout(body), "text"
