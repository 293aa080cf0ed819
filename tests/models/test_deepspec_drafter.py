"""Reference DeepSpec drafter: checkpoint layout, loading errors, context caching."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sglang_dspark.algorithm.config import DSparkConfig, DSparkConfigError
from sglang_dspark.algorithm.sampling import SamplingParams
from sglang_dspark.models.deepspec_drafter import (
    DeepSpecDrafter,
    DrafterCheckpointError,
    deepspec_state_dict_shapes,
    load_deepspec_drafter,
)
from sglang_dspark.models.synthetic import (
    deepspec_config_dict,
    make_synthetic_target_modules,
    write_synthetic_deepspec_checkpoint,
)

from tests.torch_threads import one_torch_thread

NUM_TARGET_LAYERS = 6


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    with one_torch_thread():
        yield


def small_config(**overrides) -> DSparkConfig:
    kwargs = dict(
        block_size=4,
        mask_token_id=7,
        target_layer_ids=(0, 2, 4),
        markov_rank=8,
        hidden_size=32,
        vocab_size=61,
        num_draft_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=48,
        num_target_layers=NUM_TARGET_LAYERS,
    )
    kwargs.update(overrides)
    return DSparkConfig(**kwargs)


@pytest.fixture(scope="module")
def target():
    return make_synthetic_target_modules(small_config(), seed=11)


@pytest.fixture(scope="module", params=[False, True], ids=["deepspec", "anchor-context"])
def ckpt(request, tmp_path_factory, target):
    path = tmp_path_factory.mktemp("drafter")
    config = small_config(anchor_context_input=request.param)
    return write_synthetic_deepspec_checkpoint(path, config, seed=0, target_modules=target)


def load(path, target, **kw):
    embed, head = target
    return load_deepspec_drafter(path, embed_tokens=embed, lm_head=head, **kw)


def test_state_dict_uses_deepspec_names():
    cfg = small_config()
    shapes = deepspec_state_dict_shapes(cfg)
    H, V, r = 32, 61, 8
    expected_subset = {
        "fc.weight": (H, 3 * H),
        "hidden_norm.weight": (H,),
        "norm.weight": (H,),
        "layers.0.input_layernorm.weight": (H,),
        "layers.1.post_attention_layernorm.weight": (H,),
        "layers.0.self_attn.q_proj.weight": (4 * 16, H),
        "layers.0.self_attn.k_proj.weight": (2 * 16, H),
        "layers.0.self_attn.v_proj.weight": (2 * 16, H),
        "layers.0.self_attn.o_proj.weight": (H, 4 * 16),
        "layers.0.self_attn.q_norm.weight": (16,),
        "layers.0.self_attn.k_norm.weight": (16,),
        "layers.1.mlp.gate_proj.weight": (48, H),
        "layers.1.mlp.up_proj.weight": (48, H),
        "layers.1.mlp.down_proj.weight": (H, 48),
        "markov_head.markov_w1.weight": (V, r),
        "markov_head.markov_w2.weight": (V, r),
        "confidence_head.proj.weight": (1, H + r),
        "confidence_head.proj.bias": (1,),
    }
    assert {k: shapes[k] for k in expected_subset} == expected_subset
    assert len(shapes) == 3 + 2 * 11 + 4  # fc/norms + per-layer + heads
    assert not any(k.startswith(("embed_tokens", "lm_head")) for k in shapes)
    llama = deepspec_state_dict_shapes(small_config(backbone="llama", qk_norm=False))
    assert "layers.0.self_attn.q_norm.weight" not in llama


def test_round_trip_loads_all_tensors_deterministically(ckpt, target, tmp_path):
    model = load(ckpt, target, num_target_layers=NUM_TARGET_LAYERS)
    on_disk = load_file(str(ckpt / "model.safetensors"))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, on_disk[name]), name
    # same seed -> identical weights; sharded layout loads the same model
    sharded = write_synthetic_deepspec_checkpoint(
        tmp_path / "sharded", model.config, seed=0, num_shards=3, target_modules=target
    )
    assert json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    model2 = load(sharded, target)
    ctx = torch.randn(2, 9, model.config.context_feature_size)
    anchors = torch.tensor([3, 60])
    out1, out2 = model(ctx, anchors), model2(ctx, anchors)
    assert out1.logits.shape == (2, 4, 61) and out1.hidden.shape == (2, 4, 32)
    assert torch.equal(out1.logits, out2.logits)
    assert torch.equal(out1.logits, model(ctx, anchors).logits)
    other = load(
        write_synthetic_deepspec_checkpoint(
            tmp_path / "seed1", model.config, seed=1, target_modules=target
        ),
        target,
    )
    assert not torch.allclose(other(ctx, anchors).logits, out1.logits)


def test_embedding_and_head_are_shared_not_owned(ckpt, target):
    embed, head = target
    model = load(ckpt, target)
    assert not any(k.startswith(("embed_tokens", "lm_head")) for k in model.state_dict())
    ctx = torch.randn(1, 5, model.config.context_feature_size)
    before = model(ctx, torch.tensor([4])).logits
    with torch.no_grad():
        head.weight.mul_(2.0)
    try:
        torch.testing.assert_close(model(ctx, torch.tensor([4])).logits, 2.0 * before)
    finally:
        with torch.no_grad():
            head.weight.div_(2.0)


def test_bfloat16_load(ckpt, target):
    model = load(ckpt, target, dtype=torch.bfloat16)
    assert model.fc.weight.dtype == torch.bfloat16
    assert model.rotary_emb.inv_freq.dtype == torch.float32
    embed, head = target
    ref = load(ckpt, target)
    ctx = torch.randn(1, 6, ref.config.context_feature_size)
    got = model(ctx, torch.tensor([1])).hidden.float()
    torch.testing.assert_close(got, ref(ctx, torch.tensor([1])).hidden, atol=0.1, rtol=0.05)


def test_incremental_cache_matches_full_recompute(ckpt, target):
    model = load(ckpt, target)
    width = model.config.context_feature_size
    torch.manual_seed(0)
    full = torch.randn(2, 14, width)
    # request 0 commits 5, +3, +1, +4 rows; request 1 commits 2, +1, +5, +2 rows
    steps = [(5, 2), (3, 1), (1, 5), (4, 2)]
    anchors = torch.tensor([9, 33])
    cache = model.new_cache(2, capacity=2)
    done = [0, 0]
    for new in steps:
        rows = max(new)
        chunk = torch.full((2, rows, width), float("nan"))  # padding must never be read
        for b in range(2):
            chunk[b, : new[b]] = full[b, done[b] : done[b] + new[b]]
            done[b] += new[b]
        model.extend_context(cache, chunk, num_new=torch.tensor(new))
        incremental = model.forward_block(anchors, cache)
        padded = torch.zeros(2, max(done), width)
        for b in range(2):
            padded[b, : done[b]] = full[b, : done[b]]
        recompute = model(padded, anchors, context_lengths=torch.tensor(done))
        torch.testing.assert_close(incremental.logits, recompute.logits, atol=1e-5, rtol=1e-5)
        for b in range(2):  # each row equals the request decoded alone
            alone = model(full[b : b + 1, : done[b]], anchors[b : b + 1])
            torch.testing.assert_close(
                incremental.logits[b : b + 1], alone.logits, atol=1e-5, rtol=1e-5
            )
    assert cache.lengths.tolist() == done == [13, 10]
    assert cache.capacity >= 13


def test_context_and_anchor_influence(ckpt, target):
    model = load(ckpt, target)
    ctx = torch.randn(1, 6, model.config.context_feature_size)
    base = model(ctx, torch.tensor([3])).logits
    changed = ctx.clone()
    changed[0, 0] += 1.0
    assert not torch.allclose(model(changed, torch.tensor([3])).logits, base)
    assert not torch.allclose(model(ctx, torch.tensor([4])).logits, base)


def test_draft_end_to_end(ckpt, target):
    model = load(ckpt, target)
    cache = model.new_cache(2)
    model.extend_context(cache, torch.randn(2, 5, model.config.context_feature_size))
    block = model.draft(torch.tensor([1, 2]), cache, SamplingParams.greedy(2))
    assert block.tokens.shape == (2, 4) and block.probs.shape == (2, 4, 61)
    assert block.confidence.shape == (2, 4)
    assert ((block.confidence > 0) & (block.confidence < 1)).all()


# ---------------------------------------------------------------------- #
# Loader errors
# ---------------------------------------------------------------------- #
def rewrite(ckpt, tmp_path, edit):
    out = tmp_path / "edited"
    out.mkdir()
    (out / "config.json").write_text((ckpt / "config.json").read_text())
    tensors = load_file(str(ckpt / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(out / "model.safetensors"))
    return out


def test_missing_tensor(ckpt, target, tmp_path):
    path = rewrite(ckpt, tmp_path, lambda t: t.pop("layers.1.mlp.up_proj.weight"))
    with pytest.raises(DrafterCheckpointError, match=r"1 tensor\(s\) missing.*layers\.1\.mlp\.up_proj\.weight"):
        load(path, target)


def test_unexpected_tensor(ckpt, target, tmp_path):
    def edit(t):
        t["layers.2.mlp.up_proj.weight"] = torch.zeros(48, 32)

    with pytest.raises(DrafterCheckpointError, match=r"unexpected tensor\(s\).*layers\.2\.mlp\.up_proj"):
        load(rewrite(ckpt, tmp_path, edit), target)


def test_wrong_shape(ckpt, target, tmp_path):
    def edit(t):
        t["fc.weight"] = torch.zeros(32, 64)

    with pytest.raises(
        DrafterCheckpointError,
        match=r"tensor 'fc\.weight' in model\.safetensors has shape \(32, 64\), expected \(32, 96\)",
    ):
        load(rewrite(ckpt, tmp_path, edit), target)


def test_wrong_markov_head_type_in_config(ckpt, target, tmp_path):
    path = rewrite(ckpt, tmp_path, lambda t: None)
    raw = json.loads((path / "config.json").read_text())
    raw["markov_head_type"] = "gated"
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(DrafterCheckpointError, match=r"markov_head\.gate_proj\.bias.*'gated'"):
        load(path, target)


def test_truncated_shard(target, tmp_path):
    path = write_synthetic_deepspec_checkpoint(
        tmp_path / "ck", small_config(), seed=0, num_shards=2, target_modules=target
    )
    shard = path / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(DrafterCheckpointError, match=r"model-00002-of-00002\.safetensors.*truncated or corrupt"):
        load(path, target)


def test_truncated_single_file(ckpt, target, tmp_path):
    path = rewrite(ckpt, tmp_path, lambda t: None)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:100])
    with pytest.raises(DrafterCheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        load(path, target)


def test_missing_shard_file(target, tmp_path):
    path = write_synthetic_deepspec_checkpoint(
        tmp_path / "ck", small_config(), seed=0, num_shards=2, target_modules=target
    )
    (path / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(DrafterCheckpointError, match=r"shard model-00001-of-00002\.safetensors .* missing"):
        load(path, target)


@pytest.mark.parametrize(
    ("index_text", "message"),
    [("{not json", "is not a JSON object"), ('{"weight_map": {}}', "has no weight_map"), ("[]", "is not a JSON object")],
)
def test_malformed_index(target, tmp_path, index_text, message):
    path = write_synthetic_deepspec_checkpoint(
        tmp_path / "ck", small_config(), seed=0, num_shards=2, target_modules=target
    )
    (path / "model.safetensors.index.json").write_text(index_text)
    with pytest.raises(DrafterCheckpointError, match=rf"malformed safetensors index: .*index\.json {message}"):
        load(path, target)


def test_no_weights(tmp_path, target):
    (tmp_path / "config.json").write_text(json.dumps(deepspec_config_dict(small_config())))
    with pytest.raises(DrafterCheckpointError, match="no model.safetensors"):
        load(tmp_path, target)


def test_target_mismatches(ckpt, target):
    embed, head = target
    wrong_vocab = make_synthetic_target_modules(small_config(vocab_size=64), seed=0)
    with pytest.raises(DSparkConfigError, match=r"vocab_size=61 .* target's vocab_size is 64"):
        load(ckpt, wrong_vocab, num_target_layers=NUM_TARGET_LAYERS)
    with pytest.raises(DSparkConfigError, match=r"embed_tokens\.weight has shape \(64, 32\)"):
        load(ckpt, wrong_vocab)
    wrong_hidden = make_synthetic_target_modules(small_config(hidden_size=48), seed=0)
    with pytest.raises(DSparkConfigError, match=r"hidden_size=32 .* target's hidden_size is 48"):
        load(ckpt, wrong_hidden, num_target_layers=NUM_TARGET_LAYERS)
    with pytest.raises(DSparkConfigError, match=r"include \[4\].*4 layers"):
        load(ckpt, target, num_target_layers=4)
    model = DeepSpecDrafter(small_config())
    with pytest.raises(RuntimeError, match="attach the target's embed_tokens and lm_head"):
        model(torch.randn(1, 2, 96), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"width 64, expected 96 = 3 target layers x 32"):
        model.project_context(torch.randn(1, 2, 64))
    with pytest.raises(DSparkConfigError, match="Qwen3/Llama layers only"):
        DeepSpecDrafter(small_config(backbone="deepseek_v4"))


def test_anchor_context_input_feeds_the_last_context_row_beside_the_embeddings(target, tmp_path):
    config = small_config(anchor_context_input=True)
    model = load(write_synthetic_deepspec_checkpoint(tmp_path, config, seed=0, target_modules=target), target)
    ctx = torch.randn(2, 6, config.context_feature_size)
    lengths = torch.tensor([6, 3])
    anchors = torch.tensor([3, 9])
    inp = model.anchor_input
    with torch.no_grad():
        for norm in (inp.embed_norm, inp.context_norm):
            norm.weight.uniform_(0.5, 1.5)
        last = model.project_context(ctx)[torch.arange(2), lengths - 1]
        block_ids = torch.full((2, config.block_size), config.mask_token_id)
        block_ids[:, 0] = anchors
        embeds = target[0](block_ids)

        def rms(x, weight):
            return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + config.rms_norm_eps)

        side_by_side = torch.cat(
            [rms(embeds, inp.embed_norm.weight), rms(last, inp.context_norm.weight)[:, None].expand_as(embeds)], -1
        )
        torch.testing.assert_close(model.block_inputs(block_ids, last), side_by_side @ inp.fc.weight.T)
        # No context (a zero row) leaves the embedding half alone.
        torch.testing.assert_close(
            model.block_inputs(block_ids, torch.zeros_like(last)),
            rms(embeds, inp.embed_norm.weight) @ inp.fc.weight[:, : config.hidden_size].T,
        )
        # The cache keeps each request's row before the anchor (its last context row) ...
        cache = model.new_cache(2, capacity=6)
        model.extend_context(cache, ctx, num_new=lengths)
        torch.testing.assert_close(cache.last_rows, last)
        # ... and the forward reads it through the anchor input, beside attention:
        # zeroing the context half of fc changes the logits and leaves the embeddings alone.
        out = model(ctx, anchors, context_lengths=lengths).logits
        inp.fc.weight[:, config.hidden_size:] = 0
        attention_only = model(ctx, anchors, context_lengths=lengths).logits
        assert not torch.allclose(out, attention_only)
        torch.testing.assert_close(
            model.block_inputs(block_ids, last), model.block_inputs(block_ids, torch.randn_like(last))
        )
    with pytest.raises(ValueError, match="anchor_context_input"):
        model.block_inputs(block_ids, None)


def test_anchor_context_input_must_match_the_checkpoint(target, tmp_path):
    without = write_synthetic_deepspec_checkpoint(tmp_path / "a", small_config(), seed=0, target_modules=target)
    raw = json.loads((without / "config.json").read_text())
    raw["anchor_context_input"] = True
    (without / "config.json").write_text(json.dumps(raw))
    with pytest.raises(DrafterCheckpointError, match="anchor_input.*anchor_context_input=True"):
        load(without, target)
    raw["anchor_context_input"] = "yes"
    with pytest.raises(DSparkConfigError, match="anchor_context_input must be true or false"):
        DSparkConfig.from_deepspec(raw)
    config = small_config(anchor_context_input=True)
    extra = write_synthetic_deepspec_checkpoint(tmp_path / "b", config, seed=0, target_modules=target)
    raw = json.loads((extra / "config.json").read_text())
    assert raw["anchor_context_input"] is True
    del raw["anchor_context_input"]
    (extra / "config.json").write_text(json.dumps(raw))
    with pytest.raises(DrafterCheckpointError, match="unexpected tensor.*anchor_input"):
        load(extra, target)
