"""Which token columns of the encoded prompt belong to a box's phrase.

Cross-attention maps have one column per token of the 77-token CLIP encoding (BOS at 0, then up
to 75 content tokens, then EOS/padding). LMD guides *all* tokens of a box's phrase, i.e. of the
box name as the LLM wrote it, article and attributes included ("a red apple" -> the columns of
`a`, `red`, `apple`; LMD-REFERENCE.md 2.0, 2.4), and reads a single "word token", the last
sub-token of the phrase's last word, for the SAM point and the attention transfer.

The reference matches the phrase's token *string* inside the prompt's token string. We match
token sequences instead, which is the same for whole tokens and cannot match half a token
(the string "at</w>" occurs inside "cat</w>"). CLIP's BPE works word by word (its pre-tokenizer
splits on whitespace, letter runs and punctuation, and lowercases), so a word has the same
tokens alone and inside a prompt; this is what makes matching by sequence sound.

Robustness, in the order it is tried:
1. the phrase verbatim (first occurrence at or after `start`);
2. else the last word of the phrase (the noun in LMD's names), its first occurrence;
3. else nothing: an empty list, and the caller decides (warn, skip guidance for that box).
Positions past the 77-token truncation are dropped, since the text encoder never sees them.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class PhraseMatch:
    """Where a phrase sits in an encoded prompt.

    tokens:     positions in the encoded prompt (BOS = 0) of the matched tokens, truncation applied;
    word_token: position of the last sub-token of the phrase's last word (None if not visible);
    how:        "phrase" (verbatim), "last_word" (fallback) or "none";
    end:        the position just after the match, where a search for the next phrase may start.
    """

    tokens: tuple[int, ...]
    word_token: int | None
    how: str
    end: int


def content_capacity(tokenizer) -> int:
    """How many content tokens the text encoder sees: model_max_length minus BOS and EOS (75)."""
    n = getattr(tokenizer, "model_max_length", None)
    if not isinstance(n, int) or n <= 2 or n > 100_000:  # unset tokenizers report 1e30
        n = 77
    return n - 2


def word_span(tokenizer, prompt: str) -> tuple[int, int]:
    """[start, end) of the prompt's own word tokens in the encoded prompt (BOS, EOS and padding
    left out; truncation applied): what `energy_tokens: prompt` renormalises the attention over."""
    n = min(len(tokenizer.tokenize(prompt)), content_capacity(tokenizer))
    return 1, 1 + n


def _find(seq: Sequence[str], sub: Sequence[str], start: int = 0) -> int | None:
    """Index of the first occurrence of `sub` in `seq` at or after `start`."""
    n = len(sub)
    if n == 0:
        return None
    for i in range(max(0, start), len(seq) - n + 1):
        if list(seq[i:i + n]) == list(sub):
            return i
    return None


def last_word(phrase: str) -> str:
    """The phrase's last whitespace word without surrounding punctuation ("a red apple." -> "apple")."""
    words = [w.strip(string.punctuation) for w in phrase.split()]
    words = [w for w in words if w]
    return words[-1] if words else ""


def match_phrase(tokenizer, prompt: str, phrase: str, start: int = 1, word: str | None = None) -> PhraseMatch:
    """Locate `phrase` in `prompt` (see the module docstring for the fallbacks).

    `start` is a position in the encoded prompt (1 = first content token): the search begins
    there, so repeated phrases can be matched one after another; only if neither the phrase nor
    its last word occurs from there on is the whole prompt searched. `word` overrides the word
    whose last sub-token is the word token (default: the phrase's last word).
    """
    cap = content_capacity(tokenizer)
    prompt_toks = tokenizer.tokenize(prompt)  # content tokens; position = index + 1
    phrase_toks = tokenizer.tokenize(phrase)
    word = last_word(phrase) if word is None else word
    word_toks = tokenizer.tokenize(word) if word else []
    s = max(0, start - 1)

    tries = [("phrase", phrase_toks, s), ("last_word", word_toks, s)]
    if s > 0:  # nothing at or after `start`: the first occurrence anywhere (the reference's rule)
        tries += [("phrase", phrase_toks, 0), ("last_word", word_toks, 0)]
    for how, toks, frm in tries:
        first = _find(prompt_toks, toks, frm)
        if first is not None:
            length = len(toks)
            break
    else:
        return PhraseMatch((), None, "none", start)

    positions = [first + 1 + i for i in range(length)]
    word_pos = None
    if word_toks:
        span = prompt_toks[first:first + length]
        # the last occurrence of the word inside the matched span
        for i in range(len(span) - len(word_toks), -1, -1):
            if list(span[i:i + len(word_toks)]) == list(word_toks):
                word_pos = first + 1 + i + len(word_toks) - 1
                break
    visible = tuple(p for p in positions if p <= cap)
    if word_pos is not None and word_pos > cap:
        word_pos = None
    return PhraseMatch(visible, word_pos, how, first + 1 + length)


def phrase_token_indices(tokenizer, prompt: str, phrase: str) -> list[int]:
    """Token positions (in the 77-token encoded prompt, BOS at 0) of `phrase` inside `prompt`.

    Empty when neither the phrase nor its last word is in the (visible part of the) prompt.
    """
    return list(match_phrase(tokenizer, prompt, phrase).tokens)


def match_phrases(tokenizer, prompt: str, phrases: Sequence[str],
                  words: Sequence[str | None] | None = None) -> list[PhraseMatch]:
    """Match several phrases in prompt order: each search starts after the previous match.

    LMD's overall prompt lists the phrases in order ("<bg> with a cat, a dog"), so searching
    after the previous match keeps two phrases with a shared word apart. If a phrase is not found
    after the previous one it is looked up from the start (the reference's "first match wins").
    """
    out, start = [], 1
    for i, phrase in enumerate(phrases):
        word = words[i] if words is not None else None
        m = match_phrase(tokenizer, prompt, phrase, start=start, word=word)
        if m.how != "none":
            start = max(start, m.end)
        out.append(m)
    return out
