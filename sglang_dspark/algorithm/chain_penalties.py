"""Penalties at every position of a verify chain, as plain decoding applies them at that position.

Row ``j`` of a verify block scores the token after ``anchor, d_1 .. d_j``:
plain decoding would have reached it with those drafts already in the
output, so its frequency / presence / repetition penalties count them, and
its min-new-tokens rule sees ``j`` more output tokens. The transforms and
their order are SGLang 0.5.23's penalizers (``sglang.srt.sampling.penaltylib``):
frequency (subtract ``f`` per occurrence, accumulated by repeated float32
addition as its ``scatter_add_`` does), min-new-tokens (stop tokens to
``-inf`` while the output is shorter than the minimum), presence (subtract
``p`` once a token occurred), repetition (divide positive / multiply
negative logits of occurred tokens by ``r``). Only output tokens count, as
in SGLang.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ChainPenalties", "PENALTY_ORDER", "apply_chain_penalties", "repeated_sum_table"]

#: SGLang's penalizers in its source order; the order they apply in matters
#: (repetition scales what frequency and presence subtracted).
PENALTY_ORDER = ("frequency", "min_new_tokens", "presence", "repetition")


def repeated_sum_table(value: float, count: int) -> torch.Tensor:
    """``[count + 1]`` float32: entry ``k`` is ``value`` added to 0.0 ``k`` times in float32."""
    steps = np.full(count + 1, np.float32(value), dtype=np.float32)
    steps[0] = 0.0
    return torch.from_numpy(np.add.accumulate(steps, dtype=np.float32))  # sequential, like repeated adds


@dataclass(frozen=True)
class ChainPenalties:
    """Per-request penalty parameters and what each request has output so far (``B`` rows).

    Attributes:
        output_counts: ``[B, V]`` int64, occurrences of each token among the committed output tokens.
        output_len: ``[B]`` int64, committed output tokens.
        frequency, presence, repetition: ``[B]`` float32 (0, 0, 1 = off).
        min_new_tokens: ``[B]`` int64 (0 = off).
        stop_tokens: ``[B, V]`` bool, the tokens min-new-tokens holds back.
    """

    output_counts: torch.Tensor
    output_len: torch.Tensor
    frequency: torch.Tensor
    presence: torch.Tensor
    repetition: torch.Tensor
    min_new_tokens: torch.Tensor
    stop_tokens: torch.Tensor

    def __post_init__(self) -> None:
        b, v = self.output_counts.shape
        for name in ("output_len", "frequency", "presence", "repetition", "min_new_tokens"):
            if getattr(self, name).shape != (b,):
                raise ValueError(f"ChainPenalties.{name} must have shape [{b}], got {tuple(getattr(self, name).shape)}")
        if self.stop_tokens.shape != (b, v) or self.stop_tokens.dtype != torch.bool:
            raise ValueError(f"ChainPenalties.stop_tokens must be a [{b}, {v}] bool tensor")


def apply_chain_penalties(
    logits: torch.Tensor,
    drafts: torch.Tensor,
    penalties: ChainPenalties,
    order: tuple[str, ...] = PENALTY_ORDER,
) -> None:
    """Apply the penalties in place to ``logits`` ``[B, W, V]`` of chains ``anchor, drafts[:, :W-1]``.

    ``drafts`` is ``[B, >= W-1]`` (negative ids for positions without a draft
    are counted as nothing). Row ``j`` counts the committed output plus
    ``drafts[:, :j]``. ``order`` names the transforms in the order to apply
    them (a permutation of :data:`PENALTY_ORDER`).
    """
    if sorted(order) != sorted(PENALTY_ORDER):
        raise ValueError(f"order must be a permutation of {PENALTY_ORDER}, got {order}")
    b, w, v = logits.shape
    device = logits.device
    chain = drafts[:, : w - 1].long()
    onehot = torch.zeros((b, w, v), dtype=torch.int64, device=device)
    if w > 1:
        valid = chain >= 0
        onehot[:, 1:].scatter_(2, chain.clamp_min(0)[..., None], valid[..., None].long())
    counts = penalties.output_counts.to(device)[:, None, :] + onehot.cumsum(dim=1)  # [B, W, V]

    occurred = counts > 0

    def frequency() -> None:
        freq = penalties.frequency.to(device)
        if bool((freq != 0).any()):
            max_count = int(counts.max())
            for row in torch.nonzero(freq != 0).view(-1).tolist():
                table = repeated_sum_table(float(freq[row]), max_count).to(device)
                logits[row].sub_(table[counts[row]])

    def min_new_tokens() -> None:
        min_new = penalties.min_new_tokens.to(device)
        if bool((min_new > 0).any()):
            out_len = penalties.output_len.to(device)[:, None] + torch.arange(w, device=device)[None, :]
            held = (out_len < min_new[:, None])[..., None] & penalties.stop_tokens.to(device)[:, None, :]
            logits.masked_fill_(held, float("-inf"))

    def presence() -> None:
        value = penalties.presence.to(device)
        if bool((value != 0).any()):
            logits.sub_(torch.where(occurred, value.view(b, 1, 1), 0.0))

    def repetition() -> None:
        rep = penalties.repetition.to(device)
        if bool((rep != 1).any()):
            scale = torch.where(occurred, rep.view(b, 1, 1), 1.0)
            logits.copy_(torch.where(logits < 0, logits * scale, logits / scale))

    transforms = {"frequency": frequency, "min_new_tokens": min_new_tokens, "presence": presence,
                  "repetition": repetition}
    for name in order:
        transforms[name]()
