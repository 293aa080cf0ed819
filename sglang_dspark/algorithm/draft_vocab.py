"""A reduced draft vocabulary (EAGLE-3's ``d2t``/``t2d``): the drafter scores only frequent tokens.

A drafter's output layer (the target's LM head rows, the Markov head's
``W2``) costs vocabulary-sized work per drafted position; restricted to the
``Vd`` tokens that cover almost all of the target's output it costs ``Vd/V``
of that. Drafting stays lossless: a draft distribution that puts no mass on
the other tokens is still a valid proposal for rejection sampling, and
greedy verification compares tokens. Only acceptance can suffer, by at most
the target's output mass outside the draft vocabulary.

Checkpoint layout, as EAGLE-3's (``config.json`` ``draft_vocab_size``):

* ``d2t`` int64 ``[Vd]``: offsets, target id of draft row ``i`` is ``i + d2t[i]``;
* ``t2d`` bool ``[V]``: whether a target token is in the draft vocabulary.

Draft rows are in increasing target-id order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DraftVocab", "DraftVocabError", "draft_vocab_from_counts"]


class DraftVocabError(ValueError):
    """``d2t``/``t2d`` tensors that do not describe a draft vocabulary."""


@dataclass(frozen=True, eq=False)
class DraftVocab:
    """The draft vocabulary: ``ids[i]`` is the target token of draft row ``i``.

    Attributes:
        ids: ``[Vd]`` int64 target ids, strictly increasing.
        full_size: the target vocabulary size ``V``.
    """

    ids: torch.Tensor
    full_size: int

    def __post_init__(self) -> None:
        ids = self.ids
        if ids.ndim != 1 or ids.numel() == 0 or ids.dtype != torch.int64:
            raise DraftVocabError(f"draft vocabulary ids must be a non-empty int64 vector, got {tuple(ids.shape)} {ids.dtype}.")
        if int(ids.min()) < 0 or int(ids.max()) >= self.full_size:
            raise DraftVocabError(f"draft vocabulary ids must lie in [0, {self.full_size}).")
        if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
            raise DraftVocabError("draft vocabulary ids must be strictly increasing.")

    @property
    def size(self) -> int:
        """``Vd``."""
        return int(self.ids.numel())

    # ---------------------------------------------------------------- checkpoint
    @classmethod
    def from_d2t(cls, d2t: torch.Tensor, t2d: torch.Tensor | None, full_size: int) -> "DraftVocab":
        """Read EAGLE-3 tensors (``t2d`` checked against ``d2t`` when given)."""
        if d2t.ndim != 1:
            raise DraftVocabError(f"d2t must be a vector, got shape {tuple(d2t.shape)}.")
        ids = torch.arange(d2t.numel(), dtype=torch.int64, device=d2t.device) + d2t.long()
        vocab = cls(ids, int(full_size))
        if t2d is not None:
            if tuple(t2d.shape) != (full_size,):
                raise DraftVocabError(f"t2d has shape {tuple(t2d.shape)}, expected ({full_size},).")
            if not torch.equal(t2d.bool().cpu(), vocab.membership().cpu()):
                raise DraftVocabError("t2d does not mark exactly the tokens d2t maps to.")
        return vocab

    def d2t(self) -> torch.Tensor:
        """EAGLE-3 offsets ``ids - arange(Vd)``."""
        return self.ids - torch.arange(self.size, dtype=torch.int64, device=self.ids.device)

    def membership(self) -> torch.Tensor:
        """``t2d``: ``[V]`` bool."""
        mask = torch.zeros(self.full_size, dtype=torch.bool, device=self.ids.device)
        mask[self.ids] = True
        return mask

    # ---------------------------------------------------------------- mapping
    def draft_index(self, target_ids: torch.Tensor) -> torch.Tensor:
        """Draft row of each target id, ``-1`` where the token is not in the draft vocabulary."""
        lookup = torch.full((self.full_size,), -1, dtype=torch.int64, device=self.ids.device)
        lookup[self.ids] = torch.arange(self.size, dtype=torch.int64, device=self.ids.device)
        return lookup[target_ids.long().to(self.ids.device)].to(target_ids.device)

    def expand_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[..., Vd]`` draft logits -> ``[..., V]`` with ``-inf`` outside the draft vocabulary."""
        full = logits.new_full((*logits.shape[:-1], self.full_size), float("-inf"))
        full[..., self.ids.to(logits.device)] = logits
        return full

    def coverage(self, token_counts: torch.Tensor) -> float:
        """Share of the counted tokens (``[V]`` counts) that the draft vocabulary holds."""
        total = float(token_counts.sum())
        return float(token_counts[self.ids.to(token_counts.device)].sum()) / total if total else 0.0


def draft_vocab_from_counts(
    token_counts: torch.Tensor, size: int, *, always: torch.Tensor | None = None
) -> DraftVocab:
    """The ``size`` most frequent tokens (ties by id), plus ``always`` (e.g. EOS ids).

    Args:
        token_counts: ``[V]`` occurrences of each target token in the target's answers.
        size: ``Vd``.
        always: ids that must be in the vocabulary whatever their count.
    """
    full = int(token_counts.numel())
    if not 1 <= size <= full:
        raise DraftVocabError(f"draft vocabulary size must be in [1, {full}], got {size}.")
    counts = token_counts.double().clone()
    if always is not None and always.numel():
        counts[always.long()] = float("inf")
    # Stable descending order: equal counts keep increasing ids.
    order = torch.sort(-counts, stable=True).indices[:size]
    return DraftVocab(torch.sort(order).values.to(torch.int64), full)
