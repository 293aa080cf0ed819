"""The DSpark loss against a hand computation (DeepSpec ``deepspec/modeling/dspark/loss.py``)."""

from __future__ import annotations

import math

import pytest
import torch

from sglang_dspark.train.loss import dspark_loss, position_weights


def _softmax(row):
    m = max(row)
    e = [math.exp(x - m) for x in row]
    s = sum(e)
    return [x / s for x in e]


def _hand_loss(draft, target, labels, mask, conf, *, gamma, alphas):
    """Plain-Python loops over blocks and positions."""
    ce_num = l1_num = conf_num = den = 0.0
    for b in range(len(draft)):
        for k in range(len(draft[b])):
            w = float(mask[b][k]) * (math.exp(-k / gamma) if gamma else 1.0)
            p_d = _softmax(draft[b][k])
            p_t = _softmax(target[b][k])
            ce = -math.log(p_d[labels[b][k]])
            l1 = sum(abs(x - y) for x, y in zip(p_d, p_t))
            a = min(max(1.0 - 0.5 * l1, 0.0), 1.0)
            z = conf[b][k]
            bce = -(a * math.log(1 / (1 + math.exp(-z))) + (1 - a) * math.log(1 - 1 / (1 + math.exp(-z))))
            ce_num += w * ce
            l1_num += w * l1
            conf_num += w * bce
            den += w
    ce = ce_num / (den + 1e-6)
    l1 = l1_num / (den + 1e-6)
    cf = conf_num / (den + 1e-6)
    return alphas[0] * ce + alphas[1] * l1 + alphas[2] * cf, ce, l1, cf


@pytest.mark.parametrize("gamma", [4.0, None])
def test_matches_hand_computation(gamma):
    gen = torch.Generator().manual_seed(0)
    blocks, K, V = 3, 4, 6
    draft = torch.randn(blocks, K, V, generator=gen) * 2
    target = torch.randn(blocks, K, V, generator=gen) * 2
    labels = torch.randint(0, V, (blocks, K), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    conf = torch.randn(blocks, K, generator=gen)
    out = dspark_loss(draft, target, labels, mask, conf, ce_alpha=0.1, l1_alpha=0.9,
                      confidence_alpha=1.0, decay_gamma=gamma)
    want, ce, l1, cf = _hand_loss(draft.tolist(), target.tolist(), labels.tolist(), mask.tolist(),
                                  conf.tolist(), gamma=gamma, alphas=(0.1, 0.9, 1.0))
    assert float(out.loss) == pytest.approx(want, rel=1e-5)
    assert float(out.ce) == pytest.approx(ce, rel=1e-5)
    assert float(out.l1) == pytest.approx(l1, rel=1e-5)
    assert float(out.confidence) == pytest.approx(cf, rel=1e-5)


def test_position_weights_decay_under_prefix_mask():
    mask = torch.tensor([[True, True, False, False]])
    w = position_weights(mask, 4.0)
    assert torch.allclose(w, torch.tensor([[1.0, math.exp(-0.25), 0.0, 0.0]]))
    assert torch.equal(position_weights(mask, None), mask.float())


def test_confidence_target_is_detached_and_metrics():
    gen = torch.Generator().manual_seed(1)
    draft = torch.randn(2, 3, 5, generator=gen, requires_grad=True)
    target = torch.randn(2, 3, 5, generator=gen)
    conf = torch.zeros(2, 3, requires_grad=True)
    labels = torch.zeros(2, 3, dtype=torch.long)
    mask = torch.ones(2, 3, dtype=torch.bool)
    # With only the confidence term, the draft logits get no gradient: c* is detached.
    out = dspark_loss(draft, target, labels, mask, conf, ce_alpha=0.0, l1_alpha=0.0,
                      confidence_alpha=1.0)
    out.loss.backward()
    assert draft.grad is None or float(draft.grad.abs().max()) == 0.0
    assert float(conf.grad.abs().max()) > 0
    # Identical distributions: acceptance 1 everywhere, tau = 1 + K.
    same = dspark_loss(target, target, labels, mask, None)
    assert torch.allclose(same.accept_rate, torch.ones(3))
    assert float(same.tau) == pytest.approx(4.0)
    assert float(same.l1) == pytest.approx(0.0, abs=1e-6)


def test_tau_counts_only_contiguous_prefix():
    # Block 0 supervised on 2 slots, block 1 on none (not counted).
    target = torch.zeros(2, 3, 4)
    draft = torch.zeros(2, 3, 4)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = dspark_loss(draft, target, torch.zeros(2, 3, dtype=torch.long), mask, None)
    assert float(out.num_blocks) == 1.0
    assert float(out.tau) == pytest.approx(3.0)
    assert out.accept_count.tolist() == [1.0, 1.0, 0.0]
