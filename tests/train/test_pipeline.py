"""The tiny recipe end to end: output layout, determinism, resume, and a real acceptance gain."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from sglang_dspark.algorithm.calibration import StsCalibration
from sglang_dspark.models.deepspec_drafter import DeepSpecDrafter, load_deepspec_drafter
from sglang_dspark.train.__main__ import main as train_main
from sglang_dspark.train.evaluate import _prompt_ids, evaluate_acceptance, greedy_decode
from sglang_dspark.train.export import init_drafter_weights, save_drafter
from sglang_dspark.train.recipe import load_recipe
from sglang_dspark.train.target import load_target
from sglang_dspark.train.trainer import TrainError, run_training

from .conftest import TINY_RECIPE

DEEPSPEC_KEYS = {
    "layers.0.input_layernorm.weight", "layers.0.post_attention_layernorm.weight",
    "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
    "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.o_proj.weight",
    "layers.0.mlp.gate_proj.weight", "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight",
    "norm.weight", "fc.weight", "hidden_norm.weight", "markov_head.markov_w1.weight",
    "markov_head.markov_w2.weight", "confidence_head.proj.weight", "confidence_head.proj.bias",
}
ANCHOR_INPUT_KEYS = {"anchor_input.fc.weight", "anchor_input.embed_norm.weight", "anchor_input.context_norm.weight"}


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(TINY_RECIPE)


@pytest.fixture(scope="module")
def first_run(tiny_target_dir, recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("run-a")
    result = run_training(tiny_target_dir, recipe, out, seed=0, progress=False)
    return result


def _fresh_out(first_run, tmp_path_factory, name):
    """A new output directory that reuses the first run's distilled data."""
    out = tmp_path_factory.mktemp(name)
    shutil.copytree(first_run.out_dir / "data", out / "data")
    return out


def _weights(directory):
    return load_file(str(directory / "model.safetensors"))


def test_writes_a_loadable_deepspec_drafter(first_run, tiny_target_dir, recipe):
    drafter_dir = first_run.drafter_dir
    assert {p.name for p in drafter_dir.iterdir()} >= {
        "config.json", "model.safetensors", "sts_calibration.json", "training_log.json",
    }
    raw = json.loads((drafter_dir / "config.json").read_text())
    for key in ("block_size", "mask_token_id", "target_layer_ids", "markov_rank",
                "markov_head_type", "enable_confidence_head", "confidence_head_with_markov",
                "num_target_layers", "num_anchors"):
        assert key in raw, key
    assert raw["block_size"] == recipe.drafter.block_size
    assert set(_weights(drafter_dir)) == DEEPSPEC_KEYS  # no embedding / LM head copies

    target, _ = load_target(tiny_target_dir)
    drafter = load_deepspec_drafter(
        drafter_dir, embed_tokens=target.get_input_embeddings(),
        lm_head=target.get_output_embeddings(), num_target_layers=4,
    )
    assert drafter.config.target_layer_ids == tuple(recipe.drafter.target_layer_ids)

    sts = StsCalibration.from_json(drafter_dir / "sts_calibration.json")
    assert len(sts.temperatures) == recipe.drafter.block_size
    assert sts.num_samples > 0 and sts.ece_after <= sts.ece_before + 1e-9

    def strict(text):  # no NaN / Infinity: strict JSON for other tools
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    log = strict((drafter_dir / "training_log.json").read_text())
    assert log["summary"]["steps"] == recipe.train.max_steps == first_run.steps
    losses = [e["loss"] for e in log["log"] if "loss" in e]
    assert losses[-1] < losses[0]
    assert any("val_mean_committed" in e for e in log["log"])


