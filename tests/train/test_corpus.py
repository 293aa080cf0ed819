"""The offline prompt corpus: deterministic, split by hash, disjoint from the eval prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sglang_dspark.train.corpus import (
    build_corpus,
    corpus_summary,
    heldout_split,
    load_prompt_file,
    shingles,
)
from sglang_dspark.train.trainer import _default_exclusions

DATA = Path(__file__).resolve().parents[1] / "data"
EVAL_FILES = [DATA / "eval_chat.jsonl", DATA / "eval_code.jsonl"]


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(seed=0, num_chat=400, num_code=400, heldout_fraction=0.1,
                        exclude=_default_exclusions())


def test_eval_files_are_well_formed():
    for path, kind in zip(EVAL_FILES, ("chat", "code")):
        rows = load_prompt_file(path)
        assert len(rows) == 24
        assert len({r["id"] for r in rows}) == 24
        assert len({r["prompt"] for r in rows}) == 24
        assert all(r["category"] == kind and len(r["prompt"]) > 20 for r in rows)
        for line in path.read_text(encoding="utf-8").splitlines():
            json.loads(line)


def test_deterministic_and_seeded(corpus):
    again = build_corpus(seed=0, num_chat=400, num_code=400, heldout_fraction=0.1,
                         exclude=_default_exclusions())
    assert again == corpus
    other = build_corpus(seed=1, num_chat=400, num_code=400, heldout_fraction=0.1)
    assert [p.text for p in other] != [p.text for p in corpus]


def test_counts_kinds_and_split(corpus):
    summary = corpus_summary(corpus)
    assert summary["chat/train"] + summary["chat/heldout"] == 400
    assert summary["code/train"] + summary["code/heldout"] == 400
    assert len({p.text for p in corpus}) == len(corpus)
    assert len({p.id for p in corpus}) == len(corpus)
    for prompt in corpus:
        assert prompt.split == heldout_split(prompt.text, 0.1)
        assert prompt.id.startswith(prompt.kind + "-")
    frac = sum(p.split == "heldout" for p in corpus) / len(corpus)
    assert 0.05 < frac < 0.15
    # The split of a prompt does not depend on the corpus it sits in.
    small = build_corpus(seed=0, num_chat=20, num_code=20, heldout_fraction=0.1)
    assert all(p.split == heldout_split(p.text, 0.1) for p in small)
    # Chat and code are interleaved, not blocked.
    assert {p.kind for p in corpus[:10]} == {"chat", "code"}


def test_sources_are_varied(corpus):
    sources = {p.source.split(":")[0] for p in corpus}
    assert {"function", "docstring", "unicodedata", "pydoc_topics"} <= sources
    code = [p.text for p in corpus if p.kind == "code"]
    assert any(t.startswith("Write a Python function") for t in code)
    assert any("```python" in t for t in code)


def test_disjoint_from_eval_prompts(corpus):
    eval_prompts = [r["prompt"] for path in EVAL_FILES for r in load_prompt_file(path)]
    corpus_texts = {p.text for p in corpus}
    banned = set()
    for text in eval_prompts:
        assert text not in corpus_texts
        banned |= shingles(text)
    for prompt in corpus:
        assert not (shingles(prompt.text) & banned), prompt.text
        assert all(e.lower() not in prompt.text.lower() for e in eval_prompts)


def test_exclude_removes_overlapping_candidates():
    base = build_corpus(seed=0, num_chat=50, num_code=0)
    victim = base[3].text
    filtered = build_corpus(seed=0, num_chat=50, num_code=0, exclude=[victim])
    assert victim not in {p.text for p in filtered}
    assert len(filtered) == 50
