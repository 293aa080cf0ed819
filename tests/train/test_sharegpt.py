"""ShareGPT prompts: the truncated bundled file, de-duplication, and an evaluation split never trained on."""

from __future__ import annotations

import json

import pytest

from sglang_dspark.train.corpus import build_corpus, shingles
from sglang_dspark.train.sharegpt import (
    ShareGPTError,
    eval_prompts,
    is_eval_prompt,
    read_conversations,
    sharegpt_pool,
)
from sglang_dspark.train.trainer import _EVAL_FILES, REPO_ROOT

EVAL_FILE = REPO_ROOT / "sglang_dspark" / "data" / "eval_sharegpt.jsonl"


def _conv(i, text):
    return {"id": f"c{i}", "conversations": [{"from": "human", "value": text},
                                             {"from": "gpt", "value": "an answer"}]}


def test_reads_records_up_to_a_truncated_tail(tmp_path):
    records = [_conv(i, f"Question number {i} about something long enough") for i in range(3)]
    text = json.dumps(records, indent=2)
    cut = text[: text.rindex('"an answer"') - 5]  # inside the last record
    path = tmp_path / "cut.json"
    path.write_text(cut)
    assert [r["id"] for r in read_conversations(path)] == ["c0", "c1"]
    path.write_text(text)
    assert [r["id"] for r in read_conversations(path)] == ["c0", "c1", "c2"]
    path.write_text('{"not": "an array"}')
    with pytest.raises(ShareGPTError):
        list(read_conversations(path))


def test_pool_dedups_normalises_and_drops_the_eval_split(tmp_path):
    texts = ["Tell me   about the moon landing in 1968.", "tell me about the moon landing in 1968.",
             "短い質問ですがよろしくお願いします。これは日本語です。", "hi",
             "Write a limerick about a cat who learned to code."]
    evals = [f"Explain topic {i} to a curious twelve year old." for i in range(400)]
    evals = [t for t in evals if is_eval_prompt(t)]
    assert evals  # ~2 % of 400
    path = tmp_path / "sg.json"
    path.write_text(json.dumps([_conv(i, t) for i, t in enumerate(texts + evals)]))
    pool = [t for _, t in sharegpt_pool(1200, path)]
    assert pool[:2] == ["Tell me about the moon landing in 1968.",
                        "Write a limerick about a cat who learned to code."]
    assert not set(evals) & set(pool)
    assert eval_prompts(100, path=path, max_chars=1200) != [] and all(
        is_eval_prompt(t) for t in eval_prompts(100, path=path, max_chars=1200))


def test_shipped_eval_prompts_are_the_eval_split_and_disjoint_from_training():
    shipped = [json.loads(line)["prompt"] for line in EVAL_FILE.read_text().splitlines()]
    assert shipped == eval_prompts(len(shipped), seed=0, max_chars=600)
    assert "sglang_dspark/data/eval_sharegpt.jsonl" in _EVAL_FILES
    corpus = build_corpus(seed=0, num_chat=300, num_code=0, chat_source="sharegpt",
                          exclude=shipped)
    assert len(corpus) == 300 and all(p.source == "sharegpt" for p in corpus)
    banned = set().union(*(shingles(t) for t in shipped))
    for prompt in corpus:
        assert not is_eval_prompt(prompt.text)
        assert not shingles(prompt.text) & banned
