"""LMD's image-evaluation protocol (LMD-REFERENCE.md 3.2), detector-independent.

Queries per benchmark category ("a photo of a red backpack": the colour is in the query for
attribute binding), the score threshold, class-aware greedy NMS, and the same predicates as the
layout-level benchmark applied to detections whose name is the query without "a photo of ".
Kept free of torch so the rules are unit-tested on hand-made detections, and the detector
(evaluate/owl.py) only has to produce (label, score, box) triples.

Detection order matters for the spatial rule ("the first detection of each object"): we order
by score, best first, ties by the detector's own order, which is what the reference's NMS output
gives; so "first" means "most confident".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

QUERY_PREFIX = "a photo of "


@dataclass(frozen=True)
class Detection:
    """One detector box in image pixels, [x, y, w, h] from the top-left."""

    label: str
    score: float
    x: float
    y: float
    w: float
    h: float

    def as_row(self) -> dict:
        return dict(label=self.label, score=float(self.score), x=float(self.x), y=float(self.y),
                    w=float(self.w), h=float(self.h))


@lru_cache(maxsize=1)
def _bench_by_text() -> dict:
    from lmd_batch.bench.lmd_prompts import get_lmd_prompts

    return {p.prompt: p for p in get_lmd_prompts()}


def bench_prompt(prompt: str):
    """The LMD benchmark prompt with this exact text, or None (any other prompt)."""
    return _bench_by_text().get(prompt)


def protocol_labels(bp) -> list[str]:
    """Detector labels of a benchmark prompt, in query order ('a red backpack', 'a blue cup')."""
    from lmd_batch.bench.lmd_prompts import article

    if bp.category == "attribution":
        return [f"{article(c)} {c} {o}" for c, o in zip(bp.colors, bp.objects)]
    if bp.category == "spatial":
        return [f"{article(o)} {o}" for o in bp.objects[:2]]
    return [f"{article(bp.objects[0])} {bp.objects[0]}"]


def queries_for(labels: list[str]) -> list[str]:
    return [QUERY_PREFIX + label for label in labels]


def iou(a: Detection | tuple, b: Detection | tuple) -> float:
    """Intersection over union of two [x, y, w, h] boxes (0 for empty ones)."""
    ax, ay, aw, ah = (a.x, a.y, a.w, a.h) if isinstance(a, Detection) else a
    bx, by, bw, bh = (b.x, b.y, b.w, b.h) if isinstance(b, Detection) else b
    iw = min(ax + aw, bx + bw) - max(ax, bx)
    ih = min(ay + ah, by + bh) - max(ay, by)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def filter_detections(dets: list[Detection], score_threshold: float, nms_threshold: float,
                      class_aware: bool = True) -> list[Detection]:
    """Keep score >= threshold, then greedy NMS (suppress IoU > nms_threshold with a better box,
    within the same label when class_aware); result ordered best first, ties by input order."""
    ranked = sorted((d for d in dets if d.score >= score_threshold), key=lambda d: -d.score)
    kept: list[Detection] = []
    for d in ranked:
        if all((class_aware and k.label != d.label) or iou(k, d) <= nms_threshold for k in kept):
            kept.append(d)
    return kept


def judge(bp, dets: list[Detection]) -> bool:
    """The benchmark predicate of `bp`'s category on detections (names = labels)."""
    from lmd_batch.bench.predicates import check_prompt
    from lmd_batch.layout.lmd_text import Box

    return check_prompt(bp, [Box(d.label, d.x, d.y, d.w, d.h) for d in dets])


def box_scores(boxes_px: list[tuple[str, tuple]], dets: list[Detection], min_iou: float) -> list[float]:
    """Per layout box (caption, [x, y, w, h] pixels): the best score among detections labelled with
    its caption that overlap it by IoU >= min_iou; 0.0 when none does."""
    out = []
    for caption, box in boxes_px:
        best = [d.score for d in dets if d.label == caption and iou(d, box) >= min_iou]
        out.append(max(best) if best else 0.0)
    return out


def verify_score(scores: list[float]) -> float:
    """How far the detector confirms a whole layout: its least-confirmed box (1.0: no boxes)."""
    return min(scores) if scores else 1.0
