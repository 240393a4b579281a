"""The real CLIP BPE vocabulary, offline, from the file that the PyPI package open_clip_torch ships.

OpenAI's CLIP tokenizer is defined by `bpe_simple_vocab_16e6.txt.gz`: 48,894 merges on top of 256
byte symbols (and their end-of-word forms), then <|startoftext|> and <|endoftext|>, 49,408 tokens.
We write it as the vocab.json + merges.txt pair that transformers' CLIPTokenizer reads, so tiny
models tokenise exactly like Stable Diffusion (`a photo of` -> 320 1125 539).
"""

from __future__ import annotations

import gzip
import importlib.metadata as md
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2


def _bpe_file() -> Path:
    try:
        files = md.files("open_clip_torch") or []
    except md.PackageNotFoundError:
        from lmd_batch.errors import MissingDependencyError

        raise MissingDependencyError("open_clip_torch", "diffusion") from None
    for f in files:
        if str(f).endswith("bpe_simple_vocab_16e6.txt.gz"):
            return Path(f.locate())
    raise FileNotFoundError("open_clip_torch does not ship bpe_simple_vocab_16e6.txt.gz")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_clip_vocab(folder: Path) -> Path:
    """Write vocab.json and merges.txt into `folder`; return the folder."""
    lines = gzip.open(_bpe_file()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : N_MERGES + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder


def clip_tokenizer(folder: Path, model_max_length: int = 77, pad_token: str | None = None):
    """A transformers CLIPTokenizer over the real CLIP vocabulary (written into `folder`)."""
    from transformers import CLIPTokenizer

    if not (folder / "vocab.json").exists():
        write_clip_vocab(folder)
    kwargs = {"model_max_length": model_max_length}
    if pad_token:
        kwargs["pad_token"] = pad_token
    return CLIPTokenizer.from_pretrained(str(folder), **kwargs)
