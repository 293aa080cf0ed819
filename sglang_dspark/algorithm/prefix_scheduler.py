"""Hardware-aware prefix scheduler: how many drafted tokens each request verifies.

Request ``r`` verifying ``L_r`` drafts commits ``1 + sum_{j<=L_r} a_{r,j}``
tokens in expectation, where ``a_{r,j} = prod_{k<=j} c_{r,k}`` is the survival
probability of its length-``j`` prefix. The step verifies ``sum_r (1 + L_r)``
tokens and runs at ``SPS`` of that total, so the expected throughput is::

    Theta = (sum_r (1 + sum_{j<=L_r} a_{r,j})) * SPS(sum_r (1 + L_r))

For a fixed total the best choice is the ``m`` largest survival probabilities
over all requests (``a`` is non-increasing in ``j``, so with ties broken by
position the chosen set is prefix-closed per request). The scheduler therefore
sorts once, prefix-sums, evaluates ``Theta`` for every ``m`` and keeps the
argmax. Unlike stopping at the first drop of ``Theta`` this is exact for any
SPS curve, and it costs one sort of ``B * K`` values.
"""

from __future__ import annotations

import functools
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from sglang_dspark.algorithm.sps_table import SpsTable

__all__ = [
    "DelayedPrefixScheduler",
    "DelayedSchedulerConfig",
    "PrefixPlan",
    "plan_prefixes",
    "schedule_prefixes",
]

StepsPerSecond = Callable[[int], float]


@dataclass(frozen=True, eq=False)
class PrefixPlan:
    """A scheduling decision and its predicted value, for logging.

    Attributes:
        lengths: ``LongTensor[B]`` verify length per request, in ``0..K``.
        expected_tokens: expected committed tokens this step,
            ``sum_r (1 + sum_{j<=L_r} a_{r,j})``.
        total_verify_tokens: tokens the step verifies, ``sum_r (1 + L_r)``.
        expected_throughput: ``expected_tokens * SPS(total_verify_tokens)``,
            in tokens per second when the SPS curve is measured.
    """

    lengths: torch.Tensor
    expected_tokens: float
    total_verify_tokens: int
    expected_throughput: float


def _sps_values(steps_per_second: StepsPerSecond, first: int, count: int, device: torch.device) -> torch.Tensor:
    """``SPS(first + m)`` for ``m = 0..count-1`` as a float64 tensor on ``device``."""
    if isinstance(steps_per_second, SpsTable):
        return _table_values(steps_per_second, first, count, device)
    values = [float(steps_per_second(n)) for n in range(first, first + count)]
    return torch.tensor(values, dtype=torch.float64).to(device, non_blocking=True)


@functools.lru_cache(maxsize=256)
def _table_values(table: SpsTable, first: int, count: int, device: torch.device) -> torch.Tensor:
    # The curve depends only on the batch shape, which repeats from step to
    # step; caching it keeps the per-step cost to the sort and prefix sum.
    totals = torch.arange(first, first + count, dtype=torch.float64)
    return table(totals).to(device)


