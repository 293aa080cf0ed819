"""Markov heads: the cheap sequential part of DSpark's semi-autoregressive drafting.

The drafter backbone gives every block position k its logits ``U_k`` in one
parallel pass; a Markov head then adds a term that depends on the previously
drafted token ``x_{k-1}`` (``x_0`` is the anchor), so positions are sampled
left to right at the cost of a rank-r product per step.

Variants (DeepSpec ``deepspec/modeling/dspark/markov_head.py``; parameter
names match its state-dict keys under ``markov_head.``):

* ``vanilla`` (:class:`VanillaMarkovHead`): ``bias_k = W2 · W1[x_{k-1}]`` with
  ``markov_w1`` an ``Embedding(V, r)`` and ``markov_w2`` a bias-free
  ``Linear(r, V)`` (weight stored ``[V, r]``).
* ``gated`` (:class:`GatedMarkovHead`): ``g = sigmoid(gate_proj([h_k ; e]))``,
  ``bias_k = W2 · (g ⊙ e)`` with ``e = W1[x_{k-1}]``; ``gate_proj`` is
  ``Linear(H + r, r)`` with bias.
* ``rnn`` (:class:`RNNMarkovHead`): a GRU-like state ``s`` (zero at the block
  start): ``[a; c; o] = joint_proj([s ; e ; h_k])``,
  ``s' = sigmoid(a) ⊙ s + (1 - sigmoid(a)) ⊙ tanh(c)``,
  ``bias_k = W2 · tanh(o)``; ``joint_proj`` is ``Linear(2r + H, 3r)`` with bias.

``h_k`` is the drafter's final-norm output at position k. All variants
expose ``e = W1[x_{k-1}]`` (ungated), which the confidence head consumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sglang_dspark.algorithm.config import DSparkConfig, DSparkConfigError

__all__ = [
    "GatedMarkovHead",
    "MarkovHead",
    "MarkovStep",
    "RNNMarkovHead",
    "VanillaMarkovHead",
    "build_markov_head",
]


@dataclass(frozen=True)
class MarkovStep:
    """One Markov-head step for a batch.

    Attributes:
        bias: ``[B, Vd]`` additive logits term for the current position (output vocabulary).
        prev_features: ``[B, r]`` ``W1[x_{k-1}]``, the confidence head's extra input.
        state: ``[B, r]`` recurrent state after this step (``rnn`` only), else ``None``.
    """

    bias: torch.Tensor
    prev_features: torch.Tensor
    state: torch.Tensor | None = None


class MarkovHead(nn.Module):
    """Base class: the low-rank bigram factors shared by every variant."""

    head_type: str = ""
    needs_hidden: bool = False

    def __init__(self, *, vocab_size: int, markov_rank: int, out_vocab_size: int | None = None) -> None:
        super().__init__()
        if markov_rank < 1:
            raise DSparkConfigError(f"markov_rank must be >= 1, got {markov_rank}.")
        self.vocab_size = int(vocab_size)
        # The previous token is any target token; the bias covers the draft vocabulary.
        self.out_vocab_size = int(out_vocab_size or vocab_size)
        self.markov_rank = int(markov_rank)
        self.markov_w1 = nn.Embedding(self.vocab_size, self.markov_rank)
        self.markov_w2 = nn.Linear(self.markov_rank, self.out_vocab_size, bias=False)

    def prev_features(self, prev_tokens: torch.Tensor) -> torch.Tensor:
        """``W1[x_{k-1}]``: ``[...]`` token ids -> ``[..., r]``."""
        return self.markov_w1(prev_tokens.long())

    def init_state(
        self, batch_size: int, *, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor | None:
        """Recurrent state at the start of a block (``None`` for memoryless heads)."""
        del batch_size, device, dtype
        return None

    def step(
        self,
        prev_tokens: torch.Tensor,
        hidden: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
    ) -> MarkovStep:
        """Additive logits term for one position.

        Args:
            prev_tokens: ``[B]`` previously drafted token (the anchor at k = 0).
            hidden: ``[B, H]`` drafter output at this position (gated/rnn only).
            state: recurrent state from the previous step (rnn only).
        """
        raise NotImplementedError

    def teacher_forced_bias(
        self, prev_tokens: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Bias for a whole block given known previous tokens (training/scoring).

        Args:
            prev_tokens: ``[..., K]`` token before each position (anchor first).
            hidden: ``[..., K, H]`` drafter outputs (gated/rnn only).

        Returns:
            ``[..., K, Vd]`` additive logits over the output (draft) vocabulary.
        """
        lead = prev_tokens.shape[:-1]
        num_pos = prev_tokens.shape[-1]
        flat_prev = prev_tokens.reshape(-1, num_pos)
        flat_hidden = None if hidden is None else hidden.reshape(-1, num_pos, hidden.shape[-1])
        state = self.init_state(
            flat_prev.shape[0],
            device=flat_prev.device,
            dtype=self.markov_w1.weight.dtype if flat_hidden is None else flat_hidden.dtype,
        )
        biases = []
        for k in range(num_pos):
            out = self.step(
                flat_prev[:, k], None if flat_hidden is None else flat_hidden[:, k], state
            )
            state = out.state
            biases.append(out.bias)
        return torch.stack(biases, dim=1).reshape(*lead, num_pos, self.out_vocab_size)

    def _require_hidden(self, hidden: torch.Tensor | None) -> torch.Tensor:
        if hidden is None:
            raise ValueError(f"the {self.head_type!r} Markov head needs the drafter hidden state.")
        return hidden


