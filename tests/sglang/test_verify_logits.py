"""The verify block's per-position logit processing (grammar rows, plain-only requests, penalizer order)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from sglang_dspark.sglang import verify_logits
from sglang_dspark.sglang.verify_logits import (
    DraftConstraints,
    apply_grammar_masks,
    canonical_penalizer_order,
    chain_penalties,
    has_logit_processing,
    plain_rows,
)

V = 8


class FakeGrammar:
    """After token t only tokens != t + 1 (mod V) are allowed; token 7 terminates. Mask: bool, True = allowed."""

    def __init__(self, last: int) -> None:
        self.stack = [last]

    def accept_token(self, token: int) -> None:
        if token == (self.stack[-1] + 1) % V:
            raise ValueError("Tokens not accepted")
        self.stack.append(token)

    def rollback(self, k: int) -> None:
        del self.stack[-k:]

    def is_terminated(self) -> bool:
        return self.stack[-1] == 7

    def allocate_vocab_mask(self, vocab, batch, device):
        return torch.ones((batch, vocab), dtype=torch.bool)

    def fill_vocab_mask(self, mask, idx):
        mask[idx] = True
        mask[idx, (self.stack[-1] + 1) % V] = False

    @staticmethod
    def move_vocab_mask(mask, device):
        return mask

    @staticmethod
    def apply_vocab_mask(logits, mask):
        logits.masked_fill_(~mask, float("-inf"))


def _req(grammar=None, **params):
    defaults = dict(frequency_penalty=0.0, presence_penalty=0.0, repetition_penalty=1.0, min_new_tokens=0,
                    logit_bias=None, stop_token_ids=None)
    return SimpleNamespace(grammar=grammar, custom_logit_processor=None, output_ids=[1, 2],
                           sampling_params=SimpleNamespace(**{**defaults, **params}), eos_token_ids=None,
                           tokenizer=None)


def test_grammar_rows_follow_the_drafts_and_the_matcher_is_rolled_back():
    g = FakeGrammar(last=0)
    logits = torch.zeros((1, 4, V))
    apply_grammar_masks(logits, [_req(g)], drafts=[[3, 5, 2]], verify_lens=[3])
    forbidden = [int(torch.nonzero(torch.isinf(row)).view(-1)[0]) for row in logits[0]]
    assert forbidden == [1, 4, 6, 3]  # successor of the anchor 0, then of 3, 5, 2
    assert g.stack == [0]


def test_rows_after_a_rejected_or_terminating_draft_stay_unmasked():
    g = FakeGrammar(last=0)
    logits = torch.zeros((2, 4, V))
    apply_grammar_masks(logits, [_req(g), _req(FakeGrammar(last=2))], drafts=[[1, 5, 5], [7, 0, 0]],
                        verify_lens=[3, 3])
    assert torch.isinf(logits[0, 0]).sum() == 1 and not torch.isinf(logits[0, 1:]).any()  # draft 1 rejected
    assert not torch.isinf(logits[1, 1:]).any()  # 7 terminated the grammar
    assert g.stack == [0]


def test_draft_constraints_mask_each_position_and_roll_back():
    g = FakeGrammar(last=0)
    batch = SimpleNamespace(reqs=[_req(g), _req()], sampling_info=SimpleNamespace(logit_bias=None))
    constraints = DraftConstraints.for_batch(batch)
    logits = torch.zeros((2, V))
    constraints(0, logits, torch.tensor([0, 0]))
    assert torch.isinf(logits[0, 1]) and not torch.isinf(logits[1]).any()
    logits = torch.zeros((2, V))
    constraints(1, logits, torch.tensor([4, 4]))  # the first draft was 4
    assert torch.isinf(logits[0, 5]) and g.stack == [0, 4]
    constraints.close()
    assert g.stack == [0]
    assert DraftConstraints.for_batch(SimpleNamespace(reqs=[_req()], sampling_info=SimpleNamespace(logit_bias=None))) is None


def test_custom_logit_processor_requests_verify_no_drafts_and_say_so_once(caplog):
    verify_logits._announced.clear()
    custom = _req()
    custom.custom_logit_processor = "serialized processor"
    batch = SimpleNamespace(reqs=[_req(), custom])
    with caplog.at_level(logging.INFO, logger="sglang_dspark"):
        assert plain_rows(batch) == [False, True]
        assert plain_rows(batch) == [False, True]
    assert sum("custom logit processor" in r.message for r in caplog.records) == 1
    assert has_logit_processing(custom) and not has_logit_processing(_req())
    assert has_logit_processing(_req(logit_bias={"3": 1.0})) and has_logit_processing(_req(min_new_tokens=2))


def test_chain_penalties_only_when_a_request_has_one():
    assert chain_penalties([_req(), _req()], V) is None
    p = chain_penalties([_req(), _req(frequency_penalty=0.5)], V)
    assert p.output_counts[1, 1] == 1 and p.output_len.tolist() == [2, 2]


def test_penalizers_are_ordered_as_in_sglang_source_whatever_the_set_order():
    from sglang.srt.sampling import penaltylib as pl

    got = {}

    def orig(self, vocab_size, batch, penalizers):
        got["order"] = [c.__name__ for c in penalizers]

    shuffled = [pl.BatchedRepetitionPenalizer, pl.BatchedPresencePenalizer, pl.BatchedFrequencyPenalizer,
                pl.BatchedMinNewTokensPenalizer]
    canonical_penalizer_order(orig, None, 10, None, set(shuffled))
    assert got["order"] == ["BatchedFrequencyPenalizer", "BatchedMinNewTokensPenalizer",
                            "BatchedPresencePenalizer", "BatchedRepetitionPenalizer"]
