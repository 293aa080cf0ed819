"""The token layout of one DSPARK verify forward: ragged or padded.

Request ``b`` verifies ``counts[b] = verify_lens[b] + 1`` tokens (its anchor
and the first ``verify_lens[b]`` drafts). A *ragged* layout sends exactly
those tokens to the target (``sum(counts)`` rows); a *padded* one sends
``width = max(counts)`` rows per request, for attention backends that only
know uniform TARGET_VERIFY chains. Either way the worker reads the results
back through :meth:`VerifyLayout.to_padded`, a ``[B, width, ...]`` view in
which rows past ``counts[b]`` are zero and never looked at by verification.

Ragged layouts ride on SGLang's own ``RaggedVerifyLayout`` (the structure its
CUDA backends read under ``SGLANG_RAGGED_VERIFY_MODE=compact``); the CPU path
reads it in ``torch_native_verify.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sglang.srt.speculative.ragged_verify import RaggedVerifyLayout

__all__ = ["VerifyLayout", "plan_verify_layout", "ragged_supported"]


_CUDA_RAGGED_BACKENDS = ("FlashAttentionBackend", "FlashInferAttnBackend", "TRTLLMHAAttnBackend")


def ragged_supported(attn_backend: object) -> bool:
    """Whether the target's attention backend takes a ragged verify batch.

    ``torch_native`` (the CPU path): always, through ``torch_native_verify``.
    CUDA backends that read :class:`RaggedVerifyLayout`: when the user enabled
    SGLang's ragged verify (``SGLANG_RAGGED_VERIFY_MODE=compact``). Padded
    otherwise.
    """
    name = type(attn_backend).__name__
    if name == "TorchNativeAttnBackend":
        return True
    compact = os.environ.get("SGLANG_RAGGED_VERIFY_MODE", "static") == "compact"
    return compact and name in _CUDA_RAGGED_BACKENDS


@dataclass(frozen=True, eq=False)
class VerifyLayout:
    """Where each verified token of the batch sits in the forward's rows.

    Attributes:
        counts: ``LongTensor[B]`` tokens verified per request (``>= 1``).
        width: ``max(counts)``; the padded view is ``[B, width]``.
        mask: ``BoolTensor[B, width]``, True where a row is sent to the target.
        ragged: rows are ``mask``-selected (True) or all ``B * width`` (False).
        counts_cpu: ``counts`` on the host.
    """

    counts: torch.Tensor
    width: int
    mask: torch.Tensor
    ragged: bool
    counts_cpu: list[int]

    @property
    def num_rows(self) -> int:
        """Rows of the target forward."""
        return sum(self.counts_cpu) if self.ragged else len(self.counts_cpu) * self.width

    def select(self, padded: torch.Tensor) -> torch.Tensor:
        """``[B, width, ...]`` -> the forward's rows ``[num_rows, ...]``."""
        return padded[self.mask] if self.ragged else padded.reshape(-1, *padded.shape[2:])

    def to_padded(self, rows: torch.Tensor) -> torch.Tensor:
        """The forward's rows ``[num_rows, ...]`` -> ``[B, width, ...]`` (zero-filled)."""
        batch = len(self.counts_cpu)
        if not self.ragged:
            return rows.view(batch, self.width, *rows.shape[1:])
        out = rows.new_zeros((batch, self.width, *rows.shape[1:]))
        out[self.mask] = rows
        return out

    def sglang_layout(self) -> RaggedVerifyLayout | None:
        """SGLang's description of a ragged batch (``None`` when padded)."""
        if not self.ragged:
            return None
        counts = self.counts.to(torch.int32)
        indptr = F.pad(torch.cumsum(counts, dim=0, dtype=torch.int32), (1, 0))
        total = sum(self.counts_cpu)
        return RaggedVerifyLayout(
            verify_lens=counts,
            graph_num_tokens=total,
            extend_start_loc=indptr[:-1],
            qo_indptr_device=indptr,
            verify_lens_cpu=list(self.counts_cpu),
            total_verify_tokens=total,
            max_q_len=self.width,
        )


def plan_verify_layout(verify_lens_cpu: list[int], device: torch.device, *, ragged: bool) -> VerifyLayout:
    """Layout for per-request verify lengths (drafts verified, excluding the anchor)."""
    counts_cpu = [int(v) + 1 for v in verify_lens_cpu]
    width = max(counts_cpu)
    counts = torch.tensor(counts_cpu, dtype=torch.long, device=device)
    mask = torch.arange(width, device=device)[None, :] < counts[:, None]
    # A ragged batch whose rows are all full is the padded one; skip the gathers.
    ragged = ragged and min(counts_cpu) < width
    return VerifyLayout(counts=counts, width=width, mask=mask, ragged=ragged, counts_cpu=counts_cpu)