def test_same_seed_gives_identical_weights(first_run, tiny_target_dir, recipe, tmp_path_factory):
    out = _fresh_out(first_run, tmp_path_factory, "run-b")
    second = run_training(tiny_target_dir, recipe, out, seed=0, progress=False)
    a, b = _weights(first_run.drafter_dir), _weights(second.drafter_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert second.sts == first_run.sts


def test_resume_matches_uninterrupted_run(first_run, tiny_target_dir, recipe, tmp_path_factory,
                                          capsys):
    out = _fresh_out(first_run, tmp_path_factory, "run-c")
    stopped = run_training(tiny_target_dir, recipe, out, seed=0, stop_after_steps=5,
                           progress=False)
    assert stopped is None
    assert (out / "checkpoints" / "step_000005" / "state.pt").is_file()
    assert not (out / "drafter").exists()
    with pytest.raises(TrainError, match="--resume"):
        run_training(tiny_target_dir, recipe, out, seed=0, progress=False)
    # A checkpoint written before a recipe field existed resumes when the field is at its default.
    state_path = out / "checkpoints" / "step_000005" / "state.pt"
    state = torch.load(state_path, weights_only=False)
    del state["recipe"]["drafter"]["init_from_target_layer"]
    torch.save(state, state_path)
    # Resume through the command line.
    status = train_main(["--target", str(tiny_target_dir), "--recipe", str(TINY_RECIPE),
                         "--out", str(out), "--seed", "0", "--resume", "--no-progress"])
    assert status == 0
    assert capsys.readouterr().out.strip().endswith("drafter")
    a, b = _weights(first_run.drafter_dir), _weights(out / "drafter")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    log_a = json.loads((first_run.drafter_dir / "training_log.json").read_text())["log"]
    log_b = json.loads((out / "drafter" / "training_log.json").read_text())["log"]
    strip = lambda log: [{k: v for k, v in e.items() if k not in ("time", "seconds_per_step",
                          "supervised_slots_per_second")} for e in log]
    assert strip(log_a) == strip(log_b)


def test_trained_drafter_beats_random_and_stays_lossless(first_run, tiny_target_dir):
    target, tokenizer = load_target(tiny_target_dir)
    embed, head = target.get_input_embeddings(), target.get_output_embeddings()
    trained = load_deepspec_drafter(first_run.drafter_dir, embed_tokens=embed, lm_head=head)
    random_drafter = DeepSpecDrafter(trained.config)
    init_drafter_weights(random_drafter, std=0.02, seed=1234)
    random_drafter.attach_target_modules(embed, head)
    # Held-out corpus prompts: distilled but never trained on.
    rows = [json.loads(line) for line in
            (first_run.out_dir / "data" / "prompts.jsonl").read_text().splitlines()]
    prompts = [r["text"] for r in rows if r["split"] == "heldout"][:4]

    good = evaluate_acceptance(target, tokenizer, trained, prompts, max_new_tokens=32)
    bad = evaluate_acceptance(target, tokenizer, random_drafter, prompts, max_new_tokens=32)
    assert good.num_prompts == bad.num_prompts == 4
    assert bad.mean_committed < 1.1
    assert good.mean_committed > bad.mean_committed + 0.3, (good, bad)
    assert good.per_position[0] > bad.per_position[0] + 0.1
    # Speculative decoding changes nothing in the greedy output.
    for prompt, out in zip(prompts, good.outputs):
        ids = _prompt_ids(tokenizer, prompt, True)
        assert out == greedy_decode(target, ids, max_new_tokens=32)
    assert bad.outputs == good.outputs


def test_reduced_vocab_ce_phase_bf16_drafter_round_trips_and_stays_lossless(
    first_run, tiny_target_dir, recipe, tmp_path_factory
):
    """Draft vocabulary (EAGLE-3 d2t/t2d), anchor context input, cross-entropy phase first, bf16
    autocast (the shipped recipe's choices): a working drafter."""
    import dataclasses

    from sglang_dspark.algorithm.draft_vocab import DraftVocab
    from sglang_dspark.models.deepspec_drafter import DrafterCheckpointError, check_deepspec_checkpoint
    from safetensors.torch import save_file

    variant = dataclasses.replace(
        recipe,
        drafter=dataclasses.replace(recipe.drafter, draft_vocab_size=96, anchor_context_input=True),
        loss=dataclasses.replace(recipe.loss, ce_only_ratio=0.5),
        train=dataclasses.replace(recipe.train, compute_dtype="bfloat16"),
    )
    out = _fresh_out(first_run, tmp_path_factory, "run-vocab")
    result = run_training(tiny_target_dir, variant, out, seed=0, progress=False,
                          distill_missing=False)
    drafter_dir = result.drafter_dir
    raw = json.loads((drafter_dir / "config.json").read_text())
    assert raw["draft_vocab_size"] == 96 and raw["anchor_context_input"] is True
    weights = _weights(drafter_dir)
    assert set(weights) == DEEPSPEC_KEYS | {"d2t", "t2d", *ANCHOR_INPUT_KEYS}
    assert weights["d2t"].dtype == torch.int64 and weights["t2d"].dtype == torch.bool
    assert weights["markov_head.markov_w2.weight"].shape[0] == 96
    summary = json.loads((drafter_dir / "training_log.json").read_text())["summary"]
    assert summary["draft_vocab_train_coverage"] > 0.9
    assert summary["train_compute_dtype"] == "bfloat16"
    log = json.loads((drafter_dir / "training_log.json").read_text())["log"]
    l1 = [e["l1"] for e in log if "l1" in e]
    assert l1[0] == 0.0 and l1[-1] > 0.0  # the cross-entropy phase, then the DSpark mix

    target, tokenizer = load_target(tiny_target_dir)
    embed, head = target.get_input_embeddings(), target.get_output_embeddings()
    drafter = load_deepspec_drafter(drafter_dir, embed_tokens=embed, lm_head=head)
    vocab = drafter.draft_vocab
    assert isinstance(vocab, DraftVocab) and vocab.size == 96
    assert drafter.anchor_input is not None and drafter.anchor_input.fc.weight.abs().sum() > 0
    rows = [json.loads(line) for line in (out / "data" / "prompts.jsonl").read_text().splitlines()]
    prompts = [r["text"] for r in rows if r["split"] == "heldout"][:3]
    report = evaluate_acceptance(target, tokenizer, drafter, prompts, max_new_tokens=24)
    assert report.mean_committed > 1.3
    for prompt, got in zip(prompts, report.outputs):
        assert got == greedy_decode(target, _prompt_ids(tokenizer, prompt, True), max_new_tokens=24)

    # A t2d that disagrees with d2t is refused at load, naming the maps.
    broken = tmp_path_factory.mktemp("broken-vocab")
    shutil.copy(drafter_dir / "config.json", broken / "config.json")
    bad = dict(weights)
    bad["t2d"] = ~weights["t2d"]
    save_file(bad, str(broken / "model.safetensors"))
    check_deepspec_checkpoint(broken, drafter.config)  # shapes and dtypes are right
    with pytest.raises(DrafterCheckpointError, match="d2t/t2d"):
        load_deepspec_drafter(broken, embed_tokens=embed, lm_head=head)
    bad["d2t"] = weights["d2t"].float()
    save_file(bad, str(broken / "model.safetensors"))
    with pytest.raises(DrafterCheckpointError, match="I64"):
        check_deepspec_checkpoint(broken, drafter.config)


def test_training_continues_from_a_shipped_drafter(first_run, tiny_target_dir, recipe, tmp_path_factory):
    import dataclasses

    from sglang_dspark.train.trainer import Trainer

    target, tokenizer = load_target(tiny_target_dir)
    out = _fresh_out(first_run, tmp_path_factory, "run-warm")
    trainer = Trainer(recipe, target, tokenizer, out, init_from=first_run.drafter_dir, progress=False)
    data = trainer.prepare_data(distill_missing=False)
    state = trainer.warm_start(data).state_dict()
    for name, saved in _weights(first_run.drafter_dir).items():
        torch.testing.assert_close(state[name].to(saved.dtype), saved, msg=name)
    # A drafter of another architecture is refused before any step.
    other = dataclasses.replace(recipe, drafter=dataclasses.replace(recipe.drafter, markov_rank=8))
    with pytest.raises(TrainError, match="markov_rank"):
        Trainer(other, target, tokenizer, out, init_from=first_run.drafter_dir, progress=False).warm_start(data)
    # A drafter cannot shrink; it can grow by draft layers that start as the identity.
    wider = dataclasses.replace(recipe, drafter=dataclasses.replace(
        recipe.drafter, num_draft_layers=recipe.drafter.num_draft_layers + 1))
    grown = Trainer(wider, target, tokenizer, out, init_from=first_run.drafter_dir,
                    progress=False).warm_start(data)
    source = trainer.warm_start(data)
    assert len(grown.layers) == len(source.layers) + 1
    seq = data.get(data.indices("heldout")[0])
    for d in (source, grown):
        d.eval()
    with torch.no_grad():
        a = source.forward(seq.context_hidden[None, :5], seq.input_ids[5:6])
        b = grown.forward(seq.context_hidden[None, :5], seq.input_ids[5:6])
    torch.testing.assert_close(b.hidden, a.hidden)
    assert float(grown.layers[-1].self_attn.q_proj.weight.detach().abs().sum()) > 0  # a real layer, zero outputs
    wide_trainer = Trainer(wider, target, tokenizer, out, progress=False)
    grown_dir = save_drafter(out / "grown", grown, wide_trainer.config_dict, dtype=torch.float32)
    with pytest.raises(TrainError, match="shrink"):
        Trainer(recipe, target, tokenizer, out, init_from=grown_dir, progress=False).warm_start(data)
    # Through the command line: a short run from the drafter trains on and writes a new one.
    short = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, max_steps=2))
    result = run_training(tiny_target_dir, short, out, seed=1, progress=False, init_from=first_run.drafter_dir)
    after = _weights(result.drafter_dir)
    assert any(not torch.equal(after[k], v) for k, v in _weights(first_run.drafter_dir).items())
    first_loss = json.loads((result.drafter_dir / "training_log.json").read_text())["log"][0]
    fresh_start = json.loads((first_run.drafter_dir / "training_log.json").read_text())["log"][0]
    assert first_loss["loss"] < fresh_start["loss"]  # it starts where the source ended, not at random
