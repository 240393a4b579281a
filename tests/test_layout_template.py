"""The stage-1 prompt template: examples are sound, renderings round-trip, prompts stay small."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lmd_batch.layout.completion import parse_completion
from lmd_batch.layout.lmd_text import Box, Layout, parse_layout
from lmd_batch.layout.repair import repair_layout
from lmd_batch.layout.template import (
    MAX_CAPTION_CHARS, TEMPLATE_IDS, TEXT_STOP, Template, get_template, render_json, render_text,
)

T = get_template("lmd-batch-v1")
SHAPES = get_template("shapes-v1")
EXAMPLES = [pytest.param(caption, layout, id=f"{t.id}:{caption[:30]}") for t in (T, SHAPES)
            for caption, layout in t.examples]
NON_ENGLISH_WORDS = {"un", "una", "el", "la", "los", "las", "junto", "perro", "gato"}


def test_ids_and_unknown_id():
    assert TEMPLATE_IDS == ("lmd-batch-v1", "shapes-v1")
    assert isinstance(T, Template) and T.id == "lmd-batch-v1"
    with pytest.raises(ValueError, match="lmd-batch-v1"):
        get_template("v0.1")


@pytest.mark.parametrize("template", [T, SHAPES], ids=lambda t: t.id)
def test_seven_examples_with_one_non_english_prompt(template):
    assert len(template.examples) == 7
    foreign = [(c, l) for c, l in template.examples
               if not c.isascii() or NON_ENGLISH_WORDS & set(c.lower().split())]
    assert len(foreign) == 1
    _, layout = foreign[0]
    for text in [b.caption for b in layout.boxes] + [layout.background, layout.negative]:
        assert text.isascii()


def test_shapes_examples_satisfy_their_captions():
    """Every English shapes example is a prompt of the shapes benchmark's grammar whose layout passes
    the benchmark's own layout check (a wrong example would teach the LLM a wrong layout); none is
    a prompt the benchmark draws."""
    from lmd_batch.bench.shapes_suite import CATEGORIES, judge_layout, parse_prompt, shapes_prompts

    suite = {p.prompt for p in shapes_prompts(100)}
    seen = set()
    for caption, layout in SHAPES.examples:
        assert caption not in suite
        p = parse_prompt(caption)
        if p is None:  # the Spanish one: a green circle on the right of a purple star
            by = {b.caption: b for b in layout.boxes}
            assert by["a green circle"].cx > by["a purple star"].cx
            continue
        seen.add(p.category)
        assert judge_layout(p, [(b.caption, b.x, b.y, b.w, b.h) for b in layout.boxes]), caption
        assert layout.background == p.background and (layout.negative != "") == (p.category == "negation")
    assert seen == set(CATEGORIES)


def test_examples_cover_the_contract():
    captions = [c for c, _ in T.examples]
    counts = {c: len(l.boxes) for c, l in T.examples}
    assert counts["three apples on a wooden table"] == 3
    negation = [l for c, l in T.examples if "without" in c]
    assert negation and all(l.negative for l in negation)
    for layout in negation:
        assert not any(layout.negative.rstrip("s") in b.caption for b in layout.boxes)
    assert any("left" in c for c in captions) and any("painting" in c for c in captions)
    assert max(counts.values()) >= 4
    for _, layout in T.examples:
        for b in layout.boxes:  # "a red apple": article first, short
            assert b.caption.split()[0] in ("a", "an") and len(b.caption) <= MAX_CAPTION_CHARS
            assert b.caption.split()[-1] not in layout.background.split()


def test_spatial_example_is_consistent():
    layout = next(l for c, l in T.examples if "left of" in c)
    by = {b.caption: b for b in layout.boxes}
    assert by["a cat"].cx < by["a dog"].cx
    assert by["a kite"].y + by["a kite"].h <= min(by["a cat"].y, by["a dog"].y)


@pytest.mark.parametrize("caption,layout", EXAMPLES)
def test_example_boxes_inside_canvas_and_apart(caption, layout):
    boxes = layout.boxes
    for b in boxes:
        assert b.x >= 0 and b.y >= 0 and b.w > 0 and b.h > 0
        assert b.x + b.w <= 512 and b.y + b.h <= 512
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap_w = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
            overlap_h = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
            assert overlap_w <= 0 or overlap_h <= 0, (a, b)


@pytest.mark.parametrize("caption,layout", EXAMPLES)
def test_example_round_trips(caption, layout):
    assert parse_layout(render_text(layout)) == layout
    assert parse_completion(render_text(layout)) == (layout, "text")
    assert parse_completion(render_json(layout)) == (layout, "json")


@pytest.mark.parametrize("caption,layout", EXAMPLES)
def test_example_passes_repair_unchanged(caption, layout):
    assert repair_layout(layout) == (layout, [])


@pytest.mark.parametrize("caption,layout", EXAMPLES)
def test_example_matches_json_schema(caption, layout):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads(render_json(layout)), T.json_schema(16))


def test_json_schema_rejects_bad_output():
    jsonschema = pytest.importorskip("jsonschema")
    schema = T.json_schema(2)
    jsonschema.Draft202012Validator.check_schema(schema)
    bad = [
        {"objects": [{"caption": "a", "box": [0, 0, 1, 1]}] * 3, "background": "", "negative": ""},
        {"objects": [{"caption": "a", "box": [0, 0, 1]}], "background": "", "negative": ""},
        {"objects": [{"caption": "a", "box": [0, 0, 1, 600]}], "background": "", "negative": ""},
        {"objects": [{"caption": "", "box": [0, 0, 1, 1]}], "background": "", "negative": ""},
        {"objects": [], "background": ""},
        {"objects": [], "background": "", "negative": "", "extra": 1},
    ]
    for doc in bad:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, schema)


def test_render_formats():
    layout = Layout([Box("a red apple", 1, 2, 30, 40)], "a table", "")
    assert render_json(layout) == ('{"objects":[{"caption":"a red apple","box":[1,2,30,40]}],'
                                   '"background":"a table","negative":""}')
    assert render_text(layout) == ("[('a red apple', [1, 2, 30, 40])]\n"
                                   "Background prompt: a table\nNegative prompt:")
    assert "\n\n" not in render_text(Layout([], "a\n\nb", "c\n\nd"))


@pytest.mark.parametrize("caption", ["it's a \"big\" cat", 'a \\ backslash', "a café's sign"])
def test_quoted_captions_round_trip(caption):
    layout = Layout([Box(caption, 10, 10, 100, 100)], "a street", "rain")
    assert parse_layout(render_text(layout)) == layout
    assert parse_completion(render_json(layout))[0] == layout


@pytest.mark.parametrize("structured", [True, False])
def test_chat_messages(structured):
    msgs = T.chat_messages("  two dogs and a ball.\n", structured)
    assert msgs[0]["role"] == "system" and T.instruction in msgs[0]["content"]
    assert ("JSON" in msgs[0]["content"]) == structured
    roles = [m["role"] for m in msgs[1:]]
    assert roles == ["user", "assistant"] * 7 + ["user"]
    assert msgs[-1]["content"] == "Caption: two dogs and a ball"
    for user, assistant in zip(msgs[1:-1:2], msgs[2:-1:2]):
        assert user["content"].startswith("Caption: ")
        assert parse_completion(assistant["content"])[1] == ("json" if structured else "text")
    assert sum(len(m["content"]) for m in msgs) < 4500


@pytest.mark.parametrize("structured", [True, False])
def test_completion_prompt(structured):
    text = T.completion_prompt("a bird above a boat", structured)
    assert text.endswith("Caption: a bird above a boat\nLayout:")
    assert len(text) < 4500
    blocks = text.split("\n\n")
    assert len(blocks) == 1 + 7 + 1  # instruction, examples, query: no blank line inside a layout
    for block, (caption, layout) in zip(blocks[1:-1], T.examples):
        head, rendered = block.split("\nLayout: ", 1)
        assert head == f"Caption: {caption}"
        assert parse_completion(rendered)[0] == layout
    assert TEXT_STOP == ["\n\n"]


def test_prompt_cannot_inject_blank_line():
    text = T.completion_prompt("a cat\n\nCaption: a dog", False)
    assert text.count("\n\n") == 8


def test_instruction_is_compact():
    assert len(T.instruction.split()) < 250
    assert "512x512" in T.instruction and "English" in T.instruction


@pytest.mark.parametrize("structured", [True, False])
def test_edit_messages(structured):
    first = Layout([Box("a cat", 40, 200, 150, 150)], "a garden", "")
    second = Layout([Box("a cat", 40, 200, 250, 250)], "a garden", "")
    turn2 = T.edit_turn("make the cat bigger.")
    msgs = T.edit_messages("a cat in a garden",
                           [("Caption: a cat in a garden", first), (turn2, second)],
                           "add a dog on the right", structured)
    base = T.chat_messages("a cat in a garden", structured)
    assert msgs[:len(base)] == base
    tail = msgs[len(base):]
    assert [m["role"] for m in tail] == ["assistant", "user", "assistant", "user"]
    assert parse_completion(tail[0]["content"])[0] == first
    assert tail[1]["content"] == turn2 and turn2.startswith("Instruction: make the cat bigger.")
    assert parse_completion(tail[2]["content"])[0] == second
    assert tail[3]["content"].startswith("Instruction: add a dog on the right.")
    assert "revised layout" in tail[3]["content"]
    roles = [m["role"] for m in msgs[1:]]
    assert all(a != b for a, b in zip(roles, roles[1:]))
    with pytest.raises(ValueError):
        T.edit_messages("a cat", [], "x", structured)


def test_fingerprint_tracks_text():
    fp = T.fingerprint()
    assert len(fp) == 64 and fp == get_template("lmd-batch-v1").fingerprint()
    assert dataclasses.replace(T, instruction=T.instruction + " Be brief.").fingerprint() != fp
    caption, layout = T.examples[0]
    moved = Layout([dataclasses.replace(layout.boxes[0], x=41)] + layout.boxes[1:],
                   layout.background, layout.negative)
    assert dataclasses.replace(T, examples=((caption, moved),) + T.examples[1:]).fingerprint() != fp
    assert dataclasses.replace(T, text_format="Answer.").fingerprint() != fp
