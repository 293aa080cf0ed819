"""The worker's drafter-context writes: steps that drafted nothing queue their rows, drafting flushes them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sglang_dspark.models.paged_context import PagedDrafterContext
from sglang_dspark.sglang.worker import DEFERRED_CONTEXT_ROWS, DSparkWorker
from tests.models.test_paged_context import small_drafter


@pytest.fixture
def worker(tmp_path):
    drafter = small_drafter(tmp_path, num_draft_layers=1, anchor_context_input=False)
    fallbacks = []
    # Only what _write_context reads: the pool, the drafter and the fallback counter.
    return SimpleNamespace(
        speculating=True, drafter=drafter, fallbacks=fallbacks,
        context=PagedDrafterContext.allocate(drafter, 4 * DEFERRED_CONTEXT_ROWS, device="cpu", dtype=torch.float32),
        _record_fallback=lambda stage, error: fallbacks.append((stage, error)),
    )


def _step(worker, step: int, rows: int, *, defer: bool) -> None:
    feature_size = worker.drafter.config.context_feature_size
    hidden = torch.randn(rows, feature_size, generator=torch.Generator().manual_seed(step))
    slots = torch.arange(step * rows, (step + 1) * rows)
    DSparkWorker._write_context(worker, hidden, slots, slots.clone(), defer=defer)


def test_plain_steps_queue_until_the_limit_and_a_drafting_step_writes_all(worker):
    rows = 4
    per_batch = DEFERRED_CONTEXT_ROWS // rows
    for step in range(per_batch - 1):
        _step(worker, step, rows, defer=True)
    assert worker.context.queued_rows == (per_batch - 1) * rows
    assert not worker.context.keys[0].any()
    _step(worker, per_batch - 1, rows, defer=True)  # reaches the limit: everything is written
    assert worker.context.queued_rows == 0
    written = worker.context.keys[0].abs().sum(dim=(1, 2)) > 0
    assert written[:DEFERRED_CONTEXT_ROWS].all() and not written[DEFERRED_CONTEXT_ROWS:].any()
    _step(worker, per_batch, rows, defer=True)
    _step(worker, per_batch + 1, rows, defer=False)  # a step that drafted writes the queue with its own rows
    assert worker.context.queued_rows == 0
    written = worker.context.keys[0].abs().sum(dim=(1, 2)) > 0
    assert written[: DEFERRED_CONTEXT_ROWS + 2 * rows].all()
    assert not worker.fallbacks


def test_a_stopped_drafter_queues_nothing(worker):
    worker.speculating = False
    _step(worker, 0, 4, defer=True)
    assert worker.context.queued_rows == 0 and not worker.context.keys[0].any()
