"""DeepSeek-V4-Flash-DSpark checkpoint reading on a tiny synthetic checkpoint with the real names and dtypes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sglang_dspark.models.deepseek_v4_checkpoint import CheckpointError, V4Checkpoint, V4Reader
from sglang_dspark.models.fp8_block import dequantize_fp8_block, quantize_fp8_block
from sglang_dspark.models.synthetic_v4 import V4Spec, write_synthetic_v4_checkpoint
from sglang_dspark.moe import mxfp4


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    return write_synthetic_v4_checkpoint(tmp_path_factory.mktemp("v4-dspark"))


@pytest.fixture
def broken(ckpt_dir, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(ckpt_dir, tmp_path / "copy")


def test_index_names_follow_the_v4_release(ckpt_dir) -> None:
    names = set(json.loads((ckpt_dir / "model.safetensors.index.json").read_text())["weight_map"])
    for name in (
        "embed.weight", "head.weight", "hc_head_fn", "layers.0.ffn.gate.tid2eid", "layers.1.ffn.gate.bias",
        "layers.1.attn.wq_a.scale", "layers.2.ffn.experts.7.w2.scale", "layers.2.ffn.shared_experts.w3.weight",
        "layers.0.hc_attn_fn", "mtp.0.main_proj.weight", "mtp.0.main_norm.weight", "mtp.2.hc_head_base",
        "mtp.2.markov_head.markov_w1.weight", "mtp.2.confidence_head.proj.bias",
    ):
        assert name in names, name


def test_dspark_config_from_checkpoint(ckpt_dir) -> None:
    cfg = V4Checkpoint.open(ckpt_dir).dspark_config()
    spec = V4Spec()
    assert (cfg.block_size, cfg.mask_token_id, cfg.target_layer_ids, cfg.markov_rank, cfg.num_draft_layers) == (
        spec.block_size, spec.noise_token_id, spec.target_layer_ids, spec.markov_rank, spec.num_mtp
    )


def test_expert_read_equals_quantised_checkpoint_and_dequantises_like_mxfp4(ckpt_dir) -> None:
    from safetensors.torch import load_file

    ck = V4Checkpoint.open(ckpt_dir)
    shard = ck.expert_shard()
    experts = V4Reader(ck).read_experts("layers.1", shard)
    raw = load_file(str(ckpt_dir / ck.shard_of("layers.1.ffn.experts.3.w1.weight")))
    p = "layers.1.ffn.experts.3."
    gate = mxfp4.dequantize(raw[p + "w1.weight"], raw[p + "w1.scale"])
    up = mxfp4.dequantize(raw[p + "w3.weight"], raw[p + "w3.scale"])
    got = mxfp4.dequantize(experts["w13"][3], experts["w13_scale"][3])
    assert torch.equal(got, torch.cat([gate, up]))
    assert torch.equal(mxfp4.dequantize(experts["w2"][3], experts["w2_scale"][3]),
                       mxfp4.dequantize(raw[p + "w2.weight"], raw[p + "w2.scale"]))
    assert all(t.dtype == torch.uint8 for t in experts.values())


@pytest.mark.parametrize("ep,tp", [(2, 1), (1, 2), (2, 2), (4, 1)])
def test_rank_slices_tile_the_full_layout(ckpt_dir, ep, tp) -> None:
    ck = V4Checkpoint.open(ckpt_dir)
    full = V4Reader(ck).read_experts("layers.2", ck.expert_shard())
    i_l = V4Spec().moe_intermediate_size // tp
    for ep_rank in range(ep):
        for tp_rank in range(tp):
            shard = ck.expert_shard(ep_size=ep, ep_rank=ep_rank, tp_size=tp, tp_rank=tp_rank)
            part = V4Reader(ck).read_experts("layers.2", shard)
            experts = slice(shard.expert_offset, shard.expert_offset + shard.num_local_experts)
            rows = torch.cat([torch.arange(tp_rank * i_l, (tp_rank + 1) * i_l),
                              V4Spec().moe_intermediate_size + torch.arange(tp_rank * i_l, (tp_rank + 1) * i_l)])
            assert torch.equal(part["w13"], full["w13"][experts][:, rows])
            assert torch.equal(part["w13_scale"], full["w13_scale"][experts][:, rows])
            assert torch.equal(part["w2"], full["w2"][experts][:, :, tp_rank * i_l // 2 : (tp_rank + 1) * i_l // 2])
            assert torch.equal(part["w2_scale"], full["w2_scale"][experts][:, :, tp_rank * i_l // 32 : (tp_rank + 1) * i_l // 32])


def test_each_reader_opens_only_the_shards_it_needs(ckpt_dir) -> None:
    ck = V4Checkpoint.open(ckpt_dir)
    reader = V4Reader(ck)
    reader.read_experts("layers.1", ck.expert_shard(ep_size=2, ep_rank=1))
    assert reader.opened == [ck.shard_of("layers.1.ffn.experts.4.w1.weight")]
    assert set(ck.plan(ck.expert_names("layers.1", ck.expert_shard(ep_size=2, ep_rank=1)))) == set(reader.opened)

    drafter = V4Reader(ck)
    weights = drafter.read_drafter(ck.expert_shard(ep_size=2, ep_rank=0, drafter=True))
    mtp_files = {ck.shard_of(f"mtp.{m}.attn_norm.weight") for m in range(3)}
    assert set(drafter.opened) == mtp_files and len(drafter.opened) == 3
    assert set(weights.experts) == {"mtp.0", "mtp.1", "mtp.2"}
    assert weights.experts["mtp.1"]["w13"].shape == (4, 2 * 128, 128)
    assert weights.tensors["mtp.0.main_proj.weight"].dtype == torch.float32
    assert "mtp.0.main_proj.scale" not in weights.tensors
    assert weights.tensors["mtp.2.markov_head.markov_w2.weight"].shape == (512, 32)


def test_fp8_block_dequant_matches_the_stored_scales(ckpt_dir) -> None:
    ck = V4Checkpoint.open(ckpt_dir)
    reader = V4Reader(ck)
    w, s = reader.read_linear("mtp.0.main_proj", dequantize=False)
    assert w.dtype == torch.float8_e4m3fn and s.dtype == torch.float8_e8m0fnu and s.shape == (2, 6)
    deq = reader.read_linear("mtp.0.main_proj")
    torch.testing.assert_close(deq[128:256, 640:768], w[128:256, 640:768].float() * s[1, 5].float())
    x = torch.randn(200, 300) * 0.01
    q, sc = quantize_fp8_block(x)
    torch.testing.assert_close(dequantize_fp8_block(q, sc), x, rtol=0.07, atol=1e-6)


def test_truncated_shard_names_the_file(broken) -> None:
    ck = V4Checkpoint.open(broken)
    file = ck.shard_of("layers.2.ffn.experts.0.w1.weight")
    data = (broken / file).read_bytes()
    (broken / file).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{file}: cannot read shard \(truncated"):
        V4Reader(V4Checkpoint.open(broken)).read_experts("layers.2", ck.expert_shard())


def test_missing_tensor_wrong_dtype_and_missing_shard_name_file_and_tensor(broken) -> None:
    from safetensors.torch import load_file, save_file

    ck = V4Checkpoint.open(broken)
    file = ck.shard_of("layers.1.ffn.experts.5.w3.scale")
    tensors = load_file(str(broken / file))
    tensors.pop("layers.1.ffn.experts.5.w3.scale")
    tensors["layers.1.ffn.experts.2.w2.weight"] = tensors["layers.1.ffn.experts.2.w2.weight"].float()
    save_file(tensors, str(broken / file))
    reader = V4Reader(V4Checkpoint.open(broken))
    with pytest.raises(CheckpointError, match=r"layers.1.ffn.experts.2.w2.weight' has dtype torch.float32"):
        reader.read_experts("layers.1", ck.expert_shard(ep_size=4, ep_rank=1))
    with pytest.raises(CheckpointError, match=rf"{file}: tensor 'layers.1.ffn.experts.5.w3.scale' is missing"):
        reader.read_experts("layers.1", ck.expert_shard(ep_size=4, ep_rank=2))
    (broken / ck.shard_of("mtp.1.attn_norm.weight")).unlink()
    with pytest.raises(CheckpointError, match="lists shard\\(s\\) that do not exist"):
        V4Checkpoint.open(broken)


def test_malformed_index_names_the_file(broken) -> None:
    (broken / "model.safetensors.index.json").write_text('{"metadata": {}}')
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json has no weight_map"):
        V4Checkpoint.open(broken)
