"""Tiny synthetic DeepSeek-V4-Flash-DSpark checkpoints: real tensor names, dtypes, config keys and index file.

Tensor names follow DeepSeek's V4 inference ``model.py`` (the names SGLang's
``deepseek_v4.py`` / ``deepseek_v4_dspark.py`` remap on load):

* global: ``embed.weight``, ``head.weight``, ``norm.weight``,
  ``hc_head_{fn,base,scale}``;
* per block (``layers.{L}`` and drafter stages ``mtp.{M}``): ``attn_norm``,
  ``ffn_norm``, ``hc_{attn,ffn}_{fn,base,scale}``; attention ``attn.attn_sink``,
  ``attn.wq_a``, ``attn.q_norm``, ``attn.wq_b``, ``attn.wkv``, ``attn.kv_norm``,
  ``attn.wo_a``, ``attn.wo_b`` (FP8 e4m3 ``.weight`` + ue8m0 128x128 ``.scale``);
  MoE ``ffn.gate.weight`` with ``ffn.gate.bias`` (or ``ffn.gate.tid2eid`` on the
  first ``n_hash_layers`` layers), routed experts
  ``ffn.experts.{E}.{w1,w2,w3}.{weight,scale}`` (int8 packed e2m1 ``[out,
  in/2]`` + ``float8_e8m0fnu`` ``[out, in/32]``), FP8 ``ffn.shared_experts.*``;
* drafter: ``mtp.0.main_proj`` (FP8, ``len(target_layer_ids) * H -> H``) and
  ``mtp.0.main_norm``; the last stage holds ``norm``, ``hc_head_*``,
  ``markov_head.markov_w1.weight`` / ``markov_w2.weight`` (``[vocab, rank]``)
  and ``confidence_head.proj.{weight,bias}`` (``[1, H + rank]``).

Every block sits in its own shard (``model-0000k-of-0000n.safetensors``), the
global tensors in the first, listed in ``model.safetensors.index.json``. Sizes
are tiny (a few MB); compressed attention (``compress_ratios`` > 0) and the
indexer are left out (all ratios 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sglang_dspark.models.checkpoint_index import INDEX_FILE
from sglang_dspark.models.fp8_block import quantize_fp8_block
from sglang_dspark.models.synthetic import write_synthetic_v4_config
from sglang_dspark.moe import mxfp4

__all__ = ["V4Spec", "write_real_shaped_v4_checkpoint", "write_synthetic_v4_checkpoint", "INDEX_FILE"]


@dataclass(frozen=True)
class V4Spec:
    """Sizes of a synthetic V4-Flash-DSpark checkpoint (real V4-Flash values in comments)."""

    hidden_size: int = 256  # 4096
    vocab_size: int = 512  # 129280
    num_layers: int = 3  # 43
    n_hash_layers: int = 1  # 3
    num_heads: int = 4  # 64
    head_dim: int = 128  # 512
    q_lora_rank: int = 128  # 1024
    o_groups: int = 2  # 8
    o_lora_rank: int = 128  # 1024
    n_routed_experts: int = 8  # 256
    num_experts_per_tok: int = 2  # 6
    moe_intermediate_size: int = 128  # 2048
    hc_mult: int = 4  # 4
    num_mtp: int = 3  # 3 drafter stages
    target_layer_ids: tuple[int, ...] = (0, 1, 2)  # (40, 41, 42)
    block_size: int = 5
    markov_rank: int = 32  # 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % mxfp4.BLOCK_SIZE or self.moe_intermediate_size % mxfp4.BLOCK_SIZE:
            raise ValueError("hidden and moe_intermediate sizes must be multiples of 32")
        if any(not 0 <= i < self.num_layers for i in self.target_layer_ids):
            raise ValueError(f"target_layer_ids {self.target_layer_ids} outside [0, {self.num_layers})")
        if self.num_heads % self.o_groups:
            raise ValueError("num_heads must be a multiple of o_groups")

    @property
    def noise_token_id(self) -> int:
        return self.vocab_size - 1


def _config_overrides(spec: V4Spec) -> dict:
    return {
        "num_attention_heads": spec.num_heads,
        "head_dim": spec.head_dim,
        "q_lora_rank": spec.q_lora_rank,
        "o_lora_rank": spec.o_lora_rank,
        "o_groups": spec.o_groups,
        "n_routed_experts": spec.n_routed_experts,
        "num_experts_per_tok": spec.num_experts_per_tok,
        "moe_intermediate_size": spec.moe_intermediate_size,
        "hc_mult": spec.hc_mult,
        "n_hash_layers": spec.n_hash_layers,
        "n_mtp_layers": spec.num_mtp,
        "compress_ratios": [0] * (spec.num_layers + spec.num_mtp),
        "expert_dtype": "fp4",
        "quantization_config": {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "scale_fmt": "ue8m0",
            "activation_scheme": "dynamic",
            "weight_block_size": [128, 128],
        },
    }


class _Gen:
    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, *shape: int, std: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g) * std


def _fp8_linear(out: dict, name: str, rows: int, cols: int, gen: _Gen) -> None:
    weight, scale = quantize_fp8_block(gen.randn(rows, cols))
    out[name + ".weight"], out[name + ".scale"] = weight, scale


def _block(prefix: str, spec: V4Spec, gen: _Gen, *, hash_layer: bool) -> dict[str, torch.Tensor]:
    h, hc = spec.hidden_size, spec.hc_mult
    mix = (2 + hc) * hc
    t: dict[str, torch.Tensor] = {}
    t[f"{prefix}.attn_norm.weight"] = torch.ones(h)
    t[f"{prefix}.ffn_norm.weight"] = torch.ones(h)
    for part in ("attn", "ffn"):
        t[f"{prefix}.hc_{part}_fn"] = gen.randn(mix, hc * h)
        t[f"{prefix}.hc_{part}_base"] = gen.randn(mix)
        t[f"{prefix}.hc_{part}_scale"] = gen.randn(3)
    a = f"{prefix}.attn"
    t[f"{a}.attn_sink"] = gen.randn(spec.num_heads)
    _fp8_linear(t, f"{a}.wq_a", spec.q_lora_rank, h, gen)
    t[f"{a}.q_norm.weight"] = torch.ones(spec.q_lora_rank)
    _fp8_linear(t, f"{a}.wq_b", spec.num_heads * spec.head_dim, spec.q_lora_rank, gen)
    _fp8_linear(t, f"{a}.wkv", spec.head_dim, h, gen)
    t[f"{a}.kv_norm.weight"] = torch.ones(spec.head_dim)
    _fp8_linear(t, f"{a}.wo_a", spec.o_groups * spec.o_lora_rank, spec.num_heads * spec.head_dim // spec.o_groups, gen)
    _fp8_linear(t, f"{a}.wo_b", h, spec.o_groups * spec.o_lora_rank, gen)
    f = f"{prefix}.ffn"
    t[f"{f}.gate.weight"] = gen.randn(spec.n_routed_experts, h).to(torch.bfloat16)
    if hash_layer:
        ids = torch.stack([torch.randperm(spec.n_routed_experts, generator=gen.g)[: spec.num_experts_per_tok]
                           for _ in range(spec.vocab_size)])
        t[f"{f}.gate.tid2eid"] = ids.to(torch.int32)
    else:
        t[f"{f}.gate.bias"] = gen.randn(spec.n_routed_experts)
    i = spec.moe_intermediate_size
    for e in range(spec.n_routed_experts):
        for w, (rows, cols) in (("w1", (i, h)), ("w2", (h, i)), ("w3", (i, h))):
            packed, scale = mxfp4.quantize(gen.randn(rows, cols, std=0.2))
            t[f"{f}.experts.{e}.{w}.weight"] = packed
            t[f"{f}.experts.{e}.{w}.scale"] = scale.view(torch.float8_e8m0fnu)
    for w, (rows, cols) in (("w1", (i, h)), ("w2", (h, i)), ("w3", (i, h))):
        _fp8_linear(t, f"{f}.shared_experts.{w}", rows, cols, gen)
    return t


def _globals(spec: V4Spec, gen: _Gen, prefix: str = "") -> dict[str, torch.Tensor]:
    h, hc = spec.hidden_size, spec.hc_mult
    return {
        f"{prefix}hc_head_fn": gen.randn(hc, hc * h),
        f"{prefix}hc_head_base": gen.randn(hc),
        f"{prefix}hc_head_scale": gen.randn(1),
        f"{prefix}norm.weight": torch.ones(h),
    }


def write_synthetic_v4_checkpoint(directory: str | Path, spec: V4Spec = V4Spec()) -> Path:
    """Write a tiny V4-Flash-DSpark checkpoint (config, shards, index) to ``directory``; returns it."""
    from safetensors.torch import save_file

    root = Path(directory)
    write_synthetic_v4_config(
        root,
        block_size=spec.block_size,
        noise_token_id=spec.noise_token_id,
        target_layer_ids=spec.target_layer_ids,
        markov_rank=spec.markov_rank,
        hidden_size=spec.hidden_size,
        vocab_size=spec.vocab_size,
        num_hidden_layers=spec.num_layers,
        overrides=_config_overrides(spec),
    )
    gen = _Gen(spec.seed)
    h = spec.hidden_size
    groups: list[dict[str, torch.Tensor]] = [
        {
            "embed.weight": gen.randn(spec.vocab_size, h, std=0.5).to(torch.bfloat16),
            "head.weight": gen.randn(spec.vocab_size, h, std=0.5).to(torch.bfloat16),
            **_globals(spec, gen),
        }
    ]
    for layer in range(spec.num_layers):
        groups.append(_block(f"layers.{layer}", spec, gen, hash_layer=layer < spec.n_hash_layers))
    last = spec.num_mtp - 1
    for stage in range(spec.num_mtp):
        p = f"mtp.{stage}"
        t = _block(p, spec, gen, hash_layer=False)
        if stage == 0:
            _fp8_linear(t, f"{p}.main_proj", h, h * len(spec.target_layer_ids), gen)
            t[f"{p}.main_norm.weight"] = torch.ones(h)
        if stage == last:
            t.update(_globals(spec, gen, prefix=f"{p}."))
            t[f"{p}.markov_head.markov_w1.weight"] = gen.randn(spec.vocab_size, spec.markov_rank)
            t[f"{p}.markov_head.markov_w2.weight"] = gen.randn(spec.vocab_size, spec.markov_rank)
            t[f"{p}.confidence_head.proj.weight"] = gen.randn(1, h + spec.markov_rank)
            t[f"{p}.confidence_head.proj.bias"] = gen.randn(1)
        groups.append(t)
    weight_map: dict[str, str] = {}
    total = 0
    for k, tensors in enumerate(groups, start=1):
        file = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: v.contiguous() for n, v in tensors.items()}, str(root / file))
        for name, tensor in tensors.items():
            weight_map[name] = file
            total += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (root / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return root


# DeepSeek-V4-Flash-DSpark's config values, and where each comes from:
# - write_synthetic_v4_config's defaults (hidden 4096, 43 layers, vocab 129280, 64 query heads, 1 KV head,
#   head dim 512, q/o LoRA ranks 1024, 8 o-groups, 256 routed experts, top-6, 1 shared expert,
#   moe_intermediate_size 2048, sliding window 128, hc_mult 4, YaRN x16 from 65536, dspark_block_size 5,
#   dspark_noise_token_id 128799, dspark_target_layer_ids [40, 41, 42], dspark_markov_rank 256):
#   the release as described in shared/docs/dspark.md;
# - n_hash_layers 3, n_mtp_layers 3 (the drafter's mtp.0-2), expert_dtype fp4 and the FP8 e4m3 128x128 ue8m0
#   quantization_config: the same document's checkpoint layout;
# - index_head_dim 128, index_n_heads 64, index_topk 1024: DeepSeek-V4-Pro's published config (the Flash
#   release's values were not at hand; SGLang 0.5.23 reads the keys for every V4 model);
# - compress_ratios all 0 (no compressed layers): a simplification, as in the tiny checkpoints.
REAL_V4_FLASH_OVERRIDES = {
    "n_hash_layers": 3,
    "n_mtp_layers": 3,
    "compress_ratios": [0] * 46,
    "expert_dtype": "fp4",
    "index_head_dim": 128,
    "index_n_heads": 64,
    "index_topk": 1024,
    "quantization_config": _config_overrides(V4Spec())["quantization_config"],
}


def write_real_shaped_v4_checkpoint(directory: str | Path) -> Path:
    """A checkpoint directory with DeepSeek-V4-Flash-DSpark's real ``config.json`` over tiny shards.

    The shards and index are the tiny synthetic checkpoint's (real tensor names, FP4/FP8 dtypes): enough
    for everything that reads only the config and the safetensors headers and index (argument
    resolution, preflight, the download check); the tensor shapes do not match the config, so nothing
    may load its weights.
    """
    root = write_synthetic_v4_checkpoint(directory)
    write_synthetic_v4_config(root, overrides=REAL_V4_FLASH_OVERRIDES)
    return root
