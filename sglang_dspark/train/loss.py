"""The DSpark training loss (DeepSpec ``deepspec/modeling/dspark/loss.py``), pure torch.

For draft logits ``z`` (backbone + teacher-forced Markov term), target logits
``y`` at the same slots, labels ``x`` and the contiguous-prefix ``eval_mask``
``m`` of shape ``[..., K]``:

* position weights ``w_k = m_k * exp(-k / gamma)`` (``k = 0..K-1``; no decay
  when ``gamma`` is ``None`` or ``<= 0``) -- DeepSpec ``_build_loss_weight_mask``;
* ``p_d = softmax(z)``, ``p_t = softmax(y)`` in float32;
* ``CE = sum w * cross_entropy(z, x) / (sum w + 1e-6)``;
* ``L1 = sum w * ||p_d - p_t||_1 / (sum w + 1e-6)`` (twice the total variation);
* acceptance rate ``a = clamp(1 - 0.5 * ||p_d - p_t||_1, 0, 1)``: the
  probability that rejection sampling accepts the slot;
* ``CONF = sum w * BCEWithLogits(c, a.detach()) / (sum w + 1e-6)`` where
  ``c`` are the confidence-head logits (soft targets, same weights);
* ``loss = ce_alpha * CE + l1_alpha * L1 + confidence_alpha * CONF``
  (DeepSpec defaults 0.1, 0.9, 1.0; its Qwen3 recipes use ``gamma = 4``).

Cross-entropy phase (``y`` not given, :class:`~sglang_dspark.train.recipe.LossRecipe`
``ce_only_ratio``): ``loss = ce_alpha * CE + confidence_alpha * CONF`` with the
greedy acceptance ``a = [argmax z == x]``. The L1 term's gradient on the right
token is about ``-2 p_d``, which vanishes while a fresh drafter is still wrong,
so a fresh drafter learns from CE; no vocabulary-sized target softmax is needed.

With a draft vocabulary (``Vd`` rows, :mod:`sglang_dspark.algorithm.draft_vocab`)
labels are mapped to draft rows (CE skips labels outside it, which count as
rejected) and ``||p_d - p_t||_1`` adds the target mass outside it.

The denominators are this batch's (DeepSpec's single-rank normalisation; under
gradient accumulation each micro-batch is normalised by its own weights and
the step averages them, as DeepSpec does with ``loss / grad_accum_steps``).

Metrics (no gradient): per-position mean acceptance rate ``accept_rate[k]``
over supervised slots and ``tau`` = mean over kept blocks of
``1 + sum_k prod_{j<=k} a_j m_j`` (DeepSpec ``tau_probabilistic``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sglang_dspark.algorithm.draft_vocab import DraftVocab

__all__ = ["DSparkLoss", "dspark_loss", "position_weights"]


@dataclass(frozen=True)
class DSparkLoss:
    """Loss and its parts.

    Attributes:
        loss: scalar to back-propagate.
        ce, l1, confidence: the (weighted-mean) terms, detached.
        accept_rate: ``[K]`` mean acceptance rate per position (supervised slots).
        accept_count: ``[K]`` supervised slots per position.
        tau: expected committed tokens per block under teacher forcing.
        num_blocks: kept blocks with at least one supervised slot.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    l1: torch.Tensor
    confidence: torch.Tensor
    accept_rate: torch.Tensor
    accept_count: torch.Tensor
    tau: torch.Tensor
    num_blocks: torch.Tensor


def position_weights(eval_mask: torch.Tensor, decay_gamma: float | None) -> torch.Tensor:
    """``eval_mask * exp(-k / gamma)`` as float32 (DeepSpec ``_build_loss_weight_mask``)."""
    weights = eval_mask.to(torch.float32)
    if decay_gamma is not None and decay_gamma > 0:
        k = torch.arange(eval_mask.shape[-1], device=eval_mask.device, dtype=torch.float32)
        weights = weights * torch.exp(-k / float(decay_gamma))
    return weights


