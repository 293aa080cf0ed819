"""The logit processing of a DSPARK verify block, position by position, as plain decoding does it.

SGLang's sampler processes one row per request: custom logit processor,
penalties, grammar mask, logit bias. A verify block holds ``W`` rows per
request, row ``j`` scoring the token after ``anchor, d_1 .. d_j``; each row
must be processed as plain decoding would process it once those drafts had
been accepted: penalties counting the drafts before it
(:mod:`sglang_dspark.algorithm.chain_penalties`), min-new-tokens by output
length, the grammar matcher advanced along the drafts and rolled back
afterwards, the same logit bias. Requests with a custom logit processor
(arbitrary code over the batch) verify no drafts: their one row is row 0,
processed exactly as the plain path does.

SGLang 0.5.23 builds its penalizers from a *set* of classes, so the order
they apply in (repetition scales what frequency and presence subtracted)
changes from one process to the next; :func:`canonical_penalizer_order`
(installed by the plugin) fixes it to the source order, the same in every
process, speculative or not.
"""

from __future__ import annotations

import logging

import torch

from sglang_dspark.algorithm.chain_penalties import PENALTY_ORDER, ChainPenalties, apply_chain_penalties

logger = logging.getLogger("sglang_dspark")

ORCHESTRATOR_INIT = "sglang.srt.sampling.penaltylib.orchestrator.BatchedPenalizerOrchestrator.__init__"
_PENALIZER_NAMES = {
    "BatchedFrequencyPenalizer": "frequency",
    "BatchedMinNewTokensPenalizer": "min_new_tokens",
    "BatchedPresencePenalizer": "presence",
    "BatchedRepetitionPenalizer": "repetition",
}
_announced: set[str] = set()


def canonical_penalizer_order(orig, self, vocab_size, batch, penalizers):
    """AROUND hook on the orchestrator's ``__init__``: penalizers in SGLang's source order, in every process."""
    rank = {name: i for i, name in enumerate(PENALTY_ORDER)}
    ordered = sorted(penalizers, key=lambda cls: rank.get(_PENALIZER_NAMES.get(cls.__name__, ""), len(rank)))
    return orig(self, vocab_size, batch, ordered)


def _announce_once(reason: str) -> None:
    if reason not in _announced:
        _announced.add(reason)
        logger.info("DSPARK: requests with %s decode without drafts (their verify holds one position)", reason)


def plain_rows(batch) -> list[bool]:
    """Per request: True when its logit processing cannot be applied per position, so it verifies no drafts."""
    rows = [getattr(req, "custom_logit_processor", None) is not None for req in batch.reqs]
    if any(rows):
        _announce_once("a custom logit processor")
    return rows


def _has_penalty(params) -> bool:
    """Whether any of SGLang's penalizers acts on a request with these sampling parameters."""
    return (params.frequency_penalty != 0 or params.presence_penalty != 0 or params.repetition_penalty != 1
            or params.min_new_tokens > 0)


def has_logit_processing(req) -> bool:
    """Whether plain decoding changes ``req``'s logits before sampling (penalty, grammar, bias, processor)."""
    return (getattr(req, "grammar", None) is not None or getattr(req, "custom_logit_processor", None) is not None
            or req.sampling_params.logit_bias is not None or _has_penalty(req.sampling_params))


def _stop_tokens(req) -> set[int]:
    """The tokens SGLang's min-new-tokens penalizer holds back for ``req`` (same expression)."""
    tokenizer = getattr(req, "tokenizer", None)
    ids = set(req.sampling_params.stop_token_ids or set()) | set(req.eos_token_ids or set())
    if tokenizer is not None:
        ids |= set(getattr(tokenizer, "additional_stop_token_ids", None) or set())
        if getattr(tokenizer, "eos_token_id", None) is not None:
            ids.add(tokenizer.eos_token_id)
    return {i for i in ids if i is not None}


def chain_penalties(reqs, vocab_size: int) -> ChainPenalties | None:
    """The requests' penalties and committed output, or ``None`` when no request has a penalty."""
    params = [r.sampling_params for r in reqs]
    if not any(_has_penalty(p) for p in params):
        return None
    b = len(reqs)
    counts = torch.zeros((b, vocab_size), dtype=torch.int64)
    stop = torch.zeros((b, vocab_size), dtype=torch.bool)
    for i, req in enumerate(reqs):
        if req.output_ids:
            out = torch.tensor(req.output_ids, dtype=torch.int64)
            counts[i].scatter_add_(0, out, torch.ones_like(out))
        if params[i].min_new_tokens > 0:
            ids = [t for t in _stop_tokens(req) if 0 <= t < vocab_size]
            stop[i, ids] = True
    return ChainPenalties(
        output_counts=counts,
        output_len=torch.tensor([len(r.output_ids) for r in reqs], dtype=torch.int64),
        frequency=torch.tensor([p.frequency_penalty for p in params], dtype=torch.float32),
        presence=torch.tensor([p.presence_penalty for p in params], dtype=torch.float32),
        repetition=torch.tensor([p.repetition_penalty for p in params], dtype=torch.float32),
        min_new_tokens=torch.tensor([p.min_new_tokens for p in params], dtype=torch.int64),
        stop_tokens=stop,
    )


