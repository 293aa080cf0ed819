"""bench.feature_probe: the bigram baseline and the MLP probes on data with a known answer."""

from __future__ import annotations

import torch

from bench.feature_probe import ProbeData, bigram_top1, train_probe
from tests.torch_threads import one_torch_thread


def _data(n: int, vocab: int, width: int, *, label_from: str) -> ProbeData:
    g = torch.Generator().manual_seed(0)
    anchors = torch.randint(0, vocab, (n,), generator=g)
    features = torch.randn(n, width, generator=g)
    if label_from == "anchor":
        labels = (anchors * 7 + 3) % vocab
    else:  # the sign pattern of the first features: invisible to a bigram
        labels = (features[:, :3] > 0).long() @ torch.tensor([1, 2, 4])
    heldout = torch.arange(n) % 5 == 0
    return ProbeData(features.bfloat16(), anchors, labels, heldout)


def test_bigram_table_is_exact_on_a_deterministic_successor_and_blind_to_features():
    assert bigram_top1(_data(2000, 16, 8, label_from="anchor"), 16) == 1.0
    assert bigram_top1(_data(2000, 16, 8, label_from="features"), 16) < 0.35


def test_the_feature_probe_reads_what_the_embedding_probe_cannot():
    vocab, hidden = 16, 16
    data = _data(6000, vocab, 12, label_from="features")
    g = torch.Generator().manual_seed(1)
    embed = torch.randn(vocab, hidden, generator=g)
    head = torch.randn(vocab, hidden, generator=g)
    index = torch.arange(vocab)
    with one_torch_thread():
        kwargs = dict(epochs=20.0, batch_size=256, width=64, eval_every=1000, progress=False)
        with_features = train_probe(data, embed, head, index, use_features=True, **kwargs)
        embedding_only = train_probe(data, embed, head, index, use_features=False, **kwargs)
    assert with_features[-1]["heldout_top1"] > 0.8
    assert embedding_only[-1]["heldout_top1"] < 0.35