def dspark_loss(
    draft_logits: torch.Tensor,
    target_logits: torch.Tensor | None,
    target_ids: torch.Tensor,
    eval_mask: torch.Tensor,
    confidence_logits: torch.Tensor | None = None,
    *,
    ce_alpha: float = 0.1,
    l1_alpha: float = 0.9,
    confidence_alpha: float = 1.0,
    decay_gamma: float | None = 4.0,
    keep: torch.Tensor | None = None,
    draft_vocab: DraftVocab | None = None,
) -> DSparkLoss:
    """DeepSpec's DSpark loss, or its greedy cross-entropy phase without target logits.

    Args:
        draft_logits: ``[..., K, Vd]`` drafter logits (Markov term included)
            over the draft vocabulary (the whole vocabulary without one).
        target_logits: ``[..., K, V]`` target logits for the same slots, or
            ``None`` for the cross-entropy phase: no L1 term, and acceptance
            (metrics, the confidence target) is greedy, ``argmax == label``.
        target_ids: ``[..., K]`` label tokens (target ids).
        eval_mask: ``[..., K]`` bool contiguous-prefix mask.
        confidence_logits: ``[..., K]`` confidence-head logits, or ``None``.
        ce_alpha, l1_alpha, confidence_alpha: term weights.
        decay_gamma: position decay ``exp(-k / gamma)``.
        keep: ``[...]`` kept blocks (for ``tau``; default: any supervised slot).
        draft_vocab: the drafter's reduced vocabulary, if any. Labels outside it
            add no cross-entropy (the drafter cannot propose them) and count as
            rejected; the target's mass outside it counts in L1.
    """
    vocab = draft_logits.shape[-1]
    weights = position_weights(eval_mask, decay_gamma)
    den = weights.sum()
    labels = target_ids.long()
    if draft_vocab is not None:
        labels = draft_vocab.draft_index(labels)
    in_vocab = labels >= 0
    ce_tok = F.cross_entropy(
        draft_logits.reshape(-1, vocab).float(), labels.clamp_min(0).reshape(-1), reduction="none"
    ).reshape(weights.shape)
    ce = (ce_tok * in_vocab * weights).sum() / (den + 1e-6)

    if target_logits is None:
        l1 = ce.new_zeros(())
        accept = ((draft_logits.argmax(dim=-1) == labels) & in_vocab).to(torch.float32)
    else:
        p_d = torch.softmax(draft_logits.float(), dim=-1)
        p_t = torch.softmax(target_logits.float(), dim=-1)
        if draft_vocab is not None:
            p_t = p_t[..., draft_vocab.ids.to(p_t.device)]
            l1_tok = (p_d - p_t).abs().sum(dim=-1) + (1.0 - p_t.sum(dim=-1)).clamp_min(0.0)
        else:
            l1_tok = (p_d - p_t).abs().sum(dim=-1)
        l1 = (l1_tok * weights).sum() / (den + 1e-6)
        accept = (1.0 - 0.5 * l1_tok).clamp(0.0, 1.0)

    conf = ce.new_zeros(())
    if confidence_logits is not None:
        bce = F.binary_cross_entropy_with_logits(
            confidence_logits.float(), accept.detach(), reduction="none"
        )
        conf = (bce * weights).sum() / (den + 1e-6)

    loss = ce_alpha * ce + (l1_alpha * l1 if target_logits is not None else 0.0)
    if confidence_logits is not None:
        loss = loss + confidence_alpha * conf

    with torch.no_grad():
        mask = eval_mask.to(torch.float32)
        lead = tuple(range(mask.dim() - 1))
        count = mask.sum(dim=lead)
        accept_rate = (accept.detach() * mask).sum(dim=lead) / count.clamp_min(1.0)
        valid = eval_mask.any(dim=-1)
        if keep is not None:
            valid = valid & keep
        per_block = 1.0 + (accept.detach() * mask).cumprod(dim=-1).sum(dim=-1)
        num_blocks = valid.to(torch.float32).sum()
        tau = (per_block * valid).sum() / num_blocks.clamp_min(1.0)
    return DSparkLoss(
        loss=loss,
        ce=ce.detach(),
        l1=l1.detach(),
        confidence=conf.detach(),
        accept_rate=accept_rate,
        accept_count=count,
        tau=tau,
        num_blocks=num_blocks,
    )
