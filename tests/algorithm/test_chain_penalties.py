"""Penalties per verify position: SGLang's own penalizers as plain decoding drives them, and the sampled distribution."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import chisquare

from sglang_dspark.algorithm.chain_penalties import (
    PENALTY_ORDER,
    ChainPenalties,
    apply_chain_penalties,
    repeated_sum_table,
)
from sglang_dspark.algorithm.sampling import logits_to_probs
from sglang_dspark.algorithm.verify import verify_block

V = 40


class _Batch:  # weak-referenceable, as SGLang's orchestrator needs
    def __init__(self, reqs) -> None:
        self.reqs, self.device = reqs, "cpu"


def _req(freq, presence, rep, min_new, stop):
    params = SimpleNamespace(frequency_penalty=freq, presence_penalty=presence, repetition_penalty=rep,
                             min_new_tokens=min_new, stop_token_ids=set(stop))
    tokenizer = SimpleNamespace(additional_stop_token_ids=None, eos_token_id=V - 1)
    return SimpleNamespace(sampling_params=params, eos_token_ids={V - 2}, tokenizer=tokenizer)


def _sglang_rows(reqs, outputs, drafts, logits, order):
    """Row j of each request processed by SGLang's penalizers after output + drafts[:j], one token at a time."""
    from sglang.srt.sampling import penaltylib as pl

    classes = {"frequency": pl.BatchedFrequencyPenalizer, "min_new_tokens": pl.BatchedMinNewTokensPenalizer,
               "presence": pl.BatchedPresencePenalizer, "repetition": pl.BatchedRepetitionPenalizer}
    batch = _Batch(reqs)
    orch = pl.BatchedPenalizerOrchestrator(vocab_size=V, batch=batch, penalizers=[classes[n] for n in order])
    for step in range(len(outputs[0])):
        orch.cumulate_output_tokens(torch.tensor([o[step] for o in outputs]))
    out = logits.clone()
    for j in range(logits.shape[1]):
        row = out[:, j].clone()
        orch.apply(row)
        out[:, j] = row
        if j < drafts.shape[1]:
            orch.cumulate_output_tokens(drafts[:, j])
    return out


def _ours(reqs, outputs, drafts, logits, order):
    counts = torch.zeros((len(reqs), V), dtype=torch.int64)
    stop = torch.zeros((len(reqs), V), dtype=torch.bool)
    for i, (req, out) in enumerate(zip(reqs, outputs)):
        counts[i].scatter_add_(0, torch.tensor(out), torch.ones(len(out), dtype=torch.int64))
        stop[i, list(req.sampling_params.stop_token_ids | req.eos_token_ids | {req.tokenizer.eos_token_id})] = True
    p = [r.sampling_params for r in reqs]
    penalties = ChainPenalties(
        output_counts=counts, output_len=torch.tensor([len(o) for o in outputs]),
        frequency=torch.tensor([x.frequency_penalty for x in p]), presence=torch.tensor([x.presence_penalty for x in p]),
        repetition=torch.tensor([x.repetition_penalty for x in p]),
        min_new_tokens=torch.tensor([x.min_new_tokens for x in p]), stop_tokens=stop)
    out = logits.clone()
    apply_chain_penalties(out, drafts, penalties, order)
    return out


@pytest.mark.parametrize("order", [PENALTY_ORDER, tuple(reversed(PENALTY_ORDER))])
def test_rows_equal_sglang_penalizers_driven_as_plain_decoding(order):
    gen = torch.Generator().manual_seed(0)
    reqs = [_req(0.3, 0.0, 1.0, 0, []), _req(0.0, 0.7, 1.0, 0, []), _req(0.0, 0.0, 1.3, 0, []),
            _req(0.45, 0.2, 1.15, 9, [3, 5]), _req(0.0, 0.0, 1.0, 0, [])]
    outputs = [torch.randint(0, 8, (6,), generator=gen).tolist() for _ in reqs]  # repeats likely
    drafts = torch.randint(0, 8, (len(reqs), 4), generator=gen)
    logits = torch.randn((len(reqs), 5, V), generator=gen) * 3
    expected = _sglang_rows(reqs, outputs, drafts, logits, order)
    got = _ours(reqs, outputs, drafts, logits, order)
    assert torch.equal(got, expected)  # bit for bit
    assert not torch.equal(got[:, 0], got[:, 4])  # the drafts did change later rows


def test_repeated_sum_matches_float32_accumulation():
    table = repeated_sum_table(0.1, 50)
    acc = torch.zeros((), dtype=torch.float32)
    for k in range(1, 51):
        acc = acc + torch.tensor(0.1, dtype=torch.float32)
        assert table[k] == acc
    assert table[0] == 0


