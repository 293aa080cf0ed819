"""sglang-dspark's step metrics around SGLang's own DSPARK worker.

When SGLang's ``DSparkWorkerV2`` serves DSPARK (see :mod:`.serving_choice`),
``--enable-metrics`` still exports ``sglang_dspark:accept_length`` and
``sglang_dspark:verify_tokens_per_step``, read from the result of each decode
step. On a GPU the result's tensors are still being computed when the worker
returns: they are copied to the host without blocking and observed on a later
step, once their copy has finished, so the wrapper never synchronises the
device. Prefill steps and results without ``accept_lens`` are not observed.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch


class _PendingStep:
    """A decode step's accept and verify lengths on their way to the host."""

    def __init__(self, accept_lens: torch.Tensor, verify_lens: torch.Tensor | None) -> None:
        self.accept_lens = accept_lens.to("cpu", non_blocking=True)
        self.verify_lens = None if verify_lens is None else verify_lens.to("cpu", non_blocking=True)
        self.event = None
        if accept_lens.is_cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def ready(self) -> bool:
        return self.event is None or self.event.query()


class StepObserver:
    """Feeds SGLang worker results into :class:`~.metrics.DSparkMetrics` without a device sync."""

    def __init__(self, metrics) -> None:
        self.metrics = metrics
        self._pending: deque[_PendingStep] = deque()

    def observe(self, result: Any) -> None:
        """Queue ``result``'s lengths (a decode step's), then observe every queued step whose copy finished."""
        accept_lens = getattr(result, "accept_lens", None)
        if isinstance(accept_lens, torch.Tensor) and accept_lens.numel():
            self._pending.append(_PendingStep(accept_lens, getattr(result, "cap_lens", None)))
        while self._pending and self._pending[0].ready():
            step = self._pending.popleft()
            # SGLang's verify_lens count the verified positions, root included.
            verified = int(step.verify_lens.sum()) if step.verify_lens is not None else None
            self.metrics.observe_accepts([int(n) for n in step.accept_lens.tolist()], verified)


def with_step_metrics(worker_cls: type) -> type:
    """A subclass of ``worker_cls`` (SGLang's DSPARK worker) that exports sglang-dspark's step metrics."""

    class ObservedWorker(worker_cls):
        def __init__(self, server_args, *args, **kwargs) -> None:
            super().__init__(server_args, *args, **kwargs)
            from sglang_dspark.sglang.metrics import DSparkMetrics

            self._step_observer = StepObserver(DSparkMetrics())

        def forward_batch_generation(self, *args, **kwargs):
            result = super().forward_batch_generation(*args, **kwargs)
            self._step_observer.observe(result)
            return result

    ObservedWorker.__name__ = ObservedWorker.__qualname__ = f"Observed{worker_cls.__name__}"
    ObservedWorker.__module__ = __name__
    return ObservedWorker
