"""tp_sync: full vocabulary tables from vocabulary-sharded modules, rank-0 broadcasts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sglang_dspark.sglang import tp_sync

VOCAB, PADDED, HIDDEN = 260, 320, 8


class _Sharded(nn.Module):
    """What VocabParallelEmbedding exposes: rank r's rows of the padded table."""

    def __init__(self, full: torch.Tensor, rank: int, tp_size: int) -> None:
        super().__init__()
        rows = PADDED // tp_size
        self.weight = nn.Parameter(full[rank * rows : (rank + 1) * rows].clone(), requires_grad=False)
        self.tp_size = tp_size
        self.enable_tp = True
        self.num_embeddings = self.org_vocab_size = VOCAB
        self.num_embeddings_padded = PADDED


class _FakeGroup:
    """All-gather over the shards of every simulated rank, as GroupCoordinator.all_gather(dim=0)."""

    def __init__(self, shards: list[torch.Tensor]) -> None:
        self.shards = shards

    def all_gather(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        assert dim == 0
        return torch.cat(self.shards, dim=0)


def test_unsharded_module_returns_its_own_rows():
    emb = nn.Embedding(PADDED, HIDDEN)
    w = tp_sync.full_vocab_weight(emb, VOCAB)
    assert w.shape == (VOCAB, HIDDEN) and w.data_ptr() == emb.weight.data_ptr()


def test_sharded_module_gathers_the_full_table(monkeypatch):
    full = torch.randn(PADDED, HIDDEN)
    ranks = [_Sharded(full, r, 2) for r in range(2)]
    monkeypatch.setattr(tp_sync, "_vocab_group", lambda m: _FakeGroup([x.weight for x in ranks]))
    for module in ranks:
        assert torch.equal(tp_sync.full_vocab_weight(module, VOCAB), full[:VOCAB])


def test_added_vocabulary_is_refused(monkeypatch):
    module = _Sharded(torch.randn(PADDED, HIDDEN), 0, 2)
    module.num_embeddings = VOCAB + 4
    with pytest.raises(RuntimeError, match="added"):
        tp_sync.full_vocab_weight(module, VOCAB)


def test_broadcast_is_a_no_op_at_tp_1():
    t = torch.arange(4)
    tp_sync.broadcast_from_first_rank(t)
    assert t.tolist() == [0, 1, 2, 3]


def test_world_size_and_rank_without_a_group_are_single_process():
    # Real SGLang: no TP group is initialised in this process (get_tp_group asserts).
    assert tp_sync.tp_world_size() == 1
    assert tp_sync.tp_rank() == 0


def test_world_size_and_rank_come_from_sglangs_tp_group(monkeypatch):
    import sglang.srt.distributed as dist

    monkeypatch.setattr(dist, "get_tp_group", lambda: SimpleNamespace(world_size=4, rank_in_group=3))
    assert tp_sync.tp_world_size() == 4
    assert tp_sync.tp_rank() == 3


def test_broadcast_uses_rank_0_of_the_tp_group(monkeypatch):
    calls = []
    group = SimpleNamespace(
        world_size=2, rank_in_group=1, broadcast=lambda t, src: calls.append((t, src)) or t.fill_(7)
    )
    import sglang.srt.distributed as dist

    monkeypatch.setattr(dist, "get_tp_group", lambda: group)
    a, b = torch.zeros(3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long)
    tp_sync.broadcast_from_first_rank(a, b)
    assert [src for _, src in calls] == [0, 0]
    assert a.tolist() == [7, 7, 7] and b.tolist() == [[7, 7], [7, 7]]
    with pytest.raises(ValueError, match="contiguous"):
        tp_sync.broadcast_from_first_rank(torch.zeros(4, 4)[:, 0])
