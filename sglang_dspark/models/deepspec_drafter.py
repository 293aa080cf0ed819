"""Pure-torch reference drafter for DeepSpec DSpark checkpoints (Qwen3/Llama targets).

Architecture (DeepSpec ``deepspec/modeling/dspark/qwen3/modeling.py``,
``Qwen3DSparkModel._forward_backbone`` and ``Qwen3DSparkAttention``):

* context features: the target's hidden states at ``target_layer_ids``
  (outputs of those decoder layers, concatenated in order, ``[.., n*H]``)
  go through ``c = hidden_norm(fc(features))`` once, shared by every layer;
* each decoder layer is a pre-norm Qwen3/Llama layer
  (``input_layernorm`` -> attention -> residual -> ``post_attention_layernorm``
  -> SwiGLU MLP -> residual) whose attention keys/values are
  ``[k_proj(c) ; k_proj(x)]`` / ``[v_proj(c) ; v_proj(x)]``: the context rows
  come from ``c`` (not from the layer's own stream), the block rows from the
  block's hidden states ``x``; Qwen3 applies ``q_norm``/``k_norm`` per head
  before RoPE; context rows are rotated at their own positions, block rows at
  ``anchor_pos + i``;
* the block (anchor embedding + ``block_size - 1`` mask embeddings) attends
  bidirectionally to itself and to every context row strictly before the
  anchor (the anchor is not yet seen by the target);
* a final ``norm``; the target's LM head gives ``U_k`` and output i drafts the
  token at ``anchor_pos + i + 1``;
* option ``anchor_context_input`` (not DeepSpec's): the block rows start from
  EAGLE's input form, ``fc([norm(embedding) ; norm(c_prev)])`` with ``c_prev``
  the projected context row just before the anchor
  (:class:`AnchorContextInput`), instead of the bare embeddings.

The embedding and LM head belong to the target and are passed in, never owned
(DeepSpec checkpoints carry copies as ``embed_tokens.weight`` and
``lm_head.weight``; the loader checks their shapes and skips them).

Because the context K/V of every layer depend only on ``c``, they are cached
(:class:`DrafterContextCache`) and extended with the newly committed rows after
each verification; the block's own K/V are recomputed each step and never
cached. Forward passes keep autograd (wrap serving calls in
``torch.inference_mode()``); :meth:`DeepSpecDrafter.draft` never tracks gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from sglang_dspark.algorithm.block_drafting import DraftBlock, draft_block
from sglang_dspark.algorithm.config import DSparkConfig, DSparkConfigError, load_config_dict
from sglang_dspark.algorithm.confidence_head import ConfidenceHead
from sglang_dspark.algorithm.draft_vocab import DraftVocab, DraftVocabError
from sglang_dspark.algorithm.markov_head import build_markov_head
from sglang_dspark.algorithm.sampling import SamplingParams
from sglang_dspark.models.checkpoint_index import INDEX_FILE, SINGLE_FILE, CheckpointIndexError, read_weight_map
from sglang_dspark.models.safetensors_header import (
    FLOAT_DTYPES,
    SafetensorsHeaderError,
    read_safetensors_header,
)

__all__ = [
    "DeepSpecDrafter",
    "DrafterCheckpointError",
    "DrafterContextCache",
    "DrafterOutput",
    "IGNORED_CHECKPOINT_KEYS",
    "RMSNorm",
    "RotaryEmbedding",
    "deepspec_state_dict_shapes",
    "load_deepspec_drafter",
    "rope_inv_freq",
]

#: Tensors DeepSpec checkpoints may carry that the drafter takes from the target
#: (copies of the target's embedding/LM head) or recomputes (RoPE buffer).
IGNORED_CHECKPOINT_KEYS: tuple[str, ...] = (
    "embed_tokens.weight",
    "lm_head.weight",
    "rotary_emb.inv_freq",
)

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class DrafterCheckpointError(ValueError):
    """A drafter checkpoint is incomplete, corrupt or shaped for another model."""


# ---------------------------------------------------------------------- #
# Building blocks
# ---------------------------------------------------------------------- #
class RMSNorm(nn.Module):
    """RMSNorm computed in float32, scaled after casting back (HF Llama/Qwen3 order)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class AnchorContextInput(nn.Module):
    """EAGLE's input form for block rows: ``fc([embed_norm(e) ; context_norm(c_prev)])``.

    ``c_prev`` is the projected context row (``hidden_norm(fc(features))``) just
    before the block's anchor: the features that predicted the anchor. Side by
    side through one ``[H, 2H]`` matrix, the row is fetched far better than
    through attention or summed onto the embedding (``bench/RESULTS.md``, the
    position-1 probe and the 97-step A/B). A zero row (no context) stays zero
    after its norm, so the first block of a request reads the embeddings alone.
    """

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.fc = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.embed_norm = RMSNorm(hidden_size, eps)
        self.context_norm = RMSNorm(hidden_size, eps)

    def forward(self, embeds: torch.Tensor, anchor_context: torch.Tensor) -> torch.Tensor:
        """``embeds [..., K, H]``, ``anchor_context [..., H]`` -> ``[..., K, H]``."""
        context = self.context_norm(anchor_context).unsqueeze(-2).expand_as(embeds)
        return self.fc(torch.cat([self.embed_norm(embeds), context], dim=-1))


