"""Hostile and sloppy completions: the reader either gives a usable layout or a short reason.

Every case runs the real parser and repair code on text a model could plausibly (or a hostile
prompt could deliberately) produce; none of them may crash with anything but
LayoutParseError / LayoutRejected.
"""

from __future__ import annotations

import json
import math

import pytest

from lmd_batch.layout.completion import parse_completion
from lmd_batch.layout.lmd_text import MAX_BOXES, Box, Layout, LayoutParseError
from lmd_batch.layout.repair import LayoutRejected, read_layout, repair_layout, validate_layout
from lmd_batch.layout.template import MAX_CAPTION_CHARS, render_json, render_text

GOOD = Layout([Box("a cat", 20, 200, 200, 200), Box("a dog", 280, 200, 200, 200)], "a park", "birds")


def _json(objects, background="a park", negative=""):
    return json.dumps({"objects": objects, "background": background, "negative": negative})


def _text(entries: str, background="a park", negative=""):
    return f"{entries}\nBackground prompt: {background}\nNegative prompt: {negative}"


# ----------------------------------------------------------------------------- format detection

def test_detects_both_formats():
    assert parse_completion(render_json(GOOD)) == (GOOD, "json")
    assert parse_completion(render_text(GOOD)) == (GOOD, "text")
    assert parse_completion("Objects: " + render_text(GOOD)) == (GOOD, "text")


@pytest.mark.parametrize("fence", ["```json\n{}\n```", "```\n{}\n```", "```JSON {}```", "```json\n{}"])
def test_code_fences(fence):
    text = "Sure, here it is:\n" + fence.replace("{}", render_json(GOOD)) + "\nHope this helps."
    assert parse_completion(text) == (GOOD, "json")


def test_code_fence_around_text_format():
    assert parse_completion(f"```\n{render_text(GOOD)}\n```") == (GOOD, "text")


def test_json_with_text_around_it():
    text = f"Layout for your caption: {render_json(GOOD)} -- let me know {{if}} you want changes."
    assert parse_completion(text) == (GOOD, "json")


def test_alias_keys_and_none_negative():
    text = json.dumps({"objects": [{"name": "a cat", "bbox": [1.0, 2, 3.5, 4]}], "background": " a park ",
                       "negative": "None"})
    layout, fmt = parse_completion(text)
    assert fmt == "json" and layout == Layout([Box("a cat", 1, 2, 3.5, 4)], "a park", "")
    assert isinstance(layout.boxes[0].x, int)


def test_missing_background_and_negative_default_to_empty():
    layout, _ = parse_completion('{"objects": [{"caption": "a cat", "box": [0, 0, 9, 9]}]}')
    assert (layout.background, layout.negative) == ("", "")


def test_escaped_quotes_in_json_caption():
    text = _json([{"caption": 'a sign saying "it\'s {open}]"', "box": [10, 10, 100, 50]}])
    layout, _ = parse_completion(text)
    assert layout.boxes[0].caption == 'a sign saying "it\'s {open}]"'


def test_quote_in_text_caption():
    layout, _ = parse_completion(_text("[(\"it's a cat\", [10, 10, 100, 100]), ('a \\'dog\\'', [200, 10, 100, 100])]"))
    assert [b.caption for b in layout.boxes] == ["it's a cat", "a 'dog'"]


# ----------------------------------------------------------------------------- rejected outright

@pytest.mark.parametrize("text,reason", [
    ("I'm sorry, I cannot draw that.", "Background prompt"),
    ("", "Background prompt"),
    ('{"objects": [{"caption": "a cat", "box": [0, 0, 10', "json: truncated"),
    ('{"objects": [{"caption": "a cat", "box": [0, 0, 10]}]}', "json: objects[0].box has 3 numbers"),
    ('{"objects": [{"caption": "a cat", "box": [0, 0, 10, NaN]}]}', "NaN"),
    ('{"objects": [{"caption": "a cat", "box": [0, 0, 10, -Infinity]}]}', "Infinity"),
    ('{"objects": [{"caption": "a cat", "box": [0, 0, 10, 1e999]}]}', "objects[0].box[3] is not finite"),
    ('{"objects": [{"caption": "a cat", "box": [0, 0, true, 10]}]}', "objects[0].box[2] is not a number"),
    ('{"objects": [{"caption": "a cat", "box": [0, "0", 1, 10]}]}', "objects[0].box[1] is not a number"),
    ('{"objects": [{"caption": 7, "box": [0, 0, 1, 10]}]}', "objects[0].caption is not a string"),
    ('{"objects": [{"caption": "a cat", "box": "0 0 1 1"}]}', "objects[0].box is not a list"),
    ('{"objects": ["a cat"]}', "objects[0] is not an object"),
    ('{"objects": {"a": 1}}', "objects is not a list"),
    ('{"boxes": []}', "missing objects"),
    ('{"objects": [], "background": 3}', "background is not a string"),
    ('{"objects": [1 2]}', "json: "),
    ('{"objects": [' + "9" * 5000 + "]}", "json: "),
])
def test_parse_errors(text, reason):
    with pytest.raises(LayoutParseError) as info:
        parse_completion(text)
    assert reason in info.value.reason
    with pytest.raises(LayoutRejected) as rejected:
        read_layout(text)
    assert rejected.value.reason == "unparseable" and rejected.value.detail == info.value.reason


