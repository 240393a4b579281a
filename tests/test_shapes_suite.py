"""The shapes benchmark's prompts, oracle layouts and predicates, checked through the renderer and
the detector: an oracle layout rendered as a scene must pass, and each kind of mistake must fail."""

from __future__ import annotations

import json

import pytest

from lmd_batch.bench.shapes_run import suite_inputs
from lmd_batch.bench.shapes_suite import (CATEGORIES, ShapesPrompt, caption_kind, judge, judge_layout, layout_text,
                                          oracle_layout, parse_prompt, shapes_prompts)
from lmd_batch.shapes.detect import detect_shapes
from lmd_batch.shapes.scene import Background, Scene, ShapeObject, render

PROMPTS = shapes_prompts(100)


def _scene(layout: dict, extra=()) -> Scene:
    objects = [ShapeObject(*caption_kind(b["caption"])[::-1], (b["x"] / 512, b["y"] / 512, b["w"] / 512, b["h"] / 512))
               for b in layout["boxes"]]
    return Scene(tuple(objects) + tuple(extra), Background("plain", ("sand",)))


def _found(scene: Scene, size: int = 64):
    image = render(scene, size)[0]
    return [(d.color, d.shape, d.box) for d in detect_shapes(image)]


def test_prompts_are_seeded_and_cover_the_categories():
    assert shapes_prompts(100) == PROMPTS and shapes_prompts(100, seed=1) != PROMPTS
    assert [p.category for p in PROMPTS] == [c for c in CATEGORIES for _ in range(100)]
    numeracy = [p.groups[0][0] for p in PROMPTS if p.category == "numeracy"]
    assert {n: numeracy.count(n) for n in range(1, 6)} == {n: 20 for n in range(1, 6)}
    spatial = [p.relation for p in PROMPTS if p.category == "spatial"]
    assert {r: spatial.count(r) for r in set(spatial)} == {"left of": 25, "right of": 25, "above": 25, "below": 25}
    for p in PROMPTS:
        if p.category == "attribution":
            assert len({g[1] for g in p.groups}) == 3 and len({g[2] for g in p.groups}) == 3
        if p.category == "negation":
            assert p.absent != p.groups[0][1:]
    a, b = suite_inputs(5), suite_inputs(5)
    assert a == b and len(a[0].decode().splitlines()) == 20


def test_every_prompt_parses_back_and_other_text_does_not():
    for p in PROMPTS:
        assert parse_prompt(p.prompt) == p
    for text in ["a red circle", "A realistic photo of a scene with a cat", "two red circles and no red circles on "
                 "a sand background", "six red circles on a sand background", "", "a red circle on a sand background x"]:
        assert parse_prompt(text) is None, text


def test_every_oracle_layout_passes_its_own_predicate_with_a_visible_relation():
    """All 400, not a sample: one of them once failed its own predicate (centres equal after rounding)."""
    for p in PROMPTS:
        boxes = [(b["caption"], b["x"], b["y"], b["w"], b["h"]) for b in oracle_layout(p)["boxes"]]
        assert judge_layout(p, boxes), (p.prompt, boxes)
        if p.relation is not None:
            (ax, ay), (bx, by) = [(x + w / 2, y + h / 2) for _, x, y, w, h in boxes[:2]]
            gap = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[p.relation]
            assert gap > 512 / 64, (p.prompt, boxes)


@pytest.mark.parametrize("category", CATEGORIES)
def test_oracle_layouts_rendered_pass_and_mistakes_fail(category):
    """Oracle layout -> rendered scene -> shapes detector -> predicate holds; then one mistake each."""
    for p in [q for q in PROMPTS if q.category == category][:25]:
        lay = oracle_layout(p)
        assert oracle_layout(p) == lay
        assert judge_layout(p, [(b["caption"], b["x"], b["y"], b["w"], b["h"]) for b in lay["boxes"]])
        found = _found(_scene(lay))
        assert judge(p, found), (p.prompt, lay, found)
        if category == "negation":
            bad = found + [(p.absent[0], p.absent[1], (0, 0, 5, 5))]
        elif category == "numeracy":
            bad = found[:-1]
        elif category == "attribution":  # colours swapped between two objects
            (c0, s0, b0), (c1, s1, b1) = found[0], found[1]
            bad = [(c1, s0, b0), (c0, s1, b1)] + found[2:]
        else:  # the two objects swapped
            (c0, s0, b0), (c1, s1, b1) = found[0], found[1]
            bad = [(c0, s0, b1), (c1, s1, b0)]
        assert not judge(p, bad), (p.prompt, bad)


def test_predicates_on_hand_made_detections():
    neg = parse_prompt("two red circles and no blue stars on a sand background")
    assert judge(neg, [("red", "circle", (0, 0, 9, 9))])
    assert not judge(neg, [])  # an empty image does not pass: the kept object must be there
    assert not judge(neg, [("red", "circle", (0, 0, 9, 9)), ("blue", "star", (20, 0, 9, 9))])
    assert judge(neg, [("red", "circle", (0, 0, 9, 9)), ("blue", "circle", (20, 0, 9, 9))])
    num = parse_prompt("three green triangles on a striped grey background")
    tri = ("green", "triangle", (0, 0, 5, 5))
    assert judge(num, [tri] * 3 + [("red", "triangle", (9, 9, 5, 5))]) and not judge(num, [tri] * 4)
    sp = parse_prompt("a red circle above a blue star on a white background")
    assert judge(sp, [("red", "circle", (10, 0, 9, 9)), ("blue", "star", (0, 30, 9, 9))])
    assert not judge(sp, [("red", "circle", (10, 40, 9, 9)), ("blue", "star", (0, 30, 9, 9))])
    # the largest detection of each decides
    assert judge(sp, [("red", "circle", (10, 0, 20, 20)), ("red", "circle", (0, 50, 3, 3)),
                      ("blue", "star", (0, 30, 9, 9))])
    assert caption_kind("A Red  Circle") == ("red", "circle") and caption_kind("two blue stars") is None
    assert caption_kind("blue stars") == ("blue", "star") and caption_kind("a cat") is None


def test_oracle_layout_text_reads_back_through_the_layout_reader():
    from lmd_batch.layout.repair import read_layout

    for p in PROMPTS[::40]:
        lay = oracle_layout(p)
        layout, form, notes = read_layout(layout_text(lay), max_boxes=16)
        assert [(b.caption, b.x, b.y, b.w, b.h) for b in layout.boxes] == \
            [(b["caption"], b["x"], b["y"], b["w"], b["h"]) for b in lay["boxes"]]
        assert layout.background == p.background and notes == []
        assert layout.negative == (f"{p.absent[0]} {p.absent[1]}s" if p.absent else "")
    rows = [json.loads(line) for line in suite_inputs(2)[1].decode().splitlines()]
    assert [r["prompt_id"] for r in rows] == [f"shapes-{i:03d}" for i in range(8)]


def test_a_prompt_is_a_frozen_record():
    p = PROMPTS[0]
    assert isinstance(p, ShapesPrompt) and json.loads(json.dumps(p.to_dict()))["category"] == "negation"
