"""The 400-prompt LMD benchmark (negation, numeracy, attribution, spatial), regenerated in code.

Why regenerate instead of shipping a list: the reference benchmark is *defined* by a generator
(fixed object/colour vocabularies plus ``np.random.seed``-driven draws), and the cached LLM
responses are keyed by the exact prompt strings. Reproducing the generator byte-for-byte is what
lets us line our prompts up with the published caches (and with image folder indices, which equal
the prompt index). The tests check the result against the 250 keys of the shipped gpt-3.5 cache.

Order matters: negation (0-99), numeracy (100-199), attribution (200-299), spatial (300-399).
Prompts repeat (negation 10x, numeracy 2x, a few spatial draws collide); the k-th occurrence of a
prompt pairs with the k-th cached completion of that prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PREFIX = "A realistic photo of a scene"

#: Benchmark vocabularies, in the reference order (order drives the seeded draws).
OBJECTS: tuple[str, ...] = (
    "backpack", "book", "bottle", "bowl", "car", "cat", "chair", "cup", "dog", "laptop",
)
COLORS: tuple[str, ...] = (
    "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray",
)
NUMBER_WORDS: tuple[str, ...] = ("one", "two", "three", "four", "five")

CATEGORIES: tuple[str, ...] = ("negation", "numeracy", "attribution", "spatial")

#: Spatial relation pairs drawn per seed, in order; (relation of object 1, relation of object 2).
SPATIAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top"),
)

NEGATION_REPEATS = 10
NUMERACY_REPEATS = 2


def plural(noun: str) -> str:
    """English plural for the simple nouns used here.

    A tiny rule set instead of a dependency (``inflect``): the benchmark vocabulary is ten regular
    nouns, and the rules below also cover the usual sibilant / consonant-y cases so a reused helper
    does not silently produce "boxs" or "babys".
    """
    if not noun:
        return noun
    lower = noun.lower()
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if lower.endswith("y") and len(lower) > 1 and lower[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def article(word: str) -> str:
    """'a' or 'an' by the first letter, exactly as the reference does (vowel letter rule).

    A letter rule, not a pronunciation rule, because the prompt strings must match the reference
    byte-for-byte ("an orange chair", "a yellow book").
    """
    return "an" if word[:1].lower() in "aeiou" else "a"


def with_article(phrase: str) -> str:
    """Prefix a phrase with its indefinite article ('an orange cup')."""
    return f"{article(phrase)} {phrase}"


def number_word(n: int) -> str:
    """'one'..'five'; the benchmark never goes beyond five."""
    if not 1 <= n <= len(NUMBER_WORDS):
        raise ValueError(f"number out of range 1..{len(NUMBER_WORDS)}: {n}")
    return NUMBER_WORDS[n - 1]


@dataclass(frozen=True)
class BenchPrompt:
    """One benchmark prompt and what its predicate needs to know.

    ``objects``/``counts``/``colors``/``relations`` are parallel tuples (one entry per object
    named by the prompt) so predicates never have to re-parse the prompt text.
    ``relations`` holds the position of each object ("left", ...) for spatial prompts.
    """

    index: int
    category: str
    prompt: str
    objects: tuple[str, ...]
    counts: tuple[int, ...] = ()
    colors: tuple[str, ...] = ()
    relations: tuple[str, ...] = ()

    @property
    def relation(self) -> str | None:
        """Relation of the first object w.r.t. the second ('left' means obj1 left of obj2)."""
        return self.relations[0] if self.relations else None

    def to_dict(self) -> dict:
        """Plain dict for JSON output."""
        return {
            "index": self.index, "category": self.category, "prompt": self.prompt,
            "objects": list(self.objects), "counts": list(self.counts),
            "colors": list(self.colors), "relations": list(self.relations),
            "relation": self.relation,
        }


def _negation() -> list[tuple[str, dict]]:
    out = []
    for obj in OBJECTS:
        text = f"{PREFIX} without {plural(obj)}"
        out += [(text, dict(objects=(obj,), counts=(0,)))] * NEGATION_REPEATS
    return out


def _numeracy() -> list[tuple[str, dict]]:
    out = []
    for n in range(1, len(NUMBER_WORDS) + 1):
        for obj in OBJECTS:
            noun = obj if n == 1 else plural(obj)
            text = f"{PREFIX} with {number_word(n)} {noun}"
            out += [(text, dict(objects=(obj,), counts=(n,)))] * NUMERACY_REPEATS
    return out


def _draw_two(rng_pool: tuple[str, ...]) -> list[str]:
    # np.random.choice(..., replace=False) uses the legacy global RandomState, which is what the
    # reference seeds; any other generator would produce different (valid-looking) prompts.
    return [str(x) for x in np.random.choice(rng_pool, 2, replace=False)]


def _attribution() -> list[tuple[str, dict]]:
    out = []
    saved = np.random.get_state()
    try:
        for seed in range(100):
            np.random.seed(seed)
            c1, c2 = _draw_two(COLORS)
            o1, o2 = _draw_two(OBJECTS)
            text = f"{PREFIX} with {with_article(f'{c1} {o1}')} and {with_article(f'{c2} {o2}')}"
            out.append((text, dict(objects=(o1, o2), counts=(1, 1), colors=(c1, c2))))
    finally:
        np.random.set_state(saved)  # do not disturb callers that use the global RNG
    return out


def _spatial() -> list[tuple[str, dict]]:
    out = []
    saved = np.random.get_state()
    try:
        for seed in range(25):
            np.random.seed(seed)  # seeded once per 4 prompts, as in the reference
            for r1, r2 in SPATIAL_PAIRS:
                o1, o2 = _draw_two(OBJECTS)
                text = (f"{PREFIX} with {with_article(o1)} on the {r1} "
                        f"and {with_article(o2)} on the {r2}")
                out.append((text, dict(objects=(o1, o2), counts=(1, 1), relations=(r1, r2))))
    finally:
        np.random.set_state(saved)
    return out


_CACHE: tuple[BenchPrompt, ...] | None = None


def get_lmd_prompts() -> list[BenchPrompt]:
    """All 400 prompts in benchmark order, with metadata (computed once, then cached)."""
    global _CACHE
    if _CACHE is None:
        items: list[BenchPrompt] = []
        for category, gen in zip(CATEGORIES, (_negation, _numeracy, _attribution, _spatial)):
            for text, meta in gen():
                items.append(BenchPrompt(index=len(items), category=category, prompt=text, **meta))
        _CACHE = tuple(items)
    return list(_CACHE)


def prompts_by_category() -> dict[str, list[BenchPrompt]]:
    """The prompt list split by category (each of length 100)."""
    out: dict[str, list[BenchPrompt]] = {c: [] for c in CATEGORIES}
    for p in get_lmd_prompts():
        out[p.category].append(p)
    return out