@pytest.mark.parametrize("value", [None, 42, b"{}"])
def test_non_text(value):
    with pytest.raises(LayoutParseError, match="not text"):
        parse_completion(value)


def test_one_megabyte_completion():
    text = '{"objects": [' + " " * (1 << 20) + "]}"
    with pytest.raises(LayoutParseError, match="too long"):
        parse_completion(text)


@pytest.mark.parametrize("text", [
    "[" * 10000 + "]" * 10000,
    "[" * 10000 + "]" * 10000 + "\nBackground prompt: x",
    "{" * 10000 + "}" * 10000,
    '{"objects": ' + "[" * 10000 + "]" * 10000 + "}",
    "```json\n" + '{"a":' * 10000,
])
def test_deep_nesting(text):
    with pytest.raises(LayoutParseError):
        parse_completion(text)


def test_more_than_max_boxes():
    objects = [{"caption": "a dot", "box": [0, 0, 1, 1]}] * (MAX_BOXES + 1)
    with pytest.raises(LayoutParseError, match="too many boxes"):
        parse_completion(_json(objects))
    entries = ", ".join(["('a dot', [0, 0, 1, 1])"] * (MAX_BOXES + 1))
    with pytest.raises(LayoutParseError):
        parse_completion(_text(f"[{entries}]"))


# ----------------------------------------------------------------------------- repaired

