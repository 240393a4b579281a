"""LMD's image-evaluation protocol on hand-made detections: queries, threshold, NMS, predicates.

The detector is replaced by what it would output (label, score, box), so each rule of
LMD-REFERENCE.md 3.2 is checked exactly, including the edge cases the issue lists: a missing
object, two candidates, ties on centres, car vs carrot, colour words in captions.
"""

from __future__ import annotations

import pytest

from lmd_batch.bench.lmd_prompts import BenchPrompt, get_lmd_prompts
from lmd_batch.evaluate.protocol import (
    Detection, bench_prompt, box_scores, filter_detections, iou, judge, protocol_labels, queries_for, verify_score,
)


def D(label, score=0.9, x=0, y=0, w=10, h=10):
    return Detection(label, score, x, y, w, h)


def bp(category, objects, counts=(), colors=(), relations=()):
    return BenchPrompt(0, category, "p", tuple(objects), tuple(counts), tuple(colors), tuple(relations))


# ---------------------------------------------------------------------------- queries

def test_queries_per_category_follow_the_protocol():
    prompts = get_lmd_prompts()
    neg, num, attr, spa = prompts[0], prompts[150], prompts[200], prompts[300]
    assert queries_for(protocol_labels(neg)) == ["a photo of a backpack"]
    assert queries_for(protocol_labels(num)) == ["a photo of a cat"]
    assert queries_for(protocol_labels(attr)) == ["a photo of a blue dog", "a photo of a white bowl"]
    assert queries_for(protocol_labels(spa)) == ["a photo of a bottle", "a photo of a dog"]
    # the article follows the colour word in attribution queries ("an orange ...")
    orange = next(p for p in prompts if p.category == "attribution" and "orange" in p.colors)
    assert any(label.startswith("an orange ") for label in protocol_labels(orange))


def test_bench_prompt_lookup_is_exact_text():
    p = get_lmd_prompts()[300]
    assert bench_prompt(p.prompt) == p
    assert bench_prompt(p.prompt + " ") is None and bench_prompt("a red ball") is None


# ---------------------------------------------------------------------------- threshold and NMS

def test_score_threshold_keeps_equal_scores_and_drops_lower():
    dets = [D("a cat", 0.15), D("a cat", 0.1499, x=100), D("a cat", 0.5, x=200)]
    kept = filter_detections(dets, 0.15, 0.15)
    assert [d.score for d in kept] == [0.5, 0.15]  # best first


def test_class_aware_nms_keeps_overlapping_boxes_of_other_labels():
    a = D("a cat", 0.9, 0, 0, 100, 100)
    b = D("a cat", 0.8, 10, 10, 100, 100)      # IoU with a ~0.68: suppressed
    c = D("a dog", 0.7, 5, 5, 100, 100)        # other label: kept with class-aware NMS
    d = D("a cat", 0.6, 90, 90, 100, 100)      # IoU with a ~0.003: kept
    assert filter_detections([b, a, c, d], 0.15, 0.15, class_aware=True) == [a, c, d]
    assert filter_detections([b, a, c, d], 0.15, 0.15, class_aware=False) == [a, d]


def test_nms_threshold_is_strict_on_equal_iou():
    a = D("a cup", 0.9, 0, 0, 10, 10)
    b = D("a cup", 0.8, 5, 0, 10, 10)  # IoU exactly 1/3
    assert iou(a, b) == pytest.approx(1 / 3)
    assert filter_detections([a, b], 0.0, 1 / 3) == [a, b]  # suppressed only above the threshold
    assert filter_detections([a, b], 0.0, 0.33) == [a]


def test_equal_scores_keep_the_detector_order():
    a, b = D("a cat", 0.5, x=0), D("a cat", 0.5, x=300)
    assert filter_detections([b, a], 0.1, 0.15) == [b, a]


# ---------------------------------------------------------------------------- predicates

def test_negation():
    p = bp("negation", ["cat"], [0])
    assert judge(p, [])
    assert judge(p, [D("a dog")])
    assert not judge(p, [D("a cat")])


def test_numeracy_counts_exactly():
    p = bp("numeracy", ["cat"], [3])
    assert judge(p, [D("a cat", x=i * 50) for i in range(3)])
    assert not judge(p, [D("a cat", x=i * 50) for i in range(2)])  # missing object
    assert not judge(p, [D("a cat", x=i * 50) for i in range(4)])  # more is as wrong as fewer


def test_car_is_not_carrot():
    p = bp("numeracy", ["car"], [1])
    assert judge(p, [D("a car")])
    assert not judge(p, [D("a carrot")])
    assert judge(bp("negation", ["car"], [0]), [D("a carrot")])


def test_attribution_needs_each_colour_on_its_object():
    p = bp("attribution", ["dog", "bowl"], [1, 1], ["blue", "white"])
    assert judge(p, [D("a blue dog"), D("a white bowl", x=50)])
    assert not judge(p, [D("a blue dog")])                     # missing object
    assert not judge(p, [D("a white dog"), D("a blue bowl")])  # colours swapped
    # colour words elsewhere in a label do not bind: "a blue cup and a white bowl" names no blue dog
    assert not judge(p, [D("a white bowl and a blue cup"), D("a dog")])


def test_spatial_uses_first_detection_centres():
    p = bp("spatial", ["bottle", "dog"], [1, 1], relations=["left", "right"])
    left_bottle = D("a bottle", 0.9, x=10, w=50)
    right_dog = D("a dog", 0.8, x=300, w=50)
    assert judge(p, [left_bottle, right_dog])
    assert not judge(p, [left_bottle])  # missing object fails
    # two candidates: the first (most confident after filtering) counts
    far_right_bottle = D("a bottle", 0.95, x=400, w=50)
    assert not judge(p, filter_detections([left_bottle, right_dog, far_right_bottle], 0.15, 0.15))
    # ties on centres fail (strict comparison)
    assert not judge(p, [D("a bottle", x=100, w=50), D("a dog", x=100, w=50)])


@pytest.mark.parametrize("relation,b1,b2,ok", [
    ("top", (0, 10), (0, 300), True), ("top", (0, 300), (0, 10), False),
    ("bottom", (0, 300), (0, 10), True), ("right", (300, 0), (10, 0), True), ("right", (10, 0), (300, 0), False),
])
def test_spatial_relations(relation, b1, b2, ok):
    p = bp("spatial", ["cat", "cup"], [1, 1], relations=[relation, "x"])
    dets = [D("a cat", x=b1[0], y=b1[1], w=40, h=40), D("a cup", x=b2[0], y=b2[1], w=40, h=40)]
    assert judge(p, dets) is ok


# ---------------------------------------------------------------------------- verification

def test_box_scores_need_the_caption_and_overlap():
    boxes = [("a red ball", (0, 0, 100, 100)), ("a blue cube", (200, 200, 100, 100))]
    dets = [D("a red ball", 0.6, 5, 5, 100, 100), D("a red ball", 0.9, 200, 200, 100, 100),
            D("a blue cube", 0.3, 210, 200, 100, 100)]
    scores = box_scores(boxes, dets, 0.5)
    assert scores == [0.6, 0.3]  # the 0.9 red ball sits on the cube's box: it confirms nothing
    assert verify_score(scores) == 0.3
    assert box_scores(boxes, [], 0.5) == [0.0, 0.0]
    assert verify_score([]) == 1.0
