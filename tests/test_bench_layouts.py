"""Acceptance and edge-case tests for the LMD benchmark prompts, layout parser and predicates.

The acceptance check reproduces the published layout-level accuracy of gpt-3.5-turbo on the
shipped reference cache (100/97/100/99, overall 99.0); if that drifts, our prompts, parser or
predicates no longer match LMD's benchmark.
"""

from __future__ import annotations

import collections
import json
import math
import time
from pathlib import Path

import pytest

from lmd_batch.bench.lmd_prompts import (
    CATEGORIES, COLORS, OBJECTS, article, get_lmd_prompts, number_word, plural,
)
from lmd_batch.bench.predicates import (
    check_attribution, check_negation, check_numeracy, check_prompt, check_spatial,
    colored_name_matches, evaluate_per_prompt, evaluate_responses, name_matches,
)
from lmd_batch.layout.lmd_text import (
    MAX_BOXES, Box, Layout, LayoutParseError, filter_boxes, parse_layout,
)

REF = Path(__file__).resolve().parents[2] / "shared/data/lmd-reference-layouts/gpt-3.5-turbo.json"
BG = "\nBackground prompt: A realistic scene\nNegative prompt: "


@pytest.fixture(scope="module")
def reference():
    if not REF.exists():
        pytest.skip(f"reference layouts not found at {REF}")
    return json.loads(REF.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- acceptance

def test_reference_layout_accuracy(reference):
    assert evaluate_responses(reference) == {
        "negation": 100.0, "numeracy": 97.0, "attribution": 100.0, "spatial": 99.0,
        "overall": 99.0,
    }


def test_reference_all_parse(reference):
    for prompt, completions in reference.items():
        for c in completions:
            parse_layout(c)  # the published cache is well-formed


def test_cli_json(reference):
    from typer.testing import CliRunner
    import typer
    from lmd_batch.cli_bench import bench_app

    app = typer.Typer()
    app.add_typer(bench_app, name="bench")
    runner = CliRunner()
    res = runner.invoke(app, ["bench", "layouts", "--responses", str(REF), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["overall"] == 99.0
    res = runner.invoke(app, ["bench", "layouts", "--responses", str(REF)])
    assert res.exit_code == 0 and "numeracy" in res.output
    res = runner.invoke(app, ["bench", "layouts", "--run", "/nonexistent/run"])
    assert res.exit_code == 1 and "not an lmd-batch run folder" in res.output
    res = runner.invoke(app, ["bench", "layouts", "--run", "x", "--responses", str(REF)])
    assert res.exit_code == 2 and "exactly one of" in res.output


# ----------------------------------------------------------------------------- prompts

def test_prompt_set_matches_reference_keys(reference):
    counts = collections.Counter(p.prompt for p in get_lmd_prompts())
    assert set(counts) == set(reference)
    assert {k: len(v) for k, v in reference.items()} == dict(counts)


def test_prompt_set_shape():
    ps = get_lmd_prompts()
    assert len(ps) == 400
    assert len({p.prompt for p in ps}) == 250
    assert [p.index for p in ps] == list(range(400))
    cats = [p.category for p in ps]
    for i, cat in enumerate(CATEGORIES):
        assert cats[100 * i:100 * (i + 1)] == [cat] * 100
    per_cat = collections.defaultdict(set)
    for p in ps:
        per_cat[p.category].add(p.prompt)
    assert {c: len(s) for c, s in per_cat.items()} == {
        "negation": 10, "numeracy": 50, "attribution": 100, "spatial": 90}


def test_prompt_metadata_consistent():
    for p in get_lmd_prompts():
        assert p.prompt.startswith("A realistic photo of a scene ")
        assert all(o in OBJECTS for o in p.objects)
        if p.category == "negation":
            assert p.counts == (0,) and p.prompt.endswith(f"without {plural(p.objects[0])}")
        elif p.category == "numeracy":
            n = p.counts[0]
            noun = p.objects[0] if n == 1 else plural(p.objects[0])
            assert p.prompt.endswith(f"with {number_word(n)} {noun}")
        elif p.category == "attribution":
            (c1, c2), (o1, o2) = p.colors, p.objects
            assert c1 != c2 and o1 != o2 and c1 in COLORS and c2 in COLORS
            assert p.prompt.endswith(f"with {article(c1)} {c1} {o1} and {article(c2)} {c2} {o2}")
        else:
            (o1, o2), (r1, r2) = p.objects, p.relations
            assert o1 != o2 and p.relation == r1
            assert p.prompt.endswith(f"with {article(o1)} {o1} on the {r1} "
                                     f"and {article(o2)} {o2} on the {r2}")
            assert {r1, r2} in ({"left", "right"}, {"top", "bottom"})


def test_prompts_do_not_disturb_global_rng():
    import numpy as np
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    get_lmd_prompts()
    assert np.random.rand() == expected


def test_plural_and_articles():
    assert [plural(o) for o in ("cat", "bus", "box", "dish", "baby", "toy")] == [
        "cats", "buses", "boxes", "dishes", "babies", "toys"]
    assert article("orange") == "an" and article("red") == "a"
    assert [number_word(i) for i in range(1, 6)] == ["one", "two", "three", "four", "five"]
    with pytest.raises(ValueError):
        number_word(6)


# ----------------------------------------------------------------------------- parser

def test_parse_basic_and_objects_prefix():
    text = ("Caption: x\nObjects: [('a cat', [10, 20, 30.5, 40]), (\"a dog\", [-1, 2e1, 3, 4])]"
            "\nBackground prompt:  A park \nNegative prompt: None")
    lay = parse_layout(text)
    assert lay == Layout([Box("a cat", 10, 20, 30.5, 40), Box("a dog", -1, 20, 3, 4)], "A park", "")


def test_parse_negative_optional_and_empty_list():
    assert parse_layout("[]\nBackground prompt: empty room") == Layout([], "empty room", "")
    assert parse_layout("No objects\nBackground prompt: x\nNegative prompt: cats").negative == "cats"
    assert parse_layout("\nBackground prompt: x").boxes == []


def test_parse_quotes_and_escapes():
    lay = parse_layout(r"""[("a 'red' cat", [0, 0, 1, 1]), ('a \'blue\' dog\\', [1, 1, 2, 2]), """
                       r"""('caf\xe9 \u00e9', [0,0,1,1],),]""" + BG)
    assert [b.caption for b in lay.boxes] == ["a 'red' cat", "a 'blue' dog\\", "café é"]


@pytest.mark.parametrize("text", [
    "Sure! Here is the layout you asked for.",
    "```python\n[('a cat', [0, 0, 10, 10])]\n```" + BG,
    "[('a cat', [0, 0, 10, 10]), ('a dog', [1, 2" + BG,
    "[('a cat', [0, 0, 10, 10])" + BG,
    "[('a cat, [0, 0, 10, 10])]" + BG,
    "[('a cat', [0, 0, 10])]" + BG,
    "[('a cat', [0, 0, 10, nan])]" + BG,
    "[('a cat', [0, 0, 10, 1e999])]" + BG,
    "[('a cat', ['0', 0, 10, 10])]" + BG,
    "[('a cat', [[0], 0, 10, 10])]" + BG,
    "[('a cat', [0, 0, 10, 10])] trailing" + BG,
    "{'a cat': [0, 0, 10, 10]}" + BG,
    "[('a cat', [0, 0, 10, 10])]\nBackground prompt: a\nBackground prompt: b",
    "[('a cat', [0, 0, 10, 10])]\nBackground prompt: a\nNegative prompt: b\nNegative prompt: c",
    "[('a cat', [0, 0, 10, 10])]",
    "",
    "[__import__('os').system('x')]" + BG,
    "__import__('os').system('touch /tmp/pwned')" + BG,
    "[('a cat', [0, 0, 10, 10]), (lambda: 1)()]" + BG,
    "[" * 100000 + BG,
])
def test_parse_rejects_hostile(text):
    with pytest.raises(LayoutParseError) as info:
        parse_layout(text)
    assert info.value.reason and "\n" not in info.value.reason


def test_payload_not_executed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    import os
    monkeypatch.setattr(os, "system", lambda *_: pytest.fail("executed model output"))
    with pytest.raises(LayoutParseError):
        parse_layout(f"[('a', [0,0,1,1]), __import__('os').system('touch {marker}')]" + BG)
    assert not marker.exists()


def test_parse_non_string_rejected():
    with pytest.raises(LayoutParseError):
        parse_layout(None)  # type: ignore[arg-type]


def test_parse_large_inputs_fast():
    t0 = time.perf_counter()
    many = "[" + ", ".join(f"('obj {i}', [{i % 500}, 1, 5, 5])" for i in range(500)) + "]" + BG
    assert len(parse_layout(many).boxes) == 500
    huge = "[('" + "a" * 1_000_000 + "', [0, 0, 1, 1])]" + BG
    with pytest.raises(LayoutParseError, match="too long"):
        parse_layout(huge)
    near = "[('" + "a" * 999_000 + "', [0, 0, 1, 1])]" + BG
    assert len(parse_layout(near).boxes[0].caption) == 999_000
    too_many = "[" + ", ".join("('x', [1, 1, 5, 5])" for _ in range(MAX_BOXES + 1)) + "]" + BG
    with pytest.raises(LayoutParseError, match="boxes"):
        parse_layout(too_many)
    assert time.perf_counter() - t0 < 10


# ----------------------------------------------------------------------------- filter_boxes

def test_filter_drops_degenerate_and_background():
    boxes = [Box("a cat.", 10.4, 20.6, 30, 40), Box("neg", 0, 0, -5, 10), Box("zero", 0, 0, 10, 0),
             Box("nan", 0, 0, math.nan, 10), Box("bg", 0, 0, 512, 512), Box("far", 600, 0, 5, 5)]
    out, notes = filter_boxes(boxes)
    assert out == [Box("a cat", 10, 21, 30, 40)]
    assert len(notes) == 6  # 5 drops + 1 trailing-dot strip


def test_filter_rescales_all_when_out_of_bounds():
    boxes = [Box("a", -100, 0, 100, 100), Box("b", 400, 400, 200, 200)]
    out, notes = filter_boxes(boxes)
    assert any("rescaled" in n for n in notes)
    for b in out:
        assert b.x >= 0 and b.y >= 0 and b.x + b.w <= 512 and b.y + b.h <= 512
    assert out[0].x == 0 and out[1].x + out[1].w == 512


def test_filter_scale_capped_and_in_bounds_untouched():
    inside = [Box("a", 10, 10, 20, 20)]
    assert filter_boxes(inside) == ([Box("a", 10, 10, 20, 20)], [])
    out, _ = filter_boxes([Box("a", -10, 0, 20, 20)])  # span 20 -> would scale 25.6x, capped at 3
    assert out == [Box("a", 0, 0, 60, 60)]


# ----------------------------------------------------------------------------- predicates

def test_name_matching_word_boundaries():
    assert name_matches("a red car", "car") and name_matches("two cars", "car")
    assert not name_matches("a carrot", "car") and not name_matches("a scarf", "car")
    assert not name_matches("a category sign", "cat") and name_matches("A Cat", "cat")
    assert name_matches("three bookshelves", "book") is False


def test_negation_and_numeracy():
    boxes = [Box("a cat", 0, 0, 10, 10), Box("a carrot", 20, 0, 10, 10)]
    assert check_negation(boxes, "car") and not check_negation(boxes, "cat")
    assert check_numeracy(boxes, "cat", 1) and not check_numeracy(boxes, "cat", 2)
    assert check_numeracy([], "dog", 0) is True and not check_numeracy([], "dog", 1)


def test_attribution_colour_words():
    boxes = [Box("a red backpack", 0, 0, 10, 10), Box("a blue cup", 20, 0, 10, 10)]
    assert check_attribution(boxes, ("backpack", "cup"), ("red", "blue"))
    assert not check_attribution(boxes, ("backpack", "cup"), ("blue", "red"))  # swapped colours
    assert not check_attribution(boxes[:1], ("backpack", "cup"), ("red", "blue"))  # missing
    assert colored_name_matches("a bright red leather backpack", "red", "backpack")
    assert not colored_name_matches("a red cup and a blue backpack", "red", "backpack")
    assert not colored_name_matches("a backpack with red straps", "red", "backpack")
    assert not colored_name_matches("a reddish backpack", "red", "backpack")
    assert not colored_name_matches("a red carrot", "red", "car")


def test_spatial_rules():
    left = Box("a dog", 0, 0, 100, 100)
    right = Box("a cat", 300, 300, 100, 100)
    assert check_spatial([left, right], "dog", "cat", "left")
    assert check_spatial([left, right], "cat", "dog", "right")
    assert check_spatial([left, right], "dog", "cat", "top")
    assert check_spatial([left, right], "cat", "dog", "bottom")
    assert not check_spatial([left, right], "dog", "cat", "right")
    assert not check_spatial([left], "dog", "cat", "left")  # missing object fails
    # tie on centres fails (strict comparison)
    tie = [Box("a dog", 0, 0, 100, 100), Box("a cat", 0, 0, 100, 100)]
    assert not check_spatial(tie, "dog", "cat", "left")
    assert not check_spatial(tie, "dog", "cat", "top")
    # two candidates: the first matching box is used
    two = [Box("a dog", 400, 0, 10, 10), Box("a cat", 200, 0, 10, 10), Box("a dog", 0, 0, 10, 10)]
    assert check_spatial(two, "dog", "cat", "right") and not check_spatial(two, "dog", "cat", "left")
    # car vs carrot: the carrot is not the car
    veg = [Box("a carrot", 0, 0, 10, 10), Box("a cat", 200, 0, 10, 10), Box("a car", 400, 0, 10, 10)]
    assert check_spatial(veg, "car", "cat", "right")
    with pytest.raises(ValueError):
        check_spatial(veg, "car", "cat", "above")


def test_evaluate_occurrence_order_and_failures():
    ps = get_lmd_prompts()
    neg = ps[0]  # "... without backpacks", 10 occurrences
    good = "[]" + BG + "backpacks"
    bad = "[('a backpack', [0, 0, 10, 10])]" + BG
    responses = {neg.prompt: [good, bad, "garbage"]}  # occurrences 4..10 missing -> failures
    res = evaluate_per_prompt(responses)
    assert res[:10] == [True, False, False] + [False] * 7
    scores = evaluate_responses(responses)
    assert scores["negation"] == 1.0 and scores["overall"] == 0.25
    assert check_prompt(neg, [])


def test_evaluate_empty_responses():
    assert evaluate_responses({}) == {c: 0.0 for c in (*CATEGORIES, "overall")}