def rope_inv_freq(config: DSparkConfig) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies ``[head_dim/2]`` and cos/sin scale (HF semantics).

    Supports ``default``, ``linear``, ``llama3`` and ``yarn`` scaling.
    """
    dim = config.head_dim
    base = config.rope_theta
    scaling = config.rope_scaling
    # Explicit CPU float32: the tables must not inherit a meta/bf16 default.
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    inv_freq = 1.0 / (base**exponents)
    if scaling.rope_type == "default":
        return inv_freq, 1.0
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor, 1.0
    if scaling.rope_type == "llama3":
        old_len = scaling.original_max_position_embeddings
        low_wavelen = old_len / scaling.low_freq_factor
        high_wavelen = old_len / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (old_len / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(is_medium, smoothed, scaled), 1.0
    # yarn
    factor = scaling.factor
    orig_len = scaling.original_max_position_embeddings or config.max_position_embeddings

    def mscale_of(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = scaling.attention_factor
    if attention_factor is None:
        if scaling.mscale and scaling.mscale_all_dim:
            attention_factor = mscale_of(factor, scaling.mscale) / mscale_of(
                factor, scaling.mscale_all_dim
            )
        else:
            attention_factor = mscale_of(factor)

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(orig_len / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low = correction_dim(scaling.beta_fast)
    high = correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.arange(dim // 2, dtype=torch.float32, device="cpu")
    ramp = ((ramp - low) / (high - low)).clamp(0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = base**exponents
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (
        1.0 / pos_freqs
    ) * extrapolation_weight
    return inv_freq, float(attention_factor)


class RotaryEmbedding(nn.Module):
    """cos/sin tables ``[B, T, head_dim]`` (float32) for integer positions ``[B, T]``."""

    def __init__(self, config: DSparkConfig) -> None:
        super().__init__()
        # A plain attribute, not a buffer, so ``.to(bfloat16)`` cannot round it.
        self.inv_freq, self.attention_scaling = rope_inv_freq(config)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float().unsqueeze(-1) * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x``: ``[B, heads, T, D]``; ``cos``/``sin``: ``[B, T, D]``."""
    cos = cos.unsqueeze(1).to(x.dtype)
    sin = sin.unsqueeze(1).to(x.dtype)
    return x * cos + _rotate_half(x) * sin