def _solve(
    confidence: torch.Tensor,
    steps_per_second: StepsPerSecond,
    max_verify_tokens: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (lengths, best m, expected tokens [M], throughput [M]) without host syncs."""
    if confidence.dim() != 2:
        raise ValueError(f"confidence must be [B, K], got {tuple(confidence.shape)}")
    batch, k = confidence.shape
    device = confidence.device
    max_extra = batch * k
    if max_verify_tokens is not None:
        max_extra = max(0, min(max_extra, max_verify_tokens - batch))

    c = torch.nan_to_num(confidence.detach().to(torch.float64), nan=0.0).clamp_(0.0, 1.0)
    # Stable descending sort: equal survivals keep row-major order, i.e. the
    # earlier position of a request comes first, so every top-m set is
    # prefix-closed.
    values, order = torch.sort(c.cumprod(dim=1).view(-1), descending=True, stable=True)
    expected = torch.zeros(max_extra + 1, dtype=torch.float64, device=device)
    torch.cumsum(values[:max_extra], dim=0, out=expected[1:])
    expected += batch
    throughput = expected * _sps_values(steps_per_second, batch, max_extra + 1, device)
    best = torch.argmax(throughput)  # first maximum: the smallest total on ties

    chosen = (torch.arange(max_extra, device=device) < best).long()
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    lengths.index_add_(0, order[:max_extra] // max(k, 1), chosen)
    return lengths, best, expected, throughput


def schedule_prefixes(
    confidence: torch.Tensor,
    steps_per_second: StepsPerSecond,
    *,
    max_verify_tokens: int | None = None,
) -> torch.Tensor:
    """Choose per-request verify lengths that maximise expected throughput.

    Args:
        confidence: ``[B, K]`` conditional acceptance probabilities
            ``c_{r,k}`` (position ``k`` accepted given all earlier were).
        steps_per_second: ``n -> SPS(n)`` for ``n`` tokens verified in one
            step. An :class:`SpsTable` is evaluated vectorised and cached per
            shape; any other callable is called for every candidate total.
        max_verify_tokens: bound on ``sum_r (1 + L_r)``; when ``B`` alone
            reaches it every length is 0.

    Returns:
        ``LongTensor[B]`` of verify lengths in ``0..K`` on the device of
        ``confidence``. No host synchronisation happens besides copying the
        SPS values (which depend only on the shape) to that device.
    """
    return _solve(confidence, steps_per_second, max_verify_tokens)[0]


def plan_prefixes(
    confidence: torch.Tensor,
    steps_per_second: StepsPerSecond,
    *,
    max_verify_tokens: int | None = None,
) -> PrefixPlan:
    """:func:`schedule_prefixes` plus the predicted value of the plan (syncs to read it)."""
    lengths, best, expected, throughput = _solve(confidence, steps_per_second, max_verify_tokens)
    m = int(best)
    return PrefixPlan(
        lengths=lengths,
        expected_tokens=float(expected[m]),
        total_verify_tokens=confidence.shape[0] + m,
        expected_throughput=float(throughput[m]),
    )


@dataclass(frozen=True)
class DelayedSchedulerConfig:
    """Configuration of :class:`DelayedPrefixScheduler`.

    Attributes:
        block_size: drafted positions per request (``K``).
        delay: a plan for step ``t`` uses confidences recorded at step
            ``t - delay`` or earlier. ``1`` is the synchronous scheduler (the
            drafter of step ``t - 1`` produced the block verified at ``t``);
            ``2`` lets the host plan step ``t`` while the device still runs
            step ``t - 1``.
        prior_confidence: conditional confidence assumed for every position of
            a request with no usable record, before any record exists at all.
        prior_momentum: afterwards the prior is an exponential moving average
            of the per-position mean of recorded confidences with this
            momentum (the population's recent acceptance behaviour).
        max_verify_tokens: passed to :func:`plan_prefixes`.
        max_requests: requests tracked at most; the least recently recorded
            are forgotten first (finished requests should be forgotten
            explicitly with :meth:`DelayedPrefixScheduler.forget`).
    """

    block_size: int
    delay: int = 2
    prior_confidence: float = 0.5
    prior_momentum: float = 0.9
    max_verify_tokens: int | None = None
    max_requests: int = 65536

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        if self.delay < 1:
            raise ValueError(f"delay must be >= 1, got {self.delay}")
        if not 0.0 <= self.prior_confidence <= 1.0:
            raise ValueError(f"prior_confidence must be in [0, 1], got {self.prior_confidence}")
        if not 0.0 <= self.prior_momentum < 1.0:
            raise ValueError(f"prior_momentum must be in [0, 1), got {self.prior_momentum}")
        if self.max_verify_tokens is not None and self.max_verify_tokens < 1:
            raise ValueError(f"max_verify_tokens must be >= 1, got {self.max_verify_tokens}")
        if self.max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {self.max_requests}")


class DelayedPrefixScheduler:
    """Prefix scheduler fed with confidences recorded a few steps earlier.

    The production loop calls :meth:`plan` for the step about to launch, then
    :meth:`record` with the confidences that step's drafter produced once they
    are on the host, and :meth:`forget` for finished requests::

        plan = scheduler.plan(request_ids)       # step t
        ...                                      # launch step t
        scheduler.record(request_ids, conf_cpu)  # confidences of step t

    Records are keyed by request id and tagged with the step they belong to;
    :meth:`plan` for step ``t`` uses each request's newest record from step
    ``t - delay`` or earlier, and the prior (see
    :class:`DelayedSchedulerConfig`) for requests without one. Memory is
    bounded: ``delay + 1`` rows per request, ``max_requests`` requests.
    """

    def __init__(self, config: DelayedSchedulerConfig, steps_per_second: StepsPerSecond) -> None:
        self.config = config
        self.steps_per_second = steps_per_second
        self._step = -1  # index of the most recently planned step
        self._records: OrderedDict[Hashable, deque[tuple[int, torch.Tensor]]] = OrderedDict()
        self._prior = torch.full((config.block_size,), config.prior_confidence, dtype=torch.float64)
        self._has_prior_data = False

    @property
    def step(self) -> int:
        """Index of the most recently planned step (``-1`` before the first plan)."""
        return self._step

    @property
    def prior(self) -> torch.Tensor:
        """Per-position conditional confidence used for requests without a usable record."""
        return self._prior.clone()

    def __len__(self) -> int:
        return len(self._records)

    def confidence_for(self, request_ids: Sequence[Hashable], step: int | None = None) -> torch.Tensor:
        """``[B, K]`` float64 confidences that a plan for ``step`` would use."""
        step = self._step + 1 if step is None else step
        usable_step = step - self.config.delay
        rows = []
        for rid in request_ids:
            row = self._prior
            for tag, values in reversed(self._records.get(rid, ())):
                if tag <= usable_step:
                    row = values
                    break
            rows.append(row)
        if not rows:
            return self._prior.new_zeros((0, self.config.block_size))
        return torch.stack(rows)

    def plan(self, request_ids: Sequence[Hashable]) -> PrefixPlan:
        """Advance to the next step and plan its verify lengths."""
        self._step += 1
        confidence = self.confidence_for(request_ids, self._step)
        return plan_prefixes(confidence, self.steps_per_second, max_verify_tokens=self.config.max_verify_tokens)

    def record(self, request_ids: Sequence[Hashable], confidence: torch.Tensor) -> None:
        """Store ``[B, K]`` confidences produced by the most recently planned step.

        ``confidence`` should already be on the host (copy it asynchronously);
        a device tensor is copied here, which waits for the device.
        """
        if confidence.shape != (len(request_ids), self.config.block_size):
            raise ValueError(
                f"confidence must be [{len(request_ids)}, {self.config.block_size}], "
                f"got {tuple(confidence.shape)}"
            )
        # Copy: the caller may reuse its (pinned) buffer for the next step.
        confidence = confidence.detach().to("cpu", torch.float64, copy=True)
        for rid, row in zip(request_ids, confidence.unbind(0)):
            history = self._records.get(rid)
            if history is None:
                history = self._records[rid] = deque(maxlen=self.config.delay + 1)
            else:
                self._records.move_to_end(rid)
            if history and history[-1][0] == self._step:
                history.pop()
            history.append((self._step, row))
        while len(self._records) > self.config.max_requests:
            self._records.popitem(last=False)

        if len(request_ids):
            mean = confidence.mean(dim=0)
            if self._has_prior_data:
                m = self.config.prior_momentum
                self._prior = m * self._prior + (1.0 - m) * mean
            else:
                self._prior = mean
                self._has_prior_data = True

    def forget(self, request_ids: Sequence[Hashable]) -> None:
        """Drop the records of finished requests (unknown ids are ignored)."""
        for rid in request_ids:
            self._records.pop(rid, None)
