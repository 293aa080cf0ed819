"""Expert-parallel and intermediate-TP loading of per-expert MXFP4 checkpoint tensors: rank sums equal the full MoE."""

from __future__ import annotations

import pytest
import torch

from sglang_dspark.moe import mxfp4
from sglang_dspark.moe.expert_sharding import ExpertShard, copy_expert_tensor
from sglang_dspark.moe.moe_forward import moe_forward, shard_intermediate

E, H, I, TOP_K = 8, 64, 128, 3


def checkpoint(seed: int = 0) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
    """Per-expert checkpoint tensors as the DeepSeek-V4 / SGLang loaders see them (int8 bytes, E8M0 scales)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for e in range(E):
        for shard_id, shape in (("w1", (I, H)), ("w3", (I, H)), ("w2", (H, I))):
            w = torch.randn(*shape, generator=g) * 0.1
            w = w * torch.exp2(torch.randint(-2, 3, (shape[0], 1), generator=g).float())
            packed, scale = mxfp4.quantize(w)
            out[(e, shard_id)] = {"weight": packed, "scale": scale.view(torch.float8_e8m0fnu)}
    return out


def load_rank(ckpt, shard: ExpertShard, fill: int = 0xAB) -> dict[str, torch.Tensor]:
    params = {name: torch.full(shape, fill, dtype=torch.uint8) for name, shape in shard.local_shapes().items()}
    for (e, shard_id), tensors in ckpt.items():
        for kind, tensor in tensors.items():
            name = ("w13" if shard_id in ("w1", "w3") else "w2") + ("_scale" if kind == "scale" else "")
            copied = copy_expert_tensor(params[name], tensor, shard=shard, global_expert=e, shard_id=shard_id, kind=kind)
            assert copied == (shard.local_expert(e) is not None)
    return params


def routing(tokens: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, H, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:TOP_K] for _ in range(tokens)]).to(torch.int32)
    return x, torch.rand(tokens, TOP_K, generator=g), ids


def run(params, shard: ExpertShard, x, weights, ids) -> torch.Tensor:
    return moe_forward(
        x, params["w13"], params["w13_scale"], params["w2"], params["w2_scale"], weights, ids,
        impl="torch", expert_offset=shard.expert_offset, num_local_experts=shard.num_local_experts,
    )


def assert_ranks_sum_to_full(ep: int, tp: int, tokens: int, intermediate: int = I, **shard_kwargs) -> None:
    """Every (EP, TP) rank loads its part of one checkpoint; the sum of their outputs is the unsharded MoE's."""
    ckpt = checkpoint()
    x, weights, ids = routing(tokens=tokens)
    full_shard = ExpertShard(E, H, I)
    full = run(load_rank(ckpt, full_shard), full_shard, x, weights, ids)
    # Padded layers rely on zero-initialised parameters, as the quant method creates them.
    fill = 0 if intermediate != I else 0xAB
    total = torch.zeros_like(full)
    for ep_rank in range(ep):
        for tp_rank in range(tp):
            shard = ExpertShard(
                E, H, intermediate, ep_size=ep, ep_rank=ep_rank, tp_size=tp, tp_rank=tp_rank, **shard_kwargs
            )
            total += run(load_rank(ckpt, shard, fill=fill), shard, x, weights, ids)
    torch.testing.assert_close(total, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ep,tp", [(2, 1), (1, 2), (2, 2), (4, 1), (1, 4), (8, 1)])
def test_rank_outputs_sum_to_the_full_moe(ep: int, tp: int) -> None:
    assert_ranks_sum_to_full(ep, tp, tokens=7)


@pytest.mark.parametrize("ep,tp,padded", [(2, 1, 256), (1, 2, 256), (2, 2, 256), (1, 2, 192), (1, 4, 256), (2, 1, 160)])
def test_padded_layers_compute_the_checkpoint_moe(ep: int, tp: int, padded: int) -> None:
    """SGLang's CPU TP padding: runner tensors wider than the checkpoint; zero tails, same output."""
    assert_ranks_sum_to_full(ep, tp, tokens=5, intermediate=padded, checkpoint_intermediate_size=I)


def test_rank_entirely_in_the_padding_holds_zeros() -> None:
    shard = ExpertShard(E, H, 512, tp_size=4, tp_rank=3, checkpoint_intermediate_size=I)
    assert shard.checkpoint_range == (128, 0)
    params = load_rank(checkpoint(), shard, fill=0)
    assert all(int(t.count_nonzero()) == 0 for t in params.values())


def test_full_load_is_the_stacked_checkpoint_and_tp_slices_match_shard_intermediate() -> None:
    ckpt = checkpoint()
    full = load_rank(ckpt, ExpertShard(E, H, I))
    for e in range(E):
        assert torch.equal(full["w13"][e], torch.cat([ckpt[(e, "w1")]["weight"], ckpt[(e, "w3")]["weight"]]).view(torch.uint8))
        assert torch.equal(full["w2_scale"][e], ckpt[(e, "w2")]["scale"].view(torch.uint8))
    for rank in range(2):
        mine = load_rank(ckpt, ExpertShard(E, H, I, tp_size=2, tp_rank=rank))
        want = shard_intermediate(full["w13"], full["w13_scale"], full["w2"], full["w2_scale"], rank, 2)
        for got, ref in zip((mine["w13"], mine["w13_scale"], mine["w2"], mine["w2_scale"]), want):
            assert torch.equal(got, ref)


def test_ep_ranks_hold_contiguous_expert_ranges() -> None:
    owners = {}
    for rank in range(4):
        shard = ExpertShard(E, H, I, ep_size=4, ep_rank=rank)
        assert shard.expert_offset == 2 * rank and shard.num_local_experts == 2
        for e in range(E):
            if shard.local_expert(e) is not None:
                owners.setdefault(e, []).append((rank, shard.local_expert(e)))
    assert owners == {e: [(e // 2, e % 2)] for e in range(E)}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ep_size=3), "do not split evenly"),
        (dict(tp_size=8), "multiples of 32"),
        (dict(tp_size=3), "multiples of 32"),
        (dict(ep_size=2, ep_rank=2), "out of range"),
        (dict(hidden_size=48), "multiple of 32"),
        (dict(checkpoint_intermediate_size=I + 32), "no larger than"),
        (dict(checkpoint_intermediate_size=48), "multiple of 32"),
    ],
)
def test_invalid_grids_are_refused(kwargs, match) -> None:
    base = dict(num_experts=E, hidden_size=H, intermediate_size=I)
    with pytest.raises(ValueError, match=match):
        ExpertShard(**{**base, **kwargs})


def test_wrong_checkpoint_shape_and_dtype_are_refused() -> None:
    shard = ExpertShard(E, H, I)
    params = {name: torch.zeros(shape, dtype=torch.uint8) for name, shape in shard.local_shapes().items()}
    with pytest.raises(ValueError, match=r"w2 weight has shape \(64, 32\), expected \(64, 64\)"):
        copy_expert_tensor(params["w2"], torch.zeros(H, I // 4, dtype=torch.int8), shard=shard, global_expert=0, shard_id="w2", kind="weight")
    with pytest.raises(TypeError, match="float32"):
        copy_expert_tensor(params["w2"], torch.zeros(H, I // 2), shard=shard, global_expert=0, shard_id="w2", kind="weight")
    with pytest.raises(ValueError, match="expert id 8 out of range"):
        shard.local_expert(E)