class DrafterAttention(nn.Module):
    """Block queries over [cached context K/V ; block K/V], bidirectional in the block."""

    def __init__(self, config: DSparkConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        # Set under tensor parallelism (drafter_tensor_parallel): sums the ranks' o_proj partials.
        self.reduce_output: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _heads(self, x: torch.Tensor, proj: nn.Linear, heads: int, norm) -> torch.Tensor:
        out = proj(x).view(*x.shape[:2], heads, self.head_dim)
        if norm is not None:
            out = norm(out)
        return out.transpose(1, 2)

    def key_values(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated keys and values ``[B, kv_heads, T, D]`` of rows ``x`` ``[B, T, H]``."""
        k = _apply_rope(self._heads(x, self.k_proj, self.num_kv_heads, self.k_norm), cos, sin)
        v = self._heads(x, self.v_proj, self.num_kv_heads, None)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        ctx_k: torch.Tensor,
        ctx_v: torch.Tensor,
        ctx_mask: torch.Tensor,
    ) -> torch.Tensor:
        """``x`` ``[B, K, H]``; ``ctx_k``/``ctx_v`` ``[B, kv, C, D]``; ``ctx_mask`` ``[B, C]``."""
        batch, num_pos, _ = x.shape
        q = _apply_rope(self._heads(x, self.q_proj, self.num_heads, self.q_norm), cos, sin)
        blk_k, blk_v = self.key_values(x, cos, sin)
        k = torch.cat([ctx_k.to(blk_k.dtype), blk_k], dim=2)
        v = torch.cat([ctx_v.to(blk_v.dtype), blk_v], dim=2)
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        visible = torch.cat(
            [ctx_mask, torch.ones(batch, num_pos, dtype=torch.bool, device=x.device)], dim=1
        )
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=visible[:, None, None, :], scale=self.head_dim**-0.5
        )
        out = self.o_proj(out.transpose(1, 2).reshape(batch, num_pos, -1))
        return out if self.reduce_output is None else self.reduce_output(out)


class DrafterMLP(nn.Module):
    """SwiGLU MLP: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, config: DSparkConfig) -> None:
        super().__init__()
        if config.hidden_act not in _ACTIVATIONS:
            raise DSparkConfigError(
                f"hidden_act={config.hidden_act!r} is not supported; use one of "
                f"{sorted(_ACTIVATIONS)}."
            )
        self.act = _ACTIVATIONS[config.hidden_act]
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.reduce_output: Callable[[torch.Tensor], torch.Tensor] | None = None  # as DrafterAttention's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return out if self.reduce_output is None else self.reduce_output(out)


class DrafterLayer(nn.Module):
    """Pre-norm decoder layer with context-injected attention."""

    def __init__(self, config: DSparkConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DrafterAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DrafterMLP(config)

    def forward(self, x, cos, sin, ctx_k, ctx_v, ctx_mask) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, ctx_k, ctx_v, ctx_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


# ---------------------------------------------------------------------- #
# Context cache
# ---------------------------------------------------------------------- #
@dataclass
class DrafterContextCache:
    """Per-layer context K/V of a batch, padded to a shared capacity.

    Attributes:
        keys: per layer ``[B, kv_heads, capacity, D]`` (post k_norm and RoPE).
        values: per layer ``[B, kv_heads, capacity, D]``.
        lengths: ``[B]`` int64 valid context rows per request.
        last_rows: ``[B, H]`` projected context row (``hidden_norm(fc(.))``) of
            each request's last context token, zeros without context; only
            for drafters with ``anchor_context_input`` (``None`` otherwise).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: torch.Tensor
    last_rows: torch.Tensor | None = None

    @property
    def capacity(self) -> int:
        """Allocated rows per request."""
        return self.keys[0].shape[2]

    @property
    def batch_size(self) -> int:
        """Number of requests."""
        return self.lengths.shape[0]

    def valid_mask(self) -> torch.Tensor:
        """``[B, capacity]`` bool: rows holding context."""
        rows = torch.arange(self.capacity, device=self.lengths.device)
        return rows[None, :] < self.lengths[:, None]

    def reserve(self, capacity: int) -> None:
        """Grow every layer's buffers to at least ``capacity`` rows."""
        if capacity <= self.capacity:
            return
        new_cap = max(capacity, 2 * self.capacity)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                grown = old.new_zeros(*old.shape[:2], new_cap, old.shape[3])
                grown[:, :, : old.shape[2]] = old
                store[i] = grown


# ---------------------------------------------------------------------- #
# Drafter
# ---------------------------------------------------------------------- #
@dataclass(frozen=True)
class DrafterOutput:
    """Backbone outputs for one block.

    Attributes:
        hidden: ``[B, K, H]`` final-norm hidden states ``h_k``.
        logits: ``[B, K, V]`` ``U_k`` from the target's LM head.
    """

    hidden: torch.Tensor
    logits: torch.Tensor


@dataclass(frozen=True)
class _SharedTargetModules:
    # Held in a plain (non-Module) container so the drafter neither registers
    # nor moves the target's embedding and LM head.
    embed_tokens: nn.Module
    lm_head: nn.Module


class DeepSpecDrafter(nn.Module):
    """DeepSpec DSpark drafter (Qwen3/Llama family) with a reusable context cache.

    State-dict keys match DeepSpec's: ``layers.N.*``, ``norm.weight``,
    ``fc.weight``, ``hidden_norm.weight``, ``markov_head.*`` and
    ``confidence_head.proj.*``.
    """

    def __init__(
        self,
        config: DSparkConfig,
        *,
        embed_tokens: nn.Module | None = None,
        lm_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if config.backbone not in ("qwen3", "llama"):
            raise DSparkConfigError(
                f"backbone={config.backbone!r}: the DeepSpec reference drafter builds "
                "Qwen3/Llama layers only; DeepSeek-V4 drafters have their own implementation."
            )
        self.config = config
        self.layers = nn.ModuleList(DrafterLayer(config) for _ in range(config.num_draft_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.fc = nn.Linear(config.context_feature_size, config.hidden_size, bias=False)
        self.hidden_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Registered here (after ``hidden_norm``): the trainer's seeded init visits
        # parameters in registration order.
        self.anchor_input = (
            AnchorContextInput(config.hidden_size, config.rms_norm_eps)
            if config.anchor_context_input else None
        )
        self.rotary_emb = RotaryEmbedding(config)
        self.markov_head = build_markov_head(config)
        self.confidence_head = (
            ConfidenceHead.from_config(config) if config.enable_confidence_head else None
        )
        if config.draft_vocab_size is not None:
            # EAGLE-3 layout (:mod:`sglang_dspark.algorithm.draft_vocab`), set by training.
            self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.int64))
            self.register_buffer("t2d", torch.zeros(config.vocab_size, dtype=torch.bool))
        self._draft_vocab: tuple[Any, DraftVocab] | None = None
        self._head_rows: tuple[Any, torch.Tensor] | None = None
        self._shared: _SharedTargetModules | None = None
        if embed_tokens is not None or lm_head is not None:
            if embed_tokens is None or lm_head is None:
                raise ValueError("pass both embed_tokens and lm_head, or neither.")
            self.attach_target_modules(embed_tokens, lm_head)

    def attach_target_modules(self, embed_tokens: nn.Module, lm_head: nn.Module) -> None:
        """Share the target's embedding and LM head (checked against the config)."""
        _check_shared_shape("embed_tokens", embed_tokens, self.config)
        _check_shared_shape("lm_head", lm_head, self.config)
        self._shared = _SharedTargetModules(embed_tokens, lm_head)

    @property
    def draft_vocab(self) -> DraftVocab | None:
        """The reduced draft vocabulary (validated from ``d2t``/``t2d``), or ``None``."""
        if self.config.draft_vocab_size is None:
            return None
        key = (self.d2t.data_ptr(), self.d2t.device, self.d2t._version)
        if self._draft_vocab is None or self._draft_vocab[0] != key:
            try:
                vocab = DraftVocab.from_d2t(self.d2t, self.t2d, self.config.vocab_size)
            except DraftVocabError as exc:
                raise DrafterCheckpointError(f"bad draft vocabulary (d2t/t2d): {exc}") from exc
            self._draft_vocab = (key, vocab)
        return self._draft_vocab[1]

    def set_draft_vocab(self, vocab: DraftVocab) -> None:
        """Store ``vocab`` in ``d2t``/``t2d`` (training; the config fixes its size)."""
        if self.config.draft_vocab_size != vocab.size or vocab.full_size != self.config.vocab_size:
            raise DSparkConfigError(
                f"draft vocabulary of {vocab.size}/{vocab.full_size} tokens does not fit the config "
                f"(draft_vocab_size={self.config.draft_vocab_size}, vocab_size={self.config.vocab_size})."
            )
        with torch.no_grad():
            self.d2t.copy_(vocab.d2t().to(self.d2t.device))
            self.t2d.copy_(vocab.membership().to(self.t2d.device))
        self._draft_vocab = None

    def head_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The shared LM head over the output vocabulary: ``[..., H]`` -> ``[..., Vd]``.

        With a draft vocabulary the head's rows for it are copied once (in the
        head's compute dtype) and reused while the head's weight is unchanged.
        """
        head = self._target_modules().lm_head
        weight = getattr(head, "weight", None)
        if self.draft_vocab is None or weight is None:
            return head(hidden if weight is None else hidden.to(weight.dtype))
        rows = self._draft_head_rows(head, weight)
        return F.linear(hidden.to(rows.dtype), rows).to(weight.dtype)

    def _draft_head_rows(self, head: nn.Module, weight: torch.Tensor) -> torch.Tensor:
        dtype = getattr(head, "compute_dtype", None) or weight.dtype
        key = (weight.data_ptr(), weight.device, dtype, self.d2t._version)
        if self._head_rows is None or self._head_rows[0] != key:
            rows = weight.detach().index_select(0, self.draft_vocab.ids.to(weight.device)).to(dtype)
            self._head_rows = (key, rows)
        return self._head_rows[1]

    def head_weight_copy(self) -> torch.Tensor | None:
        """The LM head copy this drafter multiplies with (draft-vocabulary rows, or the
        shared head's compute-dtype copy), or ``None`` when it uses the target's weight."""
        head = self._target_modules().lm_head
        weight = getattr(head, "weight", None)
        if self.draft_vocab is not None and weight is not None:
            return self._draft_head_rows(head, weight)
        return getattr(head, "compute_weight", None)

    def _target_modules(self) -> _SharedTargetModules:
        if self._shared is None:
            raise RuntimeError("attach the target's embed_tokens and lm_head first.")
        return self._shared

    @property
    def _dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    @property
    def kv_heads_per_rank(self) -> int:
        """Key-value heads this process's layers hold (fewer than the config's under tensor parallelism)."""
        if len(self.layers) == 0:
            return self.config.num_key_value_heads
        return self.layers[0].self_attn.num_kv_heads

    def new_cache(
        self, batch_size: int, *, capacity: int = 64, device: torch.device | None = None
    ) -> DrafterContextCache:
        """An empty context cache for ``batch_size`` requests."""
        device = device if device is not None else self.fc.weight.device
        cfg = self.config
        shape = (batch_size, self.kv_heads_per_rank, max(capacity, 1), cfg.head_dim)
        last_rows = None
        if self.anchor_input is not None:
            last_rows = torch.zeros(batch_size, cfg.hidden_size, dtype=self._dtype, device=device)
        return DrafterContextCache(
            keys=[torch.zeros(shape, dtype=self._dtype, device=device) for _ in self.layers],
            values=[torch.zeros(shape, dtype=self._dtype, device=device) for _ in self.layers],
            lengths=torch.zeros(batch_size, dtype=torch.int64, device=device),
            last_rows=last_rows,
        )

    def project_context(self, context_hidden: torch.Tensor) -> torch.Tensor:
        """``hidden_norm(fc(features))``: ``[B, T, n*H]`` -> ``[B, T, H]``."""
        expected = self.config.context_feature_size
        if context_hidden.shape[-1] != expected:
            raise ValueError(
                f"context hidden states have width {context_hidden.shape[-1]}, expected "
                f"{expected} = {self.config.num_target_features} target layers x "
                f"{self.config.hidden_size}."
            )
        return self.hidden_norm(self.fc(context_hidden.to(self._dtype)))

    def block_inputs(self, block_ids: torch.Tensor, anchor_context: torch.Tensor | None) -> torch.Tensor:
        """First-layer input of block rows ``[..., K]`` -> ``[..., K, H]``.

        The token embeddings; for ``anchor_context_input`` drafters, those and
        ``anchor_context`` ``[..., H]`` (the projected context row just before
        the block's anchor) through :class:`AnchorContextInput`.
        """
        x = self._target_modules().embed_tokens(block_ids).to(self._dtype)
        if self.anchor_input is None:
            return x
        if anchor_context is None:
            raise ValueError("this drafter reads the context row before the anchor (anchor_context_input).")
        return self.anchor_input(x, anchor_context.to(self._dtype))

    def extend_context(
        self,
        cache: DrafterContextCache,
        context_hidden: torch.Tensor,
        *,
        num_new: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> None:
        """Append newly committed context rows to ``cache``.

        Args:
            cache: the batch's context cache (updated in place).
            context_hidden: ``[B, T, n*H]`` target hidden states at
                ``target_layer_ids`` for the new rows, left-aligned; rows at
                ``t >= num_new[b]`` are padding.
            num_new: ``[B]`` rows to append per request (default ``T``).
            positions: ``[B, T]`` absolute positions (default: continuing
                from ``cache.lengths``).
        """
        batch, num_rows, _ = context_hidden.shape
        device = cache.lengths.device
        if batch != cache.batch_size:
            raise ValueError(f"cache holds {cache.batch_size} requests, got {batch}.")
        if num_new is None:
            num_new = torch.full((batch,), num_rows, dtype=torch.int64, device=device)
        num_new = num_new.to(device=device, dtype=torch.int64)
        offsets = torch.arange(num_rows, device=device)
        if positions is None:
            positions = cache.lengths[:, None] + offsets[None, :]
        cache.reserve(int((cache.lengths + num_new).max().item()))

        ctx = self.project_context(context_hidden.to(device))
        cos, sin = self.rotary_emb(positions.to(device))
        rows_b, rows_t = (offsets[None, :] < num_new[:, None]).nonzero(as_tuple=True)
        dest = cache.lengths[rows_b] + rows_t
        for i, layer in enumerate(self.layers):
            k, v = layer.self_attn.key_values(ctx, cos, sin)
            cache.keys[i][rows_b, :, dest] = k[rows_b, :, rows_t].to(cache.keys[i].dtype)
            cache.values[i][rows_b, :, dest] = v[rows_b, :, rows_t].to(cache.values[i].dtype)
        if cache.last_rows is not None and num_rows > 0:
            newest = ctx[torch.arange(batch, device=device), (num_new - 1).clamp(min=0)]
            grew = (num_new > 0)[:, None]
            cache.last_rows.copy_(torch.where(grew, newest.to(cache.last_rows.dtype), cache.last_rows))
        cache.lengths += num_new

    def forward_block(
        self,
        anchor_tokens: torch.Tensor,
        cache: DrafterContextCache,
        *,
        anchor_positions: torch.Tensor | None = None,
    ) -> DrafterOutput:
        """Run the backbone on one block per request.

        Args:
            anchor_tokens: ``[B]`` last committed tokens (not yet in the context).
            cache: context K/V of everything before the anchors.
            anchor_positions: ``[B]`` absolute anchor positions (default
                ``cache.lengths``, i.e. the context is the whole prefix; the
                cache's last row must be the token before the anchor either way).
        """
        cfg = self.config
        batch = anchor_tokens.shape[0]
        device = cache.lengths.device
        block_ids = torch.full(
            (batch, cfg.block_size), cfg.mask_token_id, dtype=torch.long, device=device
        )
        block_ids[:, 0] = anchor_tokens.to(device)
        if anchor_positions is None:
            anchor_positions = cache.lengths
        positions = anchor_positions.to(device)[:, None] + torch.arange(
            cfg.block_size, device=device
        )
        cos, sin = self.rotary_emb(positions)
        mask = cache.valid_mask()
        x = self.block_inputs(block_ids, cache.last_rows)
        with record_function("dspark.draft.layers"):
            for i, layer in enumerate(self.layers):
                x = layer(x, cos, sin, cache.keys[i], cache.values[i], mask)
            hidden = self.norm(x)
        with record_function("dspark.draft.lm_head"):
            logits = self.head_logits(hidden)
        return DrafterOutput(hidden=hidden, logits=logits)

    def forward(
        self,
        context_hidden: torch.Tensor,
        anchor_tokens: torch.Tensor,
        *,
        context_lengths: torch.Tensor | None = None,
    ) -> DrafterOutput:
        """Full recompute: block outputs from the whole context at once.

        Args:
            context_hidden: ``[B, T, n*H]`` committed-context features,
                positions ``0 .. T-1``, left-aligned.
            anchor_tokens: ``[B]`` token at position ``context_lengths[b]``.
            context_lengths: ``[B]`` valid rows per request (default ``T``).
        """
        cache = self.new_cache(context_hidden.shape[0], capacity=context_hidden.shape[1])
        self.extend_context(cache, context_hidden, num_new=context_lengths)
        return self.forward_block(anchor_tokens, cache)

    @torch.no_grad()
    def draft(
        self,
        anchor_tokens: torch.Tensor,
        cache: DrafterContextCache,
        sampling: SamplingParams,
        *,
        sts_temperatures: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        uniforms: torch.Tensor | None = None,
        logits_processor=None,
    ) -> DraftBlock:
        """Backbone pass plus sequential Markov drafting of one block (``logits_processor``: see :func:`draft_block`)."""
        with record_function("dspark.draft.backbone"):
            out = self.forward_block(anchor_tokens, cache)
        with record_function("dspark.draft.markov_and_confidence"):
            return draft_block(
                out.logits,
                out.hidden,
                anchor_tokens.to(out.logits.device),
                self.markov_head,
                self.confidence_head,
                sampling,
                sts_temperatures=sts_temperatures,
                generator=generator,
                uniforms=uniforms,
                logits_processor=logits_processor,
                draft_vocab=self.draft_vocab,
            )


def _check_shared_shape(name: str, module: nn.Module, config: DSparkConfig) -> None:
    weight = getattr(module, "weight", None)
    if weight is None:
        return
    expected = (config.vocab_size, config.hidden_size)
    if tuple(weight.shape) != expected:
        raise DSparkConfigError(
            f"target {name}.weight has shape {tuple(weight.shape)}, but the drafter config "
            f"expects (vocab_size, hidden_size) = {expected}: the drafter was trained for a "
            "different target model."
        )


# ---------------------------------------------------------------------- #
# Checkpoint loading
# ---------------------------------------------------------------------- #
#: safetensors dtypes of the draft-vocabulary maps (the only non-float tensors).
_VOCAB_MAP_DTYPES = {"d2t": "I64", "t2d": "BOOL"}


def deepspec_state_dict_shapes(config: DSparkConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a DeepSpec drafter checkpoint must hold, with its shape."""
    with torch.device("meta"):
        model = DeepSpecDrafter(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> file, from an index or by listing a single file's header."""
    from safetensors import safe_open

    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = read_weight_map(path)
        except CheckpointIndexError as exc:
            raise DrafterCheckpointError(f"malformed safetensors index: {exc}.") from exc
        files = {name: path / fname for name, fname in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise DrafterCheckpointError(
                    f"shard {shard.name} listed in {index.name} is missing from {path}; "
                    "re-download the checkpoint."
                )
        return files
    single = path / SINGLE_FILE
    candidates = [single] if single.is_file() else sorted(path.glob("*.safetensors"))
    if not candidates:
        raise DrafterCheckpointError(
            f"no model.safetensors, model.safetensors.index.json or *.safetensors in {path}."
        )
    files: dict[str, Path] = {}
    for shard in candidates:
        try:
            with safe_open(str(shard), framework="pt") as handle:
                names = list(handle.keys())
        except Exception as exc:  # safetensors raises its own error types
            raise DrafterCheckpointError(
                f"cannot read safetensors file {shard.name} in {path}: {exc}; the file is "
                "truncated or corrupt, re-download it."
            ) from exc
        files.update({name: shard for name in names})
    return files


def check_deepspec_checkpoint(path: str | Path, config: DSparkConfig) -> dict[str, Path]:
    """Check a drafter checkpoint against its config from the safetensors headers only.

    Every expected tensor present (none unexpected), with the config's shape
    and a floating-point dtype, and no shard shorter than its header says.
    Cheap enough to run during argument resolution, before any weight loads.

    Returns:
        Tensor name -> the shard holding it.

    Raises:
        DrafterCheckpointError: naming the tensor or shard and what is wrong.
    """
    path = Path(path)
    expected = deepspec_state_dict_shapes(config)
    files = _weight_files(path)
    missing = sorted(set(expected) - set(files))
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise DrafterCheckpointError(
            f"{path}: {len(missing)} tensor(s) missing from the checkpoint: {shown}. The "
            f"config (markov_head_type={config.markov_head_type!r}, enable_confidence_head="
            f"{config.enable_confidence_head}, anchor_context_input={config.anchor_context_input}, "
            f"{config.num_draft_layers} layers) does not "
            "match the weights, or the checkpoint is incomplete."
        )
    unexpected = sorted(set(files) - set(expected) - set(IGNORED_CHECKPOINT_KEYS))
    if unexpected:
        shown = ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else "")
        raise DrafterCheckpointError(
            f"{path}: {len(unexpected)} unexpected tensor(s) in the checkpoint: {shown}. "
            "It was saved for another drafter layout or config."
        )
    for shard in sorted(set(files.values())):
        try:
            header = read_safetensors_header(shard)
        except (SafetensorsHeaderError, OSError) as exc:
            raise DrafterCheckpointError(
                f"cannot read safetensors shard {shard.name} in {path}: {exc}; the file is "
                "truncated or corrupt, re-download it."
            ) from exc
        for name, info in header.items():
            if files.get(name) != shard:
                continue
            if name in ("embed_tokens.weight", "lm_head.weight"):
                want = (config.vocab_size, config.hidden_size)
            else:
                want = expected.get(name)
            if want is not None and info.shape != want:
                raise DrafterCheckpointError(
                    f"tensor {name!r} in {shard.name} has shape {info.shape}, expected "
                    f"{want} from config.json."
                )
            if name in _VOCAB_MAP_DTYPES:
                if info.dtype != _VOCAB_MAP_DTYPES[name]:
                    raise DrafterCheckpointError(
                        f"tensor {name!r} in {shard.name} has dtype {info.dtype}, expected "
                        f"{_VOCAB_MAP_DTYPES[name]} (EAGLE-3 draft vocabulary layout)."
                    )
            elif info.dtype not in FLOAT_DTYPES:
                raise DrafterCheckpointError(
                    f"tensor {name!r} in {shard.name} has dtype {info.dtype}; drafter weights "
                    "must be floating point (was it saved from a quantised model?)."
                )
        listed = {n for n, f in files.items() if f == shard}
        absent = sorted(listed - set(header))
        if absent:
            raise DrafterCheckpointError(
                f"{shard.name} does not contain {absent[0]!r} although the index lists it there."
            )
    return files


def load_deepspec_drafter(
    path: str | Path,
    *,
    embed_tokens: nn.Module,
    lm_head: nn.Module,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    num_target_layers: int | None = None,
) -> DeepSpecDrafter:
    """Load a DeepSpec drafter directory (``config.json`` + safetensors).

    Args:
        path: checkpoint directory (single ``model.safetensors``, or shards
            with ``model.safetensors.index.json``).
        embed_tokens: the target's input embedding (``[V, H]``), shared.
        lm_head: the target's LM head (``[V, H]``), shared.
        device: where to place the drafter (default: ``lm_head``'s device).
        dtype: parameter dtype (default: ``lm_head``'s weight dtype, else float32).
        num_target_layers: if given, ``target_layer_ids`` are checked against it.

    Raises:
        DSparkConfigError: bad config, or config that does not fit the target.
        DrafterCheckpointError: missing/unexpected/misshapen tensors, unreadable shards.
    """
    from safetensors import safe_open

    path = Path(path)
    raw = load_config_dict(path)
    config = DSparkConfig.from_deepspec(raw)
    target_weight = getattr(lm_head, "weight", None)
    if device is None:
        device = target_weight.device if target_weight is not None else torch.device("cpu")
    if dtype is None:
        dtype = target_weight.dtype if target_weight is not None else torch.float32
    embed_weight = getattr(embed_tokens, "weight", None)
    if embed_weight is not None:
        vocab, hidden = embed_weight.shape
        if num_target_layers is not None:
            config.validate_for_target(num_target_layers, hidden, vocab)
        else:
            _check_shared_shape("embed_tokens", embed_tokens, config)
    elif num_target_layers is not None:
        config.validate_target_layer_count(num_target_layers)

    expected = deepspec_state_dict_shapes(config)
    files = check_deepspec_checkpoint(path, config)

    by_file: dict[Path, list[str]] = {}
    for name, shard in files.items():
        by_file.setdefault(shard, []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    for shard, names in sorted(by_file.items()):
        try:
            with safe_open(str(shard), framework="pt") as handle:
                available = set(handle.keys())
                for name in names:
                    if name not in available:
                        raise DrafterCheckpointError(
                            f"{shard.name} does not contain {name!r} although the index "
                            "lists it there."
                        )
                    shape = tuple(handle.get_slice(name).get_shape())
                    if name in ("embed_tokens.weight", "lm_head.weight"):
                        want = (config.vocab_size, config.hidden_size)
                    else:
                        want = expected.get(name)
                    if want is not None and shape != want:
                        raise DrafterCheckpointError(
                            f"tensor {name!r} in {shard.name} has shape {shape}, expected "
                            f"{want} from config.json."
                        )
                    if name in expected:
                        tensors[name] = handle.get_tensor(name)
        except DrafterCheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise DrafterCheckpointError(
                f"cannot read safetensors shard {shard.name} in {path}: {exc}; the file is "
                "truncated or corrupt, re-download it."
            ) from exc

    with torch.device("meta"):
        model = DeepSpecDrafter(config)
    model.load_state_dict(tensors, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype)
    model.draft_vocab  # validates d2t/t2d (DrafterCheckpointError)
    model.attach_target_modules(embed_tokens, lm_head)
    return model.eval()
