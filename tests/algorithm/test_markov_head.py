"""Markov heads against hand computations, and their DeepSpec state-dict names."""

from __future__ import annotations

import pytest
import torch

from sglang_dspark.algorithm.config import DSparkConfig
from sglang_dspark.algorithm.confidence_head import (
    ConfidenceHead,
    apply_sts,
    survival_probabilities,
)
from sglang_dspark.algorithm.markov_head import (
    GatedMarkovHead,
    RNNMarkovHead,
    VanillaMarkovHead,
    build_markov_head,
)

V, R, H = 11, 3, 5


def config(head_type: str, **kw) -> DSparkConfig:
    return DSparkConfig(
        block_size=4,
        mask_token_id=0,
        target_layer_ids=(1,),
        markov_rank=R,
        markov_head_type=head_type,
        hidden_size=H,
        vocab_size=V,
        num_draft_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=4,
        intermediate_size=8,
        **kw,
    )


@pytest.mark.parametrize(
    ("head_type", "cls", "keys"),
    [
        ("vanilla", VanillaMarkovHead, {"markov_w1.weight": (V, R), "markov_w2.weight": (V, R)}),
        (
            "gated",
            GatedMarkovHead,
            {
                "markov_w1.weight": (V, R),
                "markov_w2.weight": (V, R),
                "gate_proj.weight": (R, H + R),
                "gate_proj.bias": (R,),
            },
        ),
        (
            "rnn",
            RNNMarkovHead,
            {
                "markov_w1.weight": (V, R),
                "markov_w2.weight": (V, R),
                "joint_proj.weight": (3 * R, 2 * R + H),
                "joint_proj.bias": (3 * R,),
            },
        ),
    ],
)
def test_factory_and_deepspec_parameter_names(head_type, cls, keys):
    head = build_markov_head(config(head_type))
    assert type(head) is cls and head.head_type == head_type
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == keys


def test_vanilla_matches_hand_computation():
    torch.manual_seed(0)
    head = build_markov_head(config("vanilla"))
    w1 = head.markov_w1.weight.detach()
    w2 = head.markov_w2.weight.detach()  # [V, R]
    prev = torch.tensor([3, 7])
    out = head.step(prev)
    for b, tok in enumerate(prev.tolist()):
        want = [sum(w2[v, j].item() * w1[tok, j].item() for j in range(R)) for v in range(V)]
        torch.testing.assert_close(out.bias[b], torch.tensor(want), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out.prev_features[b], w1[tok])
    assert out.state is None


def test_gated_matches_formula():
    torch.manual_seed(1)
    head = build_markov_head(config("gated"))
    prev = torch.tensor([2, 9, 4])
    hidden = torch.randn(3, H)
    out = head.step(prev, hidden)
    e = head.markov_w1.weight[prev]
    gate = torch.sigmoid(
        torch.cat([hidden, e], -1) @ head.gate_proj.weight.T + head.gate_proj.bias
    )
    torch.testing.assert_close(out.bias, (gate * e) @ head.markov_w2.weight.T)
    torch.testing.assert_close(out.prev_features, e)
    with pytest.raises(ValueError, match="needs the drafter hidden state"):
        head.step(prev)


def test_rnn_carries_state_and_teacher_forcing_matches_steps():
    torch.manual_seed(2)
    head = build_markov_head(config("rnn"))
    prev = torch.tensor([[1, 5, 6, 2], [3, 3, 0, 10]])
    hidden = torch.randn(2, 4, H)
    state = head.init_state(2, device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(state, torch.zeros(2, R))
    biases = []
    w, bias = head.joint_proj.weight, head.joint_proj.bias
    for k in range(4):
        e = head.markov_w1.weight[prev[:, k]]
        a, c, o = (torch.cat([state, e, hidden[:, k]], -1) @ w.T + bias).chunk(3, -1)
        g = torch.sigmoid(a)
        state = g * state + (1 - g) * torch.tanh(c)
        biases.append(torch.tanh(o) @ head.markov_w2.weight.T)
    want = torch.stack(biases, 1)
    torch.testing.assert_close(head.teacher_forced_bias(prev, hidden), want)
    # The state matters: the same (token, hidden) at step 2 differs from step 0.
    step0 = head.step(prev[:, 2], hidden[:, 2], None).bias
    assert not torch.allclose(step0, want[:, 2])


def test_vanilla_teacher_forced_matches_w2_w1():
    torch.manual_seed(3)
    head = build_markov_head(config("vanilla"))
    prev = torch.randint(0, V, (2, 3, 4))
    want = head.markov_w1.weight[prev] @ head.markov_w2.weight.T
    torch.testing.assert_close(head.teacher_forced_bias(prev), want)


def test_confidence_head_input_and_math():
    torch.manual_seed(4)
    cfg = config("vanilla")
    head = ConfidenceHead.from_config(cfg)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {
        "proj.weight": (1, H + R),
        "proj.bias": (1,),
    }
    hidden, feats = torch.randn(2, 4, H), torch.randn(2, 4, R)
    logits = head(hidden, feats)
    want = torch.cat([hidden, feats], -1) @ head.proj.weight[0] + head.proj.bias[0]
    torch.testing.assert_close(logits, want)
    assert logits.dtype == torch.float32 and logits.shape == (2, 4)
    with pytest.raises(ValueError, match="needs the Markov features"):
        head(hidden)
    plain = ConfidenceHead.from_config(config("vanilla", confidence_head_with_markov=False))
    assert plain.proj.weight.shape == (1, H) and plain(hidden).shape == (2, 4)


def test_sts_and_survival():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    temps = torch.tensor([2.0, 1.0, 0.5])
    torch.testing.assert_close(apply_sts(logits, temps), torch.sigmoid(logits / temps))
    torch.testing.assert_close(apply_sts(logits, None), torch.sigmoid(logits))
    c = torch.tensor([[0.9, 0.5, 0.2]])
    torch.testing.assert_close(survival_probabilities(c), torch.tensor([[0.9, 0.45, 0.09]]))
    with pytest.raises(ValueError, match="STS temperature per draft position"):
        apply_sts(logits, temps[:2])