@pytest.mark.parametrize("fmt", ["json", "text"])
def test_500_boxes_keeps_16(fmt):
    boxes = [Box(f"a dot {i}", (i % 25) * 20, (i // 25) * 20, 10, 10) for i in range(500)]
    text = render_json(Layout(boxes, "a wall", "")) if fmt == "json" else render_text(Layout(boxes, "a wall", ""))
    layout, got_fmt, notes = read_layout(text)
    assert got_fmt == fmt and layout.boxes == boxes[:16]
    assert "kept the first 16 of 500 boxes" in notes


def test_negative_sizes_dropped():
    text = _json([{"caption": "a cat", "box": [10, 10, -50, 50]}, {"caption": "a dog", "box": [100, 100, 50, 0]},
                  {"caption": "a bird", "box": [300, 20, 60, 60]}])
    layout, _, notes = read_layout(text)
    assert [b.caption for b in layout.boxes] == ["a bird"]
    assert sum("non-positive size" in n for n in notes) == 2


def test_nan_size_in_text_format_dropped():
    raw = Layout([Box("a cat", 10, 10, math.nan, 50), Box("a dog", 100, 100, 50, math.inf)], "a park", "")
    layout, notes = repair_layout(raw)
    assert layout.boxes == [] and len(notes) == 2
    validate_layout(layout, len(raw.boxes))  # the background alone is still drawable
    with pytest.raises(LayoutRejected) as info:
        validate_layout(Layout([], "", ""), len(raw.boxes))
    assert info.value.reason == "no_valid_boxes"


def test_nan_literal_in_text_format_rejected():
    with pytest.raises(LayoutParseError):
        parse_completion(_text("[('a cat', [10, 10, nan, 50])]"))


def test_far_off_canvas_rescaled_inside():
    text = _json([{"caption": "a cat", "box": [-2000, 100, 400, 300]}, {"caption": "a dog", "box": [300, 300, 1500, 400]}])
    layout, _, notes = read_layout(text)
    assert len(layout.boxes) == 2 and any("rescaled" in n for n in notes)
    for b in layout.boxes:
        assert 0 <= b.x and 0 <= b.y and b.w >= 1 and b.h >= 1
        assert b.x + b.w <= 512 and b.y + b.h <= 512
    assert layout.boxes[0].cx < layout.boxes[1].cx  # relative placement survives


def test_background_box_dropped():
    text = _json([{"caption": "a sky", "box": [0, 0, 512, 512]}, {"caption": "a bird", "box": [10, 10, 50, 50]}])
    layout, _, notes = read_layout(text)
    assert [b.caption for b in layout.boxes] == ["a bird"] and any("background box" in n for n in notes)


def test_caption_normalisation():
    long_caption = "a " + " ".join(["very"] * 40) + " big cat"
    raw = Layout([Box("  a   red\n apple. ", 0, 0, 10, 10), Box("   ", 20, 20, 10, 10),
                  Box(long_caption, 40, 40, 10, 10), Box(".", 60, 60, 10, 10)],
                 "  a wooden   table.  ", "None")
    layout, notes = repair_layout(raw)
    assert [b.caption for b in layout.boxes][0] == "a red apple"
    truncated = layout.boxes[1].caption
    assert len(truncated) <= MAX_CAPTION_CHARS and long_caption.startswith(truncated) and truncated.endswith("very")
    assert len(layout.boxes) == 2
    assert layout.background == "a wooden table" and layout.negative == ""
    assert any("empty caption" in n for n in notes) and any("truncated caption" in n for n in notes)
    assert any("only '.'" in n for n in notes)


def test_long_background_and_negative_capped():
    raw = Layout([Box("a cat", 0, 0, 10, 10)], "word " * 100, "thing " * 100)
    layout, notes = repair_layout(raw)
    assert len(layout.background) <= 160 and len(layout.negative) <= 120
    assert not layout.background.endswith(" ") and layout.negative.endswith("thing")
    assert len([n for n in notes if "truncated" in n]) == 2


def test_rounding_and_tiny_boxes():
    raw = Layout([Box("a cat", 10.4, 10.6, 100.5, 99.5), Box("a speck", 50, 50, 0.3, 10)], "a room", "")
    layout, notes = repair_layout(raw)
    assert layout.boxes == [Box("a cat", 10, 11, 100, 100)]
    assert any("smaller than a pixel" in n for n in notes)


# ----------------------------------------------------------------------------- validation

def test_all_boxes_dropped_without_background_is_rejected():
    objects = [{"caption": "a cat", "box": [0, 0, 0, 0]}, {"caption": "  ", "box": [1, 1, 5, 5]}]
    with pytest.raises(LayoutRejected) as info:
        read_layout(_json(objects, background=""))
    assert info.value.reason == "no_valid_boxes" and "2" in info.value.detail
    layout, _, notes = read_layout(_json(objects))  # with a background: LMD draws the background alone
    assert layout.boxes == [] and layout.background == "a park" and len(notes) == 2


def test_full_canvas_box_of_a_negation_prompt_leaves_the_background():
    text = "[('A realistic scene', [0, 0, 512, 512])]\nBackground prompt: A realistic scene\nNegative prompt: laptops"
    layout, fmt, notes = read_layout(text)
    assert (layout.boxes, layout.negative, fmt) == ([], "laptops", "text")
    assert any("background box" in n for n in notes)


@pytest.mark.parametrize("text", ['{"objects": []}', _text("[]", background=""), _text("No objects", "")])
def test_nothing_is_rejected(text):
    with pytest.raises(LayoutRejected) as info:
        read_layout(text)
    assert info.value.reason == "empty_layout"


@pytest.mark.parametrize("text", [_json([], background="an empty beach at dawn."),
                                  _text("[]", background="an empty beach at dawn")])
def test_zero_boxes_with_background_is_valid(text):
    layout, _, notes = read_layout(text)
    assert layout == Layout([], "an empty beach at dawn", "") and notes == []


def test_good_layout_passes_untouched():
    for text in (render_json(GOOD), render_text(GOOD)):
        assert read_layout(text)[0] == GOOD and read_layout(text)[2] == []


def test_max_boxes_and_canvas_parameters():
    text = _json([{"caption": "a cat", "box": [10, 10, 100, 100]}, {"caption": "a dog", "box": [150, 10, 200, 100]},
                  {"caption": "a bird", "box": [20, 150, 50, 50]}])
    layout, _, notes = read_layout(text, max_boxes=2, canvas=256)
    assert [b.caption for b in layout.boxes] == ["a cat", "a dog"]
    assert all(b.x + b.w <= 256 and b.y + b.h <= 256 for b in layout.boxes)
    assert any("rescaled" in n for n in notes) and "kept the first 2 of 3 boxes" in notes
