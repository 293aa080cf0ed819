"""Stored answers: export, settings check, and distillation that reads features out instead of generating."""

from __future__ import annotations

import dataclasses
import gzip
import json

import pytest
import torch

from sglang_dspark.train import distill as distill_module
from sglang_dspark.train.answers import (
    AnswersError,
    OtherSettingsError,
    answer_settings,
    export_answers,
    load_answers,
    main,
    prompt_key,
)
from sglang_dspark.train.corpus import build_corpus
from sglang_dspark.train.distill import DistilledData, distill
from sglang_dspark.train.recipe import load_recipe
from sglang_dspark.train.target import load_target

from .conftest import TINY_RECIPE


@pytest.fixture(scope="module")
def generated(tiny_target_dir, tmp_path_factory):
    """A tiny target's corpus distilled by generation, and its answers exported."""
    recipe = load_recipe(TINY_RECIPE)
    recipe = dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, shard_size=5))
    model, tokenizer = load_target(tiny_target_dir)
    prompts = build_corpus(seed=1, num_chat=6, num_code=4, heldout_fraction=0.25, max_chars=140)
    out = tmp_path_factory.mktemp("generated")
    manifest = distill(model, tokenizer, prompts, out, layer_ids=recipe.drafter.target_layer_ids,
                       recipe=recipe.distill, progress=False)
    answers = out.parent / "answers.jsonl.gz"
    export_answers(out, answers)
    return recipe, model, tokenizer, prompts, out, manifest, answers


def test_export_round_trips_and_accumulates(generated, tmp_path):
    recipe, _, _, prompts, out, manifest, answers = generated
    data = DistilledData(out)
    stored = load_answers(answers, answer_settings(manifest))
    assert len(stored) == len(data)
    for i in range(len(data)):
        seq = data.get(i)
        assert stored[prompt_key(prompts[seq.prompt_index].text)] == seq.input_ids[seq.loss_mask].tolist()
    # Exporting again adds nothing and writes the same bytes.
    before = answers.read_bytes()
    assert export_answers(out, answers) == {"before": len(data), "added": 0, "total": len(data)}
    assert answers.read_bytes() == before
    assert main(["--data", str(out), "--out", str(tmp_path / "a.jsonl.gz")]) == 0


def test_answers_of_other_settings_or_malformed_files_are_refused(generated, tmp_path):
    *_, manifest, answers = generated
    other = dict(answer_settings(manifest), max_new_tokens=999)
    with pytest.raises(OtherSettingsError, match="max_new_tokens"):
        load_answers(answers, other)
    with pytest.raises(AnswersError, match="does not exist"):
        load_answers(tmp_path / "missing.jsonl.gz", other)
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as handle:
        handle.write(json.dumps({"format": "something else"}) + "\n")
    with pytest.raises(AnswersError, match="not an answers file"):
        load_answers(bad, other)
    with gzip.open(bad, "wt") as handle:
        handle.write(json.dumps({"format": "sglang-dspark-answers/1", "settings": other}) + "\n")
        handle.write(json.dumps({"prompt": "x", "answer": []}) + "\n")
    with pytest.raises(AnswersError, match="malformed"):
        load_answers(bad, other)


def test_stored_answers_are_read_out_not_generated(generated, tmp_path, monkeypatch):
    recipe, model, tokenizer, prompts, out, _, answers = generated

    def no_generation(*args, **kwargs):
        raise AssertionError("generated although every answer was stored")

    monkeypatch.setattr(distill_module, "_generate", no_generation)
    manifest = distill(model, tokenizer, prompts, tmp_path, layer_ids=recipe.drafter.target_layer_ids,
                       recipe=recipe.distill, progress=False, answers_file=answers)
    assert all(s["num_from_answers"] == s["num_sequences"] for s in manifest["shards"].values())
    generated_data, read_data = DistilledData(out), DistilledData(tmp_path)
    assert len(read_data) == len(generated_data)
    for i in range(len(read_data)):
        a, b = generated_data.get(i), read_data.get(i)
        assert a.prompt_index == b.prompt_index and torch.equal(a.input_ids, b.input_ids)
        assert torch.equal(a.loss_mask, b.loss_mask)
        # One forward over the sequence against prefill + one decode step per token.
        scale = a.context_hidden.abs().max()
        assert float((a.context_hidden - b.context_hidden).abs().max()) < 0.01 * scale
        torch.testing.assert_close(a.last_hidden, b.last_hidden, atol=0.02 * float(a.last_hidden.abs().max()),
                                   rtol=0.02)
        assert not b.context_hidden[-1].any() and not b.last_hidden[-1].any()


def test_prompts_without_a_stored_answer_are_generated(generated, tmp_path):
    recipe, model, tokenizer, prompts, out, manifest, answers = generated
    stored = load_answers(answers, answer_settings(manifest))
    kept = dict(list(sorted(stored.items()))[: len(stored) // 2])
    partial = tmp_path / "partial.jsonl.gz"
    with gzip.open(partial, "wt") as handle:
        handle.write(json.dumps({"format": "sglang-dspark-answers/1", "settings": answer_settings(manifest)}) + "\n")
        for key, answer in kept.items():
            handle.write(json.dumps({"prompt": key, "answer": answer}) + "\n")
    result = distill(model, tokenizer, prompts, tmp_path / "data", layer_ids=recipe.drafter.target_layer_ids,
                     recipe=recipe.distill, progress=False, answers_file=partial)
    assert sum(s["num_from_answers"] for s in result["shards"].values()) == len(kept)
    generated_data, mixed = DistilledData(out), DistilledData(tmp_path / "data")
    assert [mixed.get(i).input_ids.tolist() for i in range(len(mixed))] == \
        [generated_data.get(i).input_ids.tolist() for i in range(len(generated_data))]


def test_a_file_of_other_settings_is_not_used(generated, tmp_path, caplog):
    recipe, model, tokenizer, prompts, _, _, answers = generated
    longer = dataclasses.replace(recipe.distill, max_new_tokens=recipe.distill.max_new_tokens + 1, max_shards=1)
    with caplog.at_level("WARNING"):
        result = distill(model, tokenizer, prompts, tmp_path, layer_ids=recipe.drafter.target_layer_ids,
                         recipe=longer, progress=False, answers_file=answers)
    assert "other settings (['max_new_tokens'])" in caplog.text and "generating every answer" in caplog.text
    assert all(s["num_from_answers"] == 0 for s in result["shards"].values())
