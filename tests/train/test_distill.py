"""Self-distillation shards: content, the stored distribution and shard-level resume."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from sglang_dspark.train.corpus import build_corpus
from sglang_dspark.train.distill import DistillError, DistilledData, distill
from sglang_dspark.train.evaluate import greedy_decode
from sglang_dspark.train.recipe import load_recipe
from sglang_dspark.train.target import load_target, target_forward

from .conftest import TINY_RECIPE


@pytest.fixture(scope="module")
def setup(tiny_target_dir, tmp_path_factory):
    recipe = load_recipe(TINY_RECIPE)
    recipe = dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, shard_size=6))
    model, tokenizer = load_target(tiny_target_dir)
    prompts = build_corpus(seed=0, num_chat=8, num_code=4, heldout_fraction=0.25, max_chars=140)
    out = tmp_path_factory.mktemp("distill")
    manifest = distill(model, tokenizer, prompts, out, layer_ids=recipe.drafter.target_layer_ids,
                       recipe=recipe.distill, progress=False)
    return recipe, model, tokenizer, prompts, out, manifest


def test_sequences_are_prompt_plus_greedy_answer(setup):
    recipe, model, tokenizer, prompts, out, manifest = setup
    data = DistilledData(out)
    assert manifest["complete"] and len(data) == len(prompts)
    assert set(data.indices("train")) | set(data.indices("heldout")) == set(range(len(data)))
    for i in range(len(data)):
        seq = data.get(i)
        prompt = prompts[seq.prompt_index]
        assert bool(data.heldout[i]) == (prompt.split == "heldout")
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}],
                                            add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        n = len(ids)
        assert seq.input_ids[:n].tolist() == ids
        assert not seq.loss_mask[:n].any() and seq.loss_mask[n:].all()
        answer = greedy_decode(model, ids, max_new_tokens=recipe.distill.max_new_tokens)
        assert seq.input_ids[n:].tolist() == answer


def test_stored_states_reproduce_teacher_forced_target(setup):
    recipe, model, _, _, out, _ = setup
    data = DistilledData(out)
    head = model.get_output_embeddings()
    for i in range(0, len(data), 3):
        seq = data.get(i)
        T = len(seq.input_ids)
        ref = target_forward(model, seq.input_ids[None], recipe.drafter.target_layer_ids)
        # Rows 0..T-2 (the last row is never fed back and never read).
        scale = ref.context_hidden.abs().max()
        assert float((ref.context_hidden[0, : T - 1] - seq.context_hidden[: T - 1]).abs().max()) < 0.01 * scale
        logits = head(seq.last_hidden[: T - 1])
        torch.testing.assert_close(logits, ref.logits[0, : T - 1], atol=0.05, rtol=0.02)
        # Rows that predicted answer tokens: the stored distribution's argmax is the
        # greedy answer token (bf16 storage may flip a rare near-tie).
        rows = seq.loss_mask[1:].nonzero(as_tuple=True)[0]
        agree = (logits[rows].argmax(-1) == seq.input_ids[rows + 1]).float().mean()
        assert float(agree) >= 0.95


def test_resumes_by_shard_and_refuses_other_settings(setup):
    recipe, model, tokenizer, prompts, out, manifest = setup
    shard = out / "shard_00001.safetensors"
    before = load_file(str(shard))
    other = out / "shard_00000.safetensors"
    mtime = other.stat().st_mtime_ns
    shard.unlink()
    # A recipe that stops at the first shard distils nothing more and reads one shard.
    first_only = dataclasses.replace(recipe.distill, max_shards=1)
    distill(model, tokenizer, prompts, out, layer_ids=recipe.drafter.target_layer_ids,
            recipe=first_only, progress=False)
    assert not shard.exists()
    first = DistilledData(out, max_shards=1)
    assert len(first) == manifest["shards"]["shard_00000.safetensors"]["num_sequences"]
    assert first.num_answer_tokens == manifest["shards"]["shard_00000.safetensors"]["num_answer_tokens"]
    again = distill(model, tokenizer, prompts, out, layer_ids=recipe.drafter.target_layer_ids,
                    recipe=recipe.distill, progress=False)
    after = load_file(str(shard))
    assert other.stat().st_mtime_ns == mtime  # finished shards are not redone
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert again["shards"] == manifest["shards"]
    with pytest.raises(DistillError, match="other settings"):
        distill(model, tokenizer, prompts[:-1], out, layer_ids=recipe.drafter.target_layer_ids,
                recipe=recipe.distill, progress=False)
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_static_cache_gives_the_same_data_and_old_manifests_still_resume(setup, tmp_path):
    recipe, model, tokenizer, prompts, out, manifest = setup
    static = dataclasses.replace(recipe.distill, cache_implementation="static", max_shards=1)
    distill(model, tokenizer, prompts, tmp_path, layer_ids=recipe.drafter.target_layer_ids,
            recipe=static, progress=False)
    dynamic, fixed = DistilledData(out, max_shards=1), DistilledData(tmp_path)
    assert len(fixed) == len(dynamic) > 0
    for i in range(len(fixed)):
        a, b = dynamic.get(i), fixed.get(i)
        assert a.input_ids.tolist() == b.input_ids.tolist()
        torch.testing.assert_close(a.context_hidden.float(), b.context_hidden.float(), atol=0.02, rtol=0.02)
    # The other cache is another setting; data made before the option existed counts as dynamic.
    with pytest.raises(DistillError, match="other settings"):
        distill(model, tokenizer, prompts, out, layer_ids=recipe.drafter.target_layer_ids,
                recipe=static, progress=False)
    path = out / "manifest.json"
    saved = json.loads(path.read_text())
    old = json.loads(path.read_text())
    del old["distill"]["cache_implementation"]
    path.write_text(json.dumps(old))
    try:
        distill(model, tokenizer, prompts, out, layer_ids=recipe.drafter.target_layer_ids,
                recipe=recipe.distill, progress=False)
    finally:
        path.write_text(json.dumps(saved))