class VanillaMarkovHead(MarkovHead):
    """Low-rank bigram: ``bias_k = W2 · W1[x_{k-1}]``."""

    head_type = "vanilla"

    def step(
        self,
        prev_tokens: torch.Tensor,
        hidden: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
    ) -> MarkovStep:
        del hidden, state
        features = self.prev_features(prev_tokens)
        return MarkovStep(bias=self.markov_w2(features), prev_features=features)


class GatedMarkovHead(MarkovHead):
    """Gated bigram: ``bias_k = W2 · (sigmoid(gate_proj([h_k ; e])) ⊙ e)``."""

    head_type = "gated"
    needs_hidden = True

    def __init__(
        self, *, vocab_size: int, markov_rank: int, hidden_size: int, out_vocab_size: int | None = None
    ) -> None:
        super().__init__(vocab_size=vocab_size, markov_rank=markov_rank, out_vocab_size=out_vocab_size)
        self.hidden_size = int(hidden_size)
        self.gate_proj = nn.Linear(self.hidden_size + self.markov_rank, self.markov_rank)

    def step(
        self,
        prev_tokens: torch.Tensor,
        hidden: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
    ) -> MarkovStep:
        del state
        hidden = self._require_hidden(hidden)
        features = self.prev_features(prev_tokens)
        gate_in = torch.cat([hidden.to(features.dtype), features], dim=-1)
        gate = torch.sigmoid(self.gate_proj(gate_in))
        return MarkovStep(bias=self.markov_w2(gate * features), prev_features=features)


class RNNMarkovHead(MarkovHead):
    """GRU-like head whose state carries the whole drafted prefix of the block."""

    head_type = "rnn"
    needs_hidden = True

    def __init__(
        self, *, vocab_size: int, markov_rank: int, hidden_size: int, out_vocab_size: int | None = None
    ) -> None:
        super().__init__(vocab_size=vocab_size, markov_rank=markov_rank, out_vocab_size=out_vocab_size)
        self.hidden_size = int(hidden_size)
        self.joint_proj = nn.Linear(2 * self.markov_rank + self.hidden_size, 3 * self.markov_rank)

    def init_state(
        self, batch_size: int, *, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return torch.zeros(batch_size, self.markov_rank, device=device, dtype=dtype)

    def step(
        self,
        prev_tokens: torch.Tensor,
        hidden: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
    ) -> MarkovStep:
        hidden = self._require_hidden(hidden)
        features = self.prev_features(prev_tokens)
        if state is None:
            state = self.init_state(features.shape[0], device=features.device, dtype=features.dtype)
        dtype = features.dtype
        joint = self.joint_proj(torch.cat([state.to(dtype), features, hidden.to(dtype)], dim=-1))
        gate_raw, cand_raw, out_raw = joint.chunk(3, dim=-1)
        gate = torch.sigmoid(gate_raw)
        new_state = gate * state.to(dtype) + (1.0 - gate) * torch.tanh(cand_raw)
        bias = self.markov_w2(torch.tanh(out_raw))
        return MarkovStep(bias=bias, prev_features=features, state=new_state)


def build_markov_head(config: DSparkConfig) -> MarkovHead:
    """The Markov head named by ``config.markov_head_type``."""
    sizes = dict(
        vocab_size=config.vocab_size,
        markov_rank=config.markov_rank,
        out_vocab_size=config.output_vocab_size,
    )
    if config.markov_head_type == "vanilla":
        return VanillaMarkovHead(**sizes)
    if config.markov_head_type == "gated":
        return GatedMarkovHead(**sizes, hidden_size=config.hidden_size)
    if config.markov_head_type == "rnn":
        return RNNMarkovHead(**sizes, hidden_size=config.hidden_size)
    raise DSparkConfigError(f"unknown markov_head_type {config.markov_head_type!r}.")
