"""Acceptance measurements: held-out greedy drafts and offline speculative decoding.

Two measurements (greedy; the second can also sample):

* :func:`heldout_greedy_drafts` drafts blocks on held-out distilled sequences
  exactly as serving does (backbone once, then the Markov head fed with its
  *own* previous drafts, confidence head on ``[h_k ; W1[x_{k-1}]]``) and marks
  ``accepted[k]`` = draft ``k`` equals the target's argmax at that slot, given
  that all earlier drafts matched. Only blocks whose whole window lies in the
  answer and whose answer tokens *are* the target's greedy continuation are
  kept, so the teacher-forced target distributions equal those of the
  greedy path the drafts would be verified on. These (confidence logits,
  accepted) pairs feed :func:`~sglang_dspark.algorithm.calibration.fit_sts`.
* :func:`evaluate_acceptance` runs real speculative decoding with the target
  (HF, KV cache), the reference drafter (:class:`DeepSpecDrafter`, context
  cache) and :func:`~sglang_dspark.algorithm.verify.verify_block` (greedy),
  verifying the whole block each step, and reports the mean number of
  tokens committed per verify step (accepted drafts + the bonus/correction
  token) and the per-position conditional acceptance.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from sglang_dspark.algorithm.block_drafting import draft_block
from sglang_dspark.algorithm.sampling import (
    GREEDY_TEMPERATURE,
    SamplingParams,
    logits_to_probs,
    sample_from_probs,
)
from sglang_dspark.algorithm.verify import verify_block
from sglang_dspark.models.deepspec_drafter import DeepSpecDrafter
from sglang_dspark.train.blocks import (
    build_blocks,
    drafter_block_forward,
    drop_padding_anchors,
    sample_anchors,
)
from sglang_dspark.train.blocks import _target_logits
from sglang_dspark.train.target import target_forward

__all__ = [
    "AcceptanceReport",
    "HeldoutDrafts",
    "evaluate_acceptance",
    "greedy_decode",
    "heldout_greedy_drafts",
]


@dataclass(frozen=True)
class HeldoutDrafts:
    """Greedy drafts on held-out blocks.

    Attributes:
        confidence_logits: ``[N, K]`` raw confidence-head logits (``None`` without a head).
        accepted: ``[N, K]`` bool, draft ``k`` matched the target's argmax
            (meaningful while all earlier ones matched).
    """

    confidence_logits: torch.Tensor | None
    accepted: torch.Tensor

    @property
    def num_blocks(self) -> int:
        """``N``."""
        return int(self.accepted.shape[0])

    def mean_committed(self) -> float:
        """Mean of ``1 + accepted prefix length`` (committed tokens per verify step)."""
        if self.num_blocks == 0:
            return float("nan")
        return float(1.0 + self.accepted.long().cumprod(dim=1).sum(dim=1).float().mean())

    def per_position(self) -> list[float]:
        """``P(accept k | accepted 0..k-1)`` per position (nan where never reached)."""
        prefix = self.accepted.long().cumprod(dim=1)
        reached = torch.cat([torch.full_like(prefix[:, :1], 1), prefix[:, :-1]], dim=1)
        num = prefix.sum(dim=0).float()
        den = reached.sum(dim=0).float()
        return [float(n / d) if d > 0 else float("nan") for n, d in zip(num, den)]


@torch.no_grad()
def heldout_greedy_drafts(
    drafter: DeepSpecDrafter,
    sequences: Sequence[Any],
    *,
    num_anchors: int,
    max_blocks: int,
    seed: int = 0,
) -> HeldoutDrafts:
    """Draft greedily at sampled anchors of held-out sequences (see module doc).

    Args:
        drafter: the drafter (target modules attached).
        sequences: :class:`~sglang_dspark.train.distill.DistilledSequence` objects.
        num_anchors: anchors sampled per sequence (DeepSpec sampler).
        max_blocks: stop after this many usable blocks.
        seed: anchor-sampling seed.
    """
    cfg = drafter.config
    K = cfg.block_size
    was_training = drafter.training
    drafter.eval()
    conf_rows: list[torch.Tensor] = []
    acc_rows: list[torch.Tensor] = []
    total = 0
    gen = torch.Generator().manual_seed(seed)
    greedy = None
    for seq in sequences:
        if total >= max_blocks:
            break
        ids = seq.input_ids[None].long()
        mask = seq.loss_mask[None].bool()
        anchors, keep = drop_padding_anchors(*sample_anchors(mask, num_anchors, generator=gen))
        blocks = build_blocks(
            ids, mask, seq.context_hidden[None], anchors, keep,
            block_size=K, mask_token_id=cfg.mask_token_id, last_hidden=seq.last_hidden[None],
        )
        usable = blocks.eval_mask.all(dim=-1) & blocks.keep  # [1, A]
        if not bool(usable.any()):
            continue
        target_argmax = _target_logits(drafter, blocks).argmax(dim=-1).cpu()  # [1, A, K]
        # The answer must be the target's greedy path inside the window.
        on_path = (blocks.target_ids[..., :-1] == target_argmax[..., :-1]).all(dim=-1)
        usable = usable & on_path
        if not bool(usable.any()):
            continue
        hidden = drafter_block_forward(drafter, blocks)  # [1, A, K, H]
        sel = usable[0].nonzero(as_tuple=True)[0]
        hidden = hidden[0, sel.to(hidden.device)]
        logits = drafter.head_logits(hidden)
        anchor_tokens = ids[0, anchors[0, sel]].to(hidden.device)
        if greedy is None or greedy.batch_size != len(sel):
            greedy = SamplingParams.create(0.0, batch_size=len(sel), device=hidden.device)
        block = draft_block(
            logits, hidden, anchor_tokens, drafter.markov_head, drafter.confidence_head, greedy,
            draft_vocab=drafter.draft_vocab,
        )
        accepted = block.tokens.cpu() == target_argmax[0, sel]
        acc_rows.append(accepted)
        if block.confidence_logits is not None:
            conf_rows.append(block.confidence_logits.float().cpu())
        total += len(sel)
    drafter.train(was_training)
    if acc_rows:
        accepted = torch.cat(acc_rows)[:max_blocks]
        conf = torch.cat(conf_rows)[:max_blocks] if conf_rows else None
    else:
        accepted = torch.zeros(0, K, dtype=torch.bool)
        conf = torch.zeros(0, K) if drafter.confidence_head is not None else None
    return HeldoutDrafts(confidence_logits=conf, accepted=accepted)


# ---------------------------------------------------------------------- #
# Offline speculative decoding
# ---------------------------------------------------------------------- #
@dataclass
class AcceptanceReport:
    """Greedy speculative decoding statistics over a prompt set.

    Attributes:
        mean_committed: tokens committed per verify step (accepted drafts +
            the bonus/correction token), averaged over all steps.
        per_position: ``P(draft k accepted | drafts 0..k-1 accepted)``.
        reached, accepted: per-position counts behind ``per_position``.
        num_steps: verify steps.
        num_tokens: tokens generated (after the first, which the prefill gives).
        num_prompts: prompts decoded.
        seconds: wall time.
        outputs: generated token ids per prompt.
    """

    mean_committed: float
    per_position: list[float]
    reached: list[int]
    accepted: list[int]
    num_steps: int
    num_tokens: int
    num_prompts: int
    seconds: float
    outputs: list[list[int]] = field(default_factory=list, repr=False)

    def to_dict(self, *, with_outputs: bool = False) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        if not with_outputs:
            out.pop("outputs")
        out["per_position"] = [x if x == x else None for x in out["per_position"]]  # NaN -> null
        return out


def _prompt_ids(tokenizer: Any, prompt: str | Sequence[int], chat_template: bool) -> list[int]:
    if not isinstance(prompt, str):
        return [int(t) for t in prompt]
    if chat_template:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    return [int(t) for t in tokenizer(prompt, add_special_tokens=False)["input_ids"]]


def _eos_set(target: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(target, "generation_config", None), getattr(target, "config", None)):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


@torch.no_grad()
def greedy_decode(
    target: Any,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    eos_ids: set[int] | None = None,
) -> list[int]:
    """Plain greedy decoding with a KV cache (the reference for lossless checks)."""
    from transformers import DynamicCache

    device = next(target.parameters()).device
    eos_ids = eos_ids if eos_ids is not None else _eos_set(target, None)
    cache = DynamicCache()
    ids = torch.tensor([list(prompt_ids)], device=device)
    out: list[int] = []
    while len(out) < max_new_tokens:
        logits = target(input_ids=ids, past_key_values=cache, use_cache=True).logits
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token in eos_ids:
            break
        ids = torch.tensor([[token]], device=device)
    return out


@torch.no_grad()
def evaluate_acceptance(
    target: Any,
    tokenizer: Any,
    drafter: DeepSpecDrafter,
    prompts: Sequence[str | Sequence[int]],
    *,
    max_new_tokens: int = 128,
    chat_template: bool = True,
    max_prompt_tokens: int | None = None,
    temperature: float = 0.0,
    seed: int = 0,
) -> AcceptanceReport:
    """Speculative decoding of ``prompts`` (greedy by default); acceptance statistics.

    Each prompt is prefilled by the target (its first token is the target's
    greedy token, not drafted); then every step drafts a block from the last
    committed token (the anchor), the target verifies ``[anchor, x_1..x_K]``
    in one forward, :func:`verify_block` (greedy) keeps the accepted prefix
    plus one target token, the target KV cache is cropped to the committed
    length and the drafter's context cache is extended with the target
    features of the committed rows. The output is token-identical to plain
    greedy decoding (up to floating-point ties). With ``temperature > 0`` the
    drafts are sampled and verified by rejection sampling (lossless in
    distribution), all noise from one generator seeded with ``seed``.

    Args:
        target: HF causal LM (eval mode).
        tokenizer: its tokenizer (chat template used when ``chat_template``).
        drafter: DeepSpec drafter sharing the target's embedding and LM head.
        prompts: user messages (or token id lists, used as they are).
        max_new_tokens: generation budget per prompt.
        chat_template: wrap string prompts in the chat template.
        max_prompt_tokens: skip prompts longer than this.
        temperature: sampling temperature of target and drafter (0 = greedy).
        seed: seed of the sampling noise (unused when greedy).
    """
    from transformers import DynamicCache

    cfg = drafter.config
    K = cfg.block_size
    layer_ids = list(cfg.target_layer_ids)
    device = next(target.parameters()).device
    eos_ids = _eos_set(target, tokenizer)
    sampling = SamplingParams.create(temperature, batch_size=1, device=device)
    sample = temperature > GREEDY_TEMPERATURE
    gen = torch.Generator(device=device).manual_seed(int(seed)) if sample else None

    def target_probs(logits: torch.Tensor) -> torch.Tensor:
        return logits_to_probs(logits, sampling.temperature, sampling.top_p, sampling.top_k)

    reached = [0] * K
    accepted = [0] * K
    steps = committed_total = tokens_total = 0
    outputs: list[list[int]] = []
    was_training = drafter.training
    drafter.eval()
    start = time.perf_counter()
    for prompt in prompts:
        ids = _prompt_ids(tokenizer, prompt, chat_template)
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            continue
        cache = DynamicCache()
        pre = target_forward(
            target, torch.tensor([ids], device=device), layer_ids,
            past_key_values=cache, use_cache=True,
        )
        dcache = drafter.new_cache(1, capacity=len(ids) + max_new_tokens + K + 2, device=device)
        drafter.extend_context(dcache, pre.context_hidden)
        if sample:
            first = int(sample_from_probs(target_probs(pre.logits[:, -1]), generator=gen)[0])
        else:
            first = int(pre.logits[0, -1].argmax())
        generated = [first]
        length = len(ids)  # tokens in the target KV cache
        while len(generated) < max_new_tokens and generated[-1] not in eos_ids:
            anchor = torch.tensor([generated[-1]], device=device)
            block = drafter.draft(anchor, dcache, sampling, generator=gen)
            verify_in = torch.cat([anchor[:, None], block.tokens], dim=1)
            ver = target_forward(
                target, verify_in, layer_ids, past_key_values=cache, use_cache=True
            )
            if sample:
                result = verify_block(
                    block.tokens, block.probs, target_probs(ver.logits), generator=gen
                )
            else:
                result = verify_block(block.tokens, None, ver.logits, greedy=True)
            n = int(result.num_accepted[0])
            new = [int(t) for t in result.tokens[0, : n + 1]]
            for k in range(min(n + 1, K)):
                reached[k] += 1
                if k < n:
                    accepted[k] += 1
            steps += 1
            committed_total += n + 1
            if K > n:
                cache.crop(-(K - n))  # drop the rejected drafts' K/V
            drafter.extend_context(dcache, ver.context_hidden[:, : n + 1])
            length += n + 1
            for token in new:
                generated.append(token)
                if token in eos_ids or len(generated) >= max_new_tokens:
                    break
        tokens_total += len(generated) - 1
        outputs.append(generated)
    drafter.train(was_training)
    per_position = [a / r if r else float("nan") for a, r in zip(accepted, reached)]
    return AcceptanceReport(
        mean_committed=committed_total / steps if steps else float("nan"),
        per_position=per_position,
        reached=reached,
        accepted=accepted,
        num_steps=steps,
        num_tokens=tokens_total,
        num_prompts=len(outputs),
        seconds=time.perf_counter() - start,
        outputs=outputs,
    )