def test_order_is_validated():
    with pytest.raises(ValueError, match="permutation"):
        apply_chain_penalties(torch.zeros(1, 2, V), torch.zeros(1, 1, dtype=torch.long),
                              _ours_penalties(), ("frequency",))


def _ours_penalties():
    z = torch.zeros(1)
    return ChainPenalties(output_counts=torch.zeros((1, V), dtype=torch.int64), output_len=z.long(),
                          frequency=z, presence=z, repetition=z + 1, min_new_tokens=z.long(),
                          stop_tokens=torch.zeros((1, V), dtype=torch.bool))


# ----------------------------------------------------------- sampled distribution
SV, K, N = 5, 3, 60_000
PRIOR = [1, 1]  # committed output before the test: token 1 twice
FREQ, PRES, REP, MIN_NEW, STOP, MIN_P = 0.7, 0.3, 1.5, 3, 4, 0.08


def _processed_probs(raw: torch.Tensor, counts: torch.Tensor, out_len: torch.Tensor, drafts: torch.Tensor):
    """Sampling distribution of each row: penalties along the chain, then temperature 1 and min-p."""
    b = raw.shape[0]
    penalties = ChainPenalties(
        output_counts=counts, output_len=out_len, frequency=torch.full((b,), FREQ),
        presence=torch.full((b,), PRES), repetition=torch.full((b,), REP),
        min_new_tokens=torch.full((b,), MIN_NEW), stop_tokens=torch.nn.functional.one_hot(
            torch.full((b,), STOP), SV).bool())
    logits = raw.clone()
    apply_chain_penalties(logits, drafts, penalties)
    ones = torch.ones(b)
    return logits_to_probs(logits, ones, ones, torch.zeros(b, dtype=torch.long), torch.full((b,), MIN_P))


def test_committed_pairs_follow_plain_sampling_with_penalties():
    """Joint law of the next two tokens under speculation = plain decoding's, penalties counting each token."""
    gen = torch.Generator().manual_seed(3)
    table = torch.randn((6, SV), generator=gen) * 1.5  # raw logits by output position (prefix-free "model")
    draft_dist = torch.softmax(torch.randn((K, SV), generator=gen), -1)

    # Plain decoding, exactly: P(t1 = a) P(t2 = b | t1 = a).
    base = torch.bincount(torch.tensor(PRIOR), minlength=SV)
    exact = torch.zeros((SV, SV), dtype=torch.float64)
    p1 = _processed_probs(table[None, 0:1], base[None], torch.tensor([len(PRIOR)]), torch.zeros((1, 0), dtype=torch.long))[0, 0]
    for a in range(SV):
        p2 = _processed_probs(table[None, 1:2], (base + torch.nn.functional.one_hot(torch.tensor(a), SV))[None],
                              torch.tensor([len(PRIOR) + 1]), torch.zeros((1, 0), dtype=torch.long))[0, 0]
        exact[a] = p1[a].double() * p2.double()

    # Speculative decoding until each row has committed two tokens (one or two steps).
    committed = torch.full((N, 2), -1)
    done = torch.zeros(N, dtype=torch.long)
    while bool((done < 2).any()):
        rows = torch.nonzero(done < 2).view(-1)
        b = rows.numel()
        counts = base.expand(b, SV).clone()
        has_one = done[rows] >= 1
        counts[has_one] += torch.nn.functional.one_hot(committed[rows[has_one], 0], SV)
        out_len = len(PRIOR) + done[rows]
        drafts = torch.stack([torch.multinomial(draft_dist[k], b, replacement=True, generator=gen) for k in range(K)], 1)
        raw = torch.stack([table[(done[rows] + j).clamp(max=5)] for j in range(K + 1)], 1)
        target = _processed_probs(raw, counts, out_len, drafts)
        result = verify_block(drafts, draft_dist.expand(b, K, SV), target, generator=gen)
        take = torch.minimum(result.num_committed, 2 - done[rows])
        for k in range(2):
            sel = k < take
            committed[rows[sel], done[rows[sel]] + k] = result.tokens[sel, k]
        done[rows] += take
    observed = torch.bincount(committed[:, 0] * SV + committed[:, 1], minlength=SV * SV).double()
    expected = exact.view(-1) * N
    assert observed[expected == 0].sum() == 0  # min-new-tokens held STOP back for t1, min-p cut the tail
    keep = expected >= 5
    assert float(chisquare(observed[keep].numpy(), expected[keep].numpy() * observed[keep].sum().item()
                           / expected[keep].sum().item()).pvalue) > 1e-4
    # The penalties along the chain matter here: ignoring t1 when sampling t2 changes the law.
    independent = torch.outer(exact.sum(1), _processed_probs(
        table[None, 1:2], base[None], torch.tensor([len(PRIOR) + 1]), torch.zeros((1, 0), dtype=torch.long))[0, 0].double())
    assert (independent - exact).abs().sum() > 0.05
