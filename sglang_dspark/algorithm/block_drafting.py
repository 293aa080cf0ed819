"""Sequential drafting of one block in the cheap heads.

The drafter backbone produced, in one parallel pass, logits ``U_k`` and final
hidden states ``h_k`` for the K positions of a block. :func:`draft_block`
walks the positions left to right (DeepSpec
``VanillaMarkov.sample_block_tokens`` / ``eval/dspark/draft_ops.py``):

    logits_k = U_k + markov(x_{k-1}, h_k)        x_0 = anchor
    p_d[k]   = logits_to_probs(logits_k, sampling params)
    x_k      ~ p_d[k]                             (argmax when greedy)
    c_k      = sigmoid(conf([h_k ; W1[x_{k-1}]]) / T_k)

With the anchor at position ``p``, ``tokens[:, k]`` is the draft for position
``p + k + 1`` (the anchor's own output drafts the first token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sglang_dspark.algorithm.confidence_head import (
    ConfidenceHead,
    apply_sts,
    survival_probabilities,
)
from sglang_dspark.algorithm.draft_vocab import DraftVocab
from sglang_dspark.algorithm.markov_head import MarkovHead
from sglang_dspark.algorithm.sampling import SamplingParams, logits_to_probs, sample_from_probs

__all__ = ["DraftBlock", "draft_block"]


@dataclass(frozen=True)
class DraftBlock:
    """A drafted block for a batch of requests.

    Attributes:
        tokens: ``[B, K]`` int64 drafted tokens ``x_1 .. x_K``.
        probs: ``[B, K, V]`` float32 draft distributions ``p_d`` the tokens were
            sampled from (processed by the request's sampling params; one-hot
            for greedy rows), as rejection sampling needs them.
        confidence: ``[B, K]`` float32 ``c_k`` (STS-calibrated when
            temperatures were given), or ``None`` without a confidence head.
        confidence_logits: ``[B, K]`` float32 raw (uncalibrated) logits, or ``None``.
    """

    tokens: torch.Tensor
    probs: torch.Tensor
    confidence: torch.Tensor | None
    confidence_logits: torch.Tensor | None

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, K], got {tuple(self.tokens.shape)}.")
        batch, num = self.tokens.shape
        if self.probs.ndim != 3 or self.probs.shape[:2] != (batch, num):
            raise ValueError(
                f"probs must be [{batch}, {num}, V], got {tuple(self.probs.shape)}."
            )
        if (self.confidence is None) != (self.confidence_logits is None):
            raise ValueError("confidence and confidence_logits must both be set or both None.")
        for name in ("confidence", "confidence_logits"):
            value = getattr(self, name)
            if value is not None and value.shape != (batch, num):
                raise ValueError(f"{name} must be [{batch}, {num}], got {tuple(value.shape)}.")

    @property
    def batch_size(self) -> int:
        """Number of requests."""
        return self.tokens.shape[0]

    @property
    def num_tokens(self) -> int:
        """Draft tokens per request (K)."""
        return self.tokens.shape[1]

    def survival(self) -> torch.Tensor:
        """``[B, K]`` prefix survival ``a_j = prod_{k<=j} c_k`` (needs confidences)."""
        if self.confidence is None:
            raise ValueError("this block has no confidences (drafter without confidence head).")
        return survival_probabilities(self.confidence)


def draft_block(
    backbone_logits: torch.Tensor,
    backbone_hidden: torch.Tensor,
    anchor_tokens: torch.Tensor,
    markov_head: MarkovHead,
    confidence_head: ConfidenceHead | None,
    sampling: SamplingParams,
    *,
    sts_temperatures: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
    logits_processor: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    draft_vocab: DraftVocab | None = None,
) -> DraftBlock:
    """Draft a block sequentially through the Markov head.

    Args:
        backbone_logits: ``[B, K, Vd]`` ``U_k`` (LM head of the final-norm output)
            over the draft vocabulary (``V`` without ``draft_vocab``).
        backbone_hidden: ``[B, K, H]`` final-norm drafter outputs ``h_k``.
        anchor_tokens: ``[B]`` last committed token (``x_0``).
        markov_head: the drafter's Markov head.
        confidence_head: the drafter's confidence head, or ``None``.
        sampling: per-request parameters, also used later for the target.
        sts_temperatures: optional ``[K]`` STS temperatures for ``confidence``.
        generator: RNG for sampled rows.
        uniforms: optional ``[B, K]`` noise in ``(0, 1)`` that fixes the sampled
            tokens instead of ``generator`` (see :mod:`.seeded_noise`).
        logits_processor: optional ``f(k, logits_k, prev)`` that edits position
            ``k``'s ``[B, V]`` float32 logits in place before they become the
            draft distribution (``prev``: the token drafted at ``k - 1``, the
            anchor at 0), e.g. a grammar mask, so that drafts obey a request's
            constraints. The returned ``probs`` are what the drafts were sampled from.
        draft_vocab: the drafter's reduced vocabulary, if it has one: position
            logits are spread over the whole vocabulary (``-inf`` elsewhere)
            before the processor and sampling, so tokens and ``probs`` are in
            target ids.
    """
    if backbone_logits.ndim != 3 or backbone_hidden.ndim != 3:
        raise ValueError(
            "backbone_logits must be [B, K, V] and backbone_hidden [B, K, H], got "
            f"{tuple(backbone_logits.shape)} and {tuple(backbone_hidden.shape)}."
        )
    batch, num_pos, _ = backbone_logits.shape
    if backbone_hidden.shape[:2] != (batch, num_pos):
        raise ValueError(
            f"backbone_hidden {tuple(backbone_hidden.shape)} does not match "
            f"backbone_logits {tuple(backbone_logits.shape)} in [B, K]."
        )
    if anchor_tokens.shape != (batch,):
        raise ValueError(f"anchor_tokens must be [{batch}], got {tuple(anchor_tokens.shape)}.")
    if sampling.batch_size != batch:
        raise ValueError(f"sampling params cover {sampling.batch_size} rows, batch is {batch}.")

    state = markov_head.init_state(
        batch, device=backbone_hidden.device, dtype=backbone_hidden.dtype
    )
    prev = anchor_tokens.long()
    all_greedy = bool(sampling.is_greedy.all())
    # All greedy and unconstrained: argmax over the draft rows, one-hot probs built once. The
    # draft vocabulary's ids increase with the target's, so ties resolve as over spread logits.
    argmax_only = all_greedy and logits_processor is None
    tokens, probs, features = [], [], []
    for k in range(num_pos):
        step = markov_head.step(prev, backbone_hidden[:, k], state)
        state = step.state
        logits_k = backbone_logits[:, k].float() + step.bias.float()
        features.append(step.prev_features)
        if argmax_only:
            index = logits_k.argmax(dim=-1)
            prev = index if draft_vocab is None else draft_vocab.ids[index]
            tokens.append(prev)
            continue
        if draft_vocab is not None:
            logits_k = draft_vocab.expand_logits(logits_k)
        if logits_processor is not None:
            unmasked = logits_k.clone() if draft_vocab is not None else None
            logits_processor(k, logits_k, prev)
            if unmasked is not None:
                # A constraint may allow only tokens outside the draft vocabulary. Such a row
                # drafts from its unconstrained logits instead: any proposal keeps verification
                # lossless, and the target rejects what the constraint forbids.
                dead = ~torch.isfinite(logits_k).any(dim=-1)
                if bool(dead.any()):
                    logits_k[dead] = unmasked[dead]
        probs_k = logits_to_probs(logits_k, sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p)
        if all_greedy:
            prev = probs_k.argmax(dim=-1)  # one-hot rows: no sampling needed
        else:
            prev = sample_from_probs(
                probs_k, generator=generator, uniforms=None if uniforms is None else uniforms[:, k]
            )
        tokens.append(prev)
        probs.append(probs_k)

    tokens_t = torch.stack(tokens, dim=1)
    if argmax_only:
        full_size = backbone_logits.shape[-1] if draft_vocab is None else draft_vocab.full_size
        probs_t = torch.zeros((batch, num_pos, full_size), device=tokens_t.device, dtype=torch.float32)
        probs_t.scatter_(-1, tokens_t[..., None], 1.0)
    else:
        probs_t = torch.stack(probs, dim=1)
    confidence = confidence_logits = None
    if confidence_head is not None:
        confidence_logits = confidence_head(backbone_hidden, torch.stack(features, dim=1))
        confidence = apply_sts(confidence_logits, sts_temperatures)
    return DraftBlock(tokens=tokens_t, probs=probs_t, confidence=confidence, confidence_logits=confidence_logits)