def _penalty_order(sampling_info) -> tuple[str, ...]:
    orchestrator = getattr(sampling_info, "penalizer_orchestrator", None)
    names = [_PENALIZER_NAMES.get(cls.__name__) for cls in getattr(orchestrator, "penalizers", {})]
    names = tuple(n for n in names if n)
    return names if sorted(names) == sorted(PENALTY_ORDER) else PENALTY_ORDER


def apply_grammar_masks(logits: torch.Tensor, reqs, drafts: list[list[int]], verify_lens: list[int]) -> None:
    """Mask row ``j`` of each constrained request with its grammar's state after ``d_1 .. d_j``.

    The matcher is advanced along the drafts and rolled back to where it
    was; rows after a draft the grammar rejects (or after it terminates) are
    left unmasked: verification stops before them.
    """
    _, w, v = logits.shape
    for i, req in enumerate(reqs):
        grammar = getattr(req, "grammar", None)
        if grammar is None or not hasattr(grammar, "fill_vocab_mask"):
            continue
        if grammar.is_terminated():
            continue
        mask = grammar.allocate_vocab_mask(v, w, logits.device)
        if mask is None:
            continue
        grammar.fill_vocab_mask(mask, 0)
        advanced = 0
        try:
            for j in range(1, min(verify_lens[i], w - 1) + 1):
                try:
                    grammar.accept_token(int(drafts[i][j - 1]))
                except ValueError:
                    break
                advanced += 1
                if grammar.is_terminated():
                    break
                grammar.fill_vocab_mask(mask, j)
        finally:
            if advanced:
                grammar.rollback(advanced)
        grammar.apply_vocab_mask(logits[i], grammar.move_vocab_mask(mask, logits.device))


def process_verify_logits(logits: torch.Tensor, batch, drafts: torch.Tensor, verify_lens: list[int]) -> None:
    """Apply plain decoding's logit processing to every row of ``logits`` ``[B, W, V]`` in place.

    ``drafts`` ``[B, >= W-1]`` are the verified chains after each anchor;
    ``verify_lens`` how many of them each request verifies.
    """
    sampling_info = batch.sampling_info
    b, w, v = logits.shape
    if getattr(sampling_info, "has_custom_logit_processor", False):
        from sglang.srt.layers.sampler import apply_custom_logit_processor

        apply_custom_logit_processor(logits.view(b * w, v), sampling_info, num_tokens_in_batch=w)
    penalties = chain_penalties(batch.reqs, v)
    if penalties is not None:
        apply_chain_penalties(logits, drafts, penalties, _penalty_order(sampling_info))
    if any(getattr(r, "grammar", None) is not None for r in batch.reqs):
        apply_grammar_masks(logits, batch.reqs, drafts[:, : w - 1].tolist(), verify_lens)
    logit_bias = getattr(sampling_info, "logit_bias", None)
    if logit_bias is not None:
        logits.add_(logit_bias.to(logits)[:, None, :])


class DraftConstraints:
    """Draft-time logit processing: each constrained request's grammar mask and its logit bias.

    A ``logits_processor`` for :func:`~sglang_dspark.algorithm.block_drafting.draft_block`:
    position ``k`` is masked with the grammar's state after the drafts before
    it (the matcher advanced token by token as they are drafted), so no
    position is spent on a draft the target must reject. :meth:`close` rolls
    every matcher back. Without it a drafter proposes what the grammar forbids
    and the verify rejects it: output is the same, acceptance lower.
    """

    def __init__(self, batch) -> None:
        self.reqs = batch.reqs
        self.logit_bias = getattr(batch.sampling_info, "logit_bias", None)
        self.grammars = {i: r.grammar for i, r in enumerate(self.reqs)
                         if getattr(r, "grammar", None) is not None and hasattr(r.grammar, "fill_vocab_mask")
                         and not r.grammar.is_terminated()}
        self.advanced = dict.fromkeys(self.grammars, 0)
        self.stopped: set[int] = set()

    @classmethod
    def for_batch(cls, batch) -> "DraftConstraints | None":
        """The processor, or ``None`` when no request of ``batch`` has a grammar or a logit bias."""
        constraints = cls(batch)
        return constraints if constraints.grammars or constraints.logit_bias is not None else None

    def __call__(self, k: int, logits: torch.Tensor, prev: torch.Tensor) -> None:
        v = logits.shape[-1]
        if self.grammars:
            prev_ids = prev.tolist() if k > 0 else None
            for i, grammar in self.grammars.items():
                if i in self.stopped:
                    continue
                if k > 0:
                    try:
                        grammar.accept_token(int(prev_ids[i]))
                    except ValueError:
                        self.stopped.add(i)
                        continue
                    self.advanced[i] += 1
                    if grammar.is_terminated():
                        self.stopped.add(i)
                        continue
                mask = grammar.allocate_vocab_mask(v, 1, logits.device)
                if mask is None:
                    continue
                grammar.fill_vocab_mask(mask, 0)
                grammar.apply_vocab_mask(logits[i: i + 1], grammar.move_vocab_mask(mask, logits.device))
        if self.logit_bias is not None:
            logits.add_(self.logit_bias.to(logits))

    def close(self) -> None:
        """Roll every matcher back to where drafting found it."""
        for i, n in self.advanced.items():
            if n:
                self.grammars[i].rollback(n)
        self.advanced = dict.fromkeys(self.grammars, 0)
