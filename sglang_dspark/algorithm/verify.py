"""Lossless verification of a drafted block (speculative rejection sampling).

For each request the first ``L`` drafted tokens are checked left to right:
draft ``x_k`` is accepted with probability ``min(1, p_t(x_k) / p_d(x_k))``. At
the first rejection a correction token is sampled from the residual
``normalise(max(0, p_t - p_d))``; if all ``L`` drafts are accepted a bonus
token is sampled from ``p_t`` at position ``L``. The committed tokens are then
distributed exactly as if they had been sampled from the target one by one.
Greedy verification accepts while the draft equals the target's argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import sample_from_probs

__all__ = ["VerifyResult", "verify_block"]


@dataclass(frozen=True, eq=False)
class VerifyResult:
    """Outcome of verifying one block per request.

    Attributes:
        num_accepted: ``LongTensor[B]``, drafted tokens accepted per request.
        tokens: ``LongTensor[B, K + 1]``; ``tokens[b, :num_accepted[b] + 1]``
            are the committed tokens (the accepted drafts, then the correction
            or bonus token); the remaining entries are ``-1``.
    """

    num_accepted: torch.Tensor
    tokens: torch.Tensor

    @property
    def num_committed(self) -> torch.Tensor:
        """``LongTensor[B]``: tokens committed per request (``num_accepted + 1``)."""
        return self.num_accepted + 1


def verify_block(
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    verify_lens: torch.Tensor | None = None,
    uniforms: torch.Tensor | None = None,
) -> VerifyResult:
    """Verify drafted blocks against the target distribution.

    Args:
        draft_tokens: ``LongTensor[B, K]`` drafted tokens.
        draft_probs: ``[B, K, V]`` draft distributions the tokens were sampled
            from. Unused (may be ``None``) when ``greedy``.
        target_probs: ``[B, K + 1, V]`` target distributions at each draft
            position and at the bonus position, already temperature / top-p /
            top-k processed. With ``greedy`` only the argmax matters, so raw
            logits may be passed instead.
        greedy: accept while the draft equals the target argmax; the
            correction / bonus token is the argmax too.
        generator: source of all randomness (acceptance tests and sampling),
            for reproducible results.
        verify_lens: optional ``LongTensor[B]`` in ``0..K``: only the first
            ``verify_lens[b]`` drafts of request ``b`` are verified. ``0`` is
            plain decoding (one token from ``target_probs[b, 0]``). Values
            are clamped to ``0..K`` (no host sync to check them). Defaults
            to ``K`` for every request.
        uniforms: optional ``[B, K + 1]`` noise in ``(0, 1)`` used instead of
            ``generator``: columns ``0..K-1`` for the acceptance tests, column
            ``K`` for the correction / bonus token (inverse CDF). Fixed noise
            gives fixed tokens (per-request seeds, see :mod:`.seeded_noise`).

    Returns:
        A :class:`VerifyResult`.
    """
    if draft_tokens.dim() != 2:
        raise ValueError(f"draft_tokens must be [B, K], got {tuple(draft_tokens.shape)}")
    batch, k = draft_tokens.shape
    if target_probs.dim() != 3 or target_probs.shape[:2] != (batch, k + 1):
        raise ValueError(
            f"target_probs must be [B, K + 1, V] = [{batch}, {k + 1}, V], "
            f"got {tuple(target_probs.shape)}"
        )
    if not greedy:
        if draft_probs is None:
            raise ValueError("draft_probs is required unless greedy=True")
        if draft_probs.shape != (batch, k, target_probs.shape[-1]):
            raise ValueError(
                f"draft_probs must be [B, K, V] = [{batch}, {k}, {target_probs.shape[-1]}], "
                f"got {tuple(draft_probs.shape)}"
            )

    device = draft_tokens.device
    draft_tokens = draft_tokens.long()
    positions = torch.arange(k + 1, device=device)
    if verify_lens is None:
        verify_lens = torch.full((batch,), k, dtype=torch.long, device=device)
    else:
        if verify_lens.shape != (batch,):
            raise ValueError(f"verify_lens must be [B] = [{batch}], got {tuple(verify_lens.shape)}")
        verify_lens = verify_lens.to(device=device, dtype=torch.long).clamp(0, k)
    in_prefix = positions[:k] < verify_lens[:, None]  # [B, K]

    if greedy:
        target_argmax = target_probs.argmax(dim=-1)  # [B, K + 1]
        accept = (draft_tokens == target_argmax[:, :k]) & in_prefix
    else:
        p_t = _as_float(target_probs[:, :k].gather(-1, draft_tokens[..., None]).squeeze(-1))
        p_d = _as_float(draft_probs.gather(-1, draft_tokens[..., None]).squeeze(-1))
        if uniforms is None:
            u = torch.rand((batch, k), generator=generator, device=device, dtype=p_t.dtype)
        else:
            if uniforms.shape != (batch, k + 1):
                raise ValueError(
                    f"uniforms must be [B, K + 1] = [{batch}, {k + 1}], got {tuple(uniforms.shape)}"
                )
            u = uniforms[:, :k].to(p_t.dtype)
        # u < p_t / p_d without the division: a draft with p_d == 0 (impossible
        # if it was really sampled from p_d) is accepted iff the target gives
        # it mass, and a token with p_t == 0 is never accepted.
        accept = (u * p_d < p_t) & in_prefix

    # Accepted prefix length = number of leading ones.
    num_accepted = accept.long().cumprod(dim=1).sum(dim=1)  # [B]
    committed = positions < num_accepted[:, None]  # [B, K + 1], accepted drafts only
    rows = torch.arange(batch, device=device)

    if greedy:
        final_token = target_argmax[rows, num_accepted]
    else:
        dist = _as_float(target_probs[rows, num_accepted])  # [B, V]
        if k > 0:
            draft_row = _as_float(draft_probs[rows, num_accepted.clamp(max=k - 1)])
            residual = (dist - draft_row).clamp_(min=0)
            # A rejection implies p_d > p_t somewhere, so the residual has mass
            # unless the inputs are not normalised alike; fall back to p_t then.
            use_residual = (num_accepted < verify_lens) & (residual.sum(dim=-1) > 0)
            dist = torch.where(use_residual[:, None], residual, dist)
        final_token = sample_from_probs(
            dist, generator=generator, uniforms=None if uniforms is None else uniforms[:, k]
        )

    padded = torch.cat([draft_tokens, draft_tokens.new_full((batch, 1), -1)], dim=1)
    tokens = padded.masked_fill_(~committed, -1)
    tokens[rows, num_accepted] = final_token
    return VerifyResult(num_accepted=num_accepted, tokens=tokens)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision probabilities; keep float32 / float64 as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
