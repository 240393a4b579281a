"""Layout-level LMD benchmark predicates (§3.2, ``eval_stage_one``) and response scoring.

These are the image-evaluation predicates applied directly to the LLM's boxes, so stage 1 can
be scored without running diffusion or a detector. Names are matched on word boundaries (with an
optional plural ending) because captions are free text: "car" must match "a red car" and
"two cars" but not "a carrot"; "cat" must not match "a category sign".

Scoring is positional: the k-th occurrence of a prompt in benchmark order is judged on the k-th
completion for that prompt, and a completion that does not parse (or is missing) is a failure,
never skipped: skipping would inflate accuracy for weak LLMs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

from lmd_batch.bench.lmd_prompts import CATEGORIES, BenchPrompt, get_lmd_prompts, plural
from lmd_batch.layout.lmd_text import Box, LayoutParseError, filter_boxes, parse_layout


@lru_cache(maxsize=None)
def _noun_re(noun: str) -> re.Pattern:
    forms = sorted({re.escape(noun), re.escape(plural(noun))}, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(forms) + r")\b", re.IGNORECASE)


@lru_cache(maxsize=None)
def _colored_re(color: str, noun: str) -> re.Pattern:
    # The colour must qualify this noun: it comes before the noun within the same caption, with
    # only plain words in between (no punctuation, no 'and'/'with'/'or'), so "a red cup and a
    # blue bowl" does not count as a red bowl. Separators (whitespace) and words (word chars,
    # hyphens) cannot overlap, which keeps the regex linear on hostile captions.
    forms = sorted({re.escape(noun), re.escape(plural(noun))}, key=len, reverse=True)
    return re.compile(
        r"\b" + re.escape(color) + r"\b(?:\s+(?!and\b|with\b|or\b)\w[\w-]*)*?\s+(?:"
        + "|".join(forms) + r")\b",
        re.IGNORECASE,
    )


def name_matches(caption: str, noun: str) -> bool:
    """True if ``caption`` names ``noun`` as a whole word (singular or plural)."""
    return _noun_re(noun).search(caption) is not None


def colored_name_matches(caption: str, color: str, noun: str) -> bool:
    """True if ``caption`` names ``noun`` qualified by ``color`` ('a red backpack')."""
    return _colored_re(color, noun).search(caption) is not None


def count_matching(boxes: Iterable[Box], noun: str) -> int:
    """Number of boxes naming ``noun``."""
    return sum(1 for b in boxes if name_matches(b.caption, noun))


def first_matching(boxes: Iterable[Box], noun: str) -> Box | None:
    """First box naming ``noun`` (the reference takes the first match, not the best)."""
    return next((b for b in boxes if name_matches(b.caption, noun)), None)


def check_negation(boxes: Sequence[Box], obj: str) -> bool:
    """The negated object must not appear in any box."""
    return count_matching(boxes, obj) == 0


def check_numeracy(boxes: Sequence[Box], obj: str, n: int) -> bool:
    """Exactly ``n`` boxes name the object (more is as wrong as fewer)."""
    return count_matching(boxes, obj) == n


def check_attribution(boxes: Sequence[Box], objs: Sequence[str], colors: Sequence[str]) -> bool:
    """Each (colour, object) pair appears in at least one box."""
    return all(any(colored_name_matches(b.caption, c, o) for b in boxes)
               for c, o in zip(colors, objs))


def check_spatial(boxes: Sequence[Box], obj1: str, obj2: str, relation: str) -> bool:
    """Compare the centres of the first box of each object; a missing object or a tie fails.

    ``relation`` is where obj1 is relative to obj2: left cx1<cx2, right cx1>cx2, top cy1<cy2,
    bottom cy1>cy2 (y grows downward). Strict comparisons: an exact tie is not "left of".
    """
    b1, b2 = first_matching(boxes, obj1), first_matching(boxes, obj2)
    if b1 is None or b2 is None:
        return False
    if relation == "left":
        return b1.cx < b2.cx
    if relation == "right":
        return b1.cx > b2.cx
    if relation == "top":
        return b1.cy < b2.cy
    if relation == "bottom":
        return b1.cy > b2.cy
    raise ValueError(f"unknown relation {relation!r}")


def check_prompt(prompt: BenchPrompt, boxes: Sequence[Box]) -> bool:
    """Apply the predicate for ``prompt.category`` to already-parsed boxes."""
    if prompt.category == "negation":
        return check_negation(boxes, prompt.objects[0])
    if prompt.category == "numeracy":
        return check_numeracy(boxes, prompt.objects[0], prompt.counts[0])
    if prompt.category == "attribution":
        return check_attribution(boxes, prompt.objects, prompt.colors)
    if prompt.category == "spatial":
        return check_spatial(boxes, prompt.objects[0], prompt.objects[1], prompt.relations[0])
    raise ValueError(f"unknown category {prompt.category!r}")


def check_completion(prompt: BenchPrompt, completion: str | None) -> bool:
    """Parse, filter (as stage 1 does before stage 2) and judge one completion."""
    if not isinstance(completion, str):
        return False
    try:
        layout = parse_layout(completion)
    except LayoutParseError:
        return False
    boxes, _notes = filter_boxes(layout.boxes)
    return check_prompt(prompt, boxes)


def evaluate_per_prompt(responses: Mapping[str, Sequence[str]],
                        prompts: Sequence[BenchPrompt] | None = None) -> list[bool]:
    """One pass/fail per benchmark prompt, in benchmark order (completions are parsed and filtered)."""
    return _per_prompt(responses, prompts, check_completion)


def _per_prompt(by_prompt, prompts, judge) -> list[bool]:
    """The k-th occurrence of a prompt takes the k-th item; a missing item is a failure."""
    prompts = get_lmd_prompts() if prompts is None else prompts
    seen: dict[str, int] = defaultdict(int)
    results = []
    for p in prompts:
        k = seen[p.prompt]
        seen[p.prompt] += 1
        items = by_prompt.get(p.prompt) or []
        item = items[k] if k < len(items) else None
        results.append(judge(p, item))
    return results


def _scores(prompts: Sequence[BenchPrompt], results: list[bool]) -> dict[str, float]:
    out: dict[str, float] = {}
    for cat in CATEGORIES:
        r = [ok for p, ok in zip(prompts, results) if p.category == cat]
        out[cat] = round(100.0 * sum(r) / len(r), 2) if r else 0.0
    out["overall"] = round(100.0 * sum(results) / len(results), 2) if results else 0.0
    return out


def evaluate_responses(responses: Mapping[str, Sequence[str]],
                       prompts: Sequence[BenchPrompt] | None = None) -> dict[str, float]:
    """Accuracy in percent per category plus "overall" (mean over all prompts)."""
    prompts = get_lmd_prompts() if prompts is None else prompts
    return _scores(prompts, evaluate_per_prompt(responses, prompts))


def evaluate_boxes(boxes_by_prompt: Mapping[str, Sequence[Sequence[Box] | None]],
                   prompts: Sequence[BenchPrompt] | None = None) -> dict[str, float]:
    """Like evaluate_responses, for layouts a run already parsed and repaired (None: no layout)."""
    prompts = get_lmd_prompts() if prompts is None else prompts
    results = _per_prompt(boxes_by_prompt, prompts, lambda p, boxes: boxes is not None and check_prompt(p, boxes))
    return _scores(prompts, results)
