"""Prometheus metrics of the DSPARK worker (``--enable-metrics``).

Created lazily inside the scheduler process, after SGLang has set
``PROMETHEUS_MULTIPROC_DIR``, so they appear on the server's ``/metrics``.
"""

from __future__ import annotations

import torch

ACCEPT_BUCKETS = tuple(float(n) for n in range(1, 18))
TIME_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class RunningCalibrationError:
    """Expected calibration error of predicted prefix survival, accumulated over steps.

    Each verified position j of a request contributes its predicted survival
    probability ``a_j`` and the outcome "the first j drafts were accepted".
    """

    def __init__(self, n_bins: int = 15) -> None:
        self.n_bins = n_bins
        self.prob_sum = torch.zeros(n_bins, dtype=torch.float64)
        self.hit_sum = torch.zeros(n_bins, dtype=torch.float64)
        self.count = torch.zeros(n_bins, dtype=torch.float64)

    def update(self, survival: torch.Tensor, verify_lens: torch.Tensor, num_accepted: torch.Tensor) -> None:
        """``survival`` ``[B, K]``; positions ``j < verify_lens[b]`` were verified."""
        survival = survival.detach().float().cpu()
        cols = torch.arange(survival.shape[1])[None, :]
        verified = cols < verify_lens.cpu()[:, None]
        hits = (cols < num_accepted.cpu()[:, None]).double()
        probs = survival[verified].double()
        bins = (probs * self.n_bins).long().clamp_(0, self.n_bins - 1)
        self.prob_sum.index_add_(0, bins, probs)
        self.hit_sum.index_add_(0, bins, hits[verified])
        self.count.index_add_(0, bins, torch.ones_like(probs))

    @property
    def value(self) -> float:
        total = self.count.sum()
        if total == 0:
            return 0.0
        gap = (self.prob_sum - self.hit_sum).abs()
        return float(gap.sum() / total)


class DSparkMetrics:
    """Histograms of accepted length, verified tokens, draft and schedule time; ECE gauge."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.accept_length = Histogram(
            "sglang_dspark:accept_length",
            "Tokens committed per request per verify step (accepted drafts + 1).",
            buckets=ACCEPT_BUCKETS,
        )
        self.verify_tokens = Histogram(
            "sglang_dspark:verify_tokens_per_step",
            "Tokens the target verified in one step, summed over the batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.draft_seconds = Histogram(
            "sglang_dspark:draft_seconds", "Drafter time per step.", buckets=TIME_BUCKETS
        )
        self.schedule_seconds = Histogram(
            "sglang_dspark:schedule_seconds", "Prefix-scheduler time per step.", buckets=TIME_BUCKETS
        )
        self.overhead_seconds = Histogram(
            "sglang_dspark:overhead_seconds",
            "Prefix scheduler plus the worker's bookkeeping per step (neither drafting nor the "
            "target forward).",
            buckets=TIME_BUCKETS,
        )
        self.step_seconds = Histogram(
            "sglang_dspark:step_seconds", "Whole decode step of the worker.", buckets=TIME_BUCKETS
        )
        self.calibration_error = Gauge(
            "sglang_dspark:confidence_calibration_error",
            "Running ECE of the confidence head's prefix-survival predictions.",
            multiprocess_mode="mostrecent",
        )
        self.fallback_steps = Counter(
            "sglang_dspark:fallback_steps",
            "Decode steps that ran without speculation because the drafter failed.",
        )
        self._ece = RunningCalibrationError()

    def observe_accepts(self, accept_lens: list[int], verified_tokens: int | None) -> None:
        """A step's committed tokens per request and, when known, the tokens the target verified in it."""
        for n in accept_lens:
            self.accept_length.observe(n)
        if verified_tokens is not None:
            self.verify_tokens.observe(verified_tokens)

    def observe_step(
        self,
        *,
        accept_lens: list[int],
        verify_lens: list[int],
        draft_seconds: float,
        schedule_seconds: float,
        overhead_seconds: float,
        step_seconds: float,
        survival: torch.Tensor | None,
        verify_lens_tensor: torch.Tensor,
        num_accepted: torch.Tensor,
    ) -> None:
        self.observe_accepts(accept_lens, sum(v + 1 for v in verify_lens))
        self.draft_seconds.observe(draft_seconds)
        self.schedule_seconds.observe(schedule_seconds)
        self.overhead_seconds.observe(overhead_seconds)
        self.step_seconds.observe(step_seconds)
        if survival is not None:
            self._ece.update(survival, verify_lens_tensor, num_accepted)
            self.calibration_error.set(self._ece.value)
