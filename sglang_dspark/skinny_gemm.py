"""Linear layers of a few rows on CPU, computed as ``(W @ xᵀ)ᵀ``.

A decode step multiplies one row per request, a verify step a few (the anchor
and its drafts). ``F.linear`` hands such ``[M, K] x [K, N]`` products to the
BLAS as a gemv (M = 1) or a gemm with a tiny M, and on the 2-core AMD EPYC
development box with torch's MKL both paths read the weights far below the
memory bandwidth, with a strong and irregular dependence on M (an LM head of
SmolLM2-135M took 10 ms at M = 1, 22 ms at M = 2, 33 ms at M = 3, 16 ms at
M = 4: bench/RESULTS.md). The same product written with the weight as the
left operand, ``W [N, K] @ xᵀ [K, M]``, streams the weight once and took
3-8 ms for M = 1..8. One row is padded to two, since M = 1 would take the
gemv path again.

Whether this pays is a property of the CPU and the BLAS, so it is measured,
not assumed: :func:`measure_skinny_gemm` times both on copies of one of the
model's weights, swept like a forward sweeps its layers; the serving glue
(``sglang_dspark/sglang/cpu_linear.py``) takes it only where it measured
clearly faster. The result differs from ``F.linear``
only in fp32 summation order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Row counts the skinny form serves: a verify chain (1 + drafts) or a small decode batch.
# Above this the two forms were mixed here (at M = 13 the skinny one was slower).
SKINNY_MAX_ROWS = 8
_MEASURED_ROWS = (1, 2, 3, 4, 8)
# A forward streams its weights from memory; one weight timed again and again
# sits in the cache (the 2-core box's L3 is 32 MiB), which the BLAS handles
# differently. Copies of this many bytes in all are swept instead.
_SWEEP_BYTES = 64 * 2**20
# A row count counts as slower only beyond this ratio; a best time counts as
# confirmed when the second best is within _CONFIRMED of it.
_NOISE = 1.1
_CONFIRMED = 1.15
# Ten seconds was too short: a server started beside another one (a plain and a
# DSPARK server, as the benchmarks start them) measured during the other's
# warm-up, every round was slowed 40-100x, and the unconfirmed minima limited
# the skinny form to one row (F.linear then made decode steps of 2-4 requests
# 2x slower; bench/RESULTS.md, eleventh session). Waiting for the load to pass
# costs start-up time only when the CPU is busy.
_MAX_MEASURE_SECONDS = 45.0
# Rounds and seconds before minima that stopped falling count as stable without a second matching time.
_SETTLE_ROUNDS = 20
_SETTLE_SECONDS = 10.0
# Agreeing times cannot tell steady load from the machine (a DSPARK server once
# measured one row at 76 ms and two at 2.8 ms, both "confirmed"), so the process's
# own CPU time is read as well: below this share of the measuring threads' wall
# time, other processes had the cores and the measurement is marked as taken
# under load (the serving glue measures again later).
_LOADED_CPU_SHARE = 0.8


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed as ``(weight @ xᵀ)ᵀ`` (contiguous, same shape and dtype).

    Args:
        x: ``[..., K]`` activations; the product is taken over ``x.reshape(-1, K)``.
        weight: ``[N, K]`` contiguous weight.
        bias: optional ``[N]``.
    """
    rows = x.reshape(-1, x.shape[-1])
    single = rows.shape[0] == 1
    if single:
        rows = rows.expand(2, -1).contiguous()
    out = torch.mm(weight, rows.t()).t()
    out = out[:1].contiguous() if single else out.contiguous()
    if bias is not None:
        out += bias
    return out.reshape(*x.shape[:-1], weight.shape[0])


@dataclass(frozen=True)
class SkinnyGemmMeasurement:
    """Both forms timed over copies of one weight: the basis of the CPU linear choice."""

    shape: tuple[int, int]
    copies: int
    dtype: str
    rows: tuple[int, ...]
    torch_ms: tuple[float, ...]
    skinny_ms: tuple[float, ...]
    stable: bool = True
    cpu_share: float = 1.0

    def __post_init__(self) -> None:
        if not (len(self.rows) == len(self.torch_ms) == len(self.skinny_ms) > 0):
            raise ValueError("rows, torch_ms and skinny_ms must be non-empty and of one length")

    @property
    def max_rows(self) -> int:
        """The most rows up to which the skinny form was never slower (0: slower already at the fewest).

        "Slower" means by more than timing noise (``_NOISE``) at that row count.
        """
        served = 0
        for m, t, s in sorted(zip(self.rows, self.torch_ms, self.skinny_ms)):
            if s > t * _NOISE:
                break
            served = m
        return served

    @property
    def under_load(self) -> bool:
        """Whether other processes loaded the CPU while this was measured (its minima may be theirs)."""
        return not self.stable or self.cpu_share < _LOADED_CPU_SHARE

    @property
    def speedup(self) -> float:
        """Total ``F.linear`` time over total skinny time, over the row counts up to :attr:`max_rows`."""
        kept = [(t, s) for m, t, s in zip(self.rows, self.torch_ms, self.skinny_ms) if m <= self.max_rows]
        if not kept:
            return min(t / max(s, 1e-9) for t, s in zip(self.torch_ms, self.skinny_ms))
        return sum(t for t, _ in kept) / max(sum(s for _, s in kept), 1e-9)

    def summary(self) -> str:
        per_rows = ", ".join(f"M={m}: {t:.2f}/{s:.2f} ms" for m, t, s in zip(self.rows, self.torch_ms, self.skinny_ms))
        return (f"{self.speedup:.2f}x for 1-{self.max_rows} rows on {self.copies} copies of a [{self.shape[0]}x{self.shape[1]}] "
                f"{self.dtype} weight (F.linear/skinny per sweep {per_rows}"
                f"{self._load_note()})")

    def _load_note(self) -> str:
        if not self.stable:
            return "; unstable: other processes loaded the CPU"
        if self.under_load:
            return f"; under load: this process had {self.cpu_share:.0%} of the CPU time of its threads"
        return ""


def _stable_minima(sweeps: list, *, min_rounds: int, max_seconds: float, tolerance: float) -> tuple[list[float], bool]:
    """Best time (ms) of each callable, timed in rounds that visit every one in turn.

    Rounds continue until the minima are stable or ``max_seconds`` have
    passed. Stable: each callable's two best times agree within ``tolerance``
    (a minimum that load from other processes did not set), or, after at least
    ``_SETTLE_ROUNDS`` rounds and ``_SETTLE_SECONDS``, no minimum has improved
    by more than ``tolerance`` in the later half of the rounds (a lone fast
    outlier that no second time matches would otherwise keep the rounds going
    to the limit, while minima set by load that has passed keep falling).
    Returns the minima and whether they were stable.
    """
    for fn in sweeps:
        fn()
    samples: list[list[float]] = [[] for _ in sweeps]
    last_gain = [0] * len(sweeps)  # round in which each minimum last fell by more than ``tolerance``
    began = time.monotonic()
    deadline = began + max_seconds
    rounds = 0
    while True:
        rounds += 1
        for i, fn in enumerate(sweeps):
            start = time.perf_counter()
            fn()
            ms = (time.perf_counter() - start) * 1000
            if not samples[i] or ms * tolerance < min(samples[i]):
                last_gain[i] = rounds
            samples[i].append(ms)
        best_two = [sorted(x)[:2] for x in samples]
        confirmed = all(len(b) > 1 and b[1] <= b[0] * tolerance for b in best_two)
        settled = (rounds >= _SETTLE_ROUNDS and max(last_gain) <= rounds // 2
                   and time.monotonic() - began >= _SETTLE_SECONDS)
        if rounds >= min_rounds and (confirmed or settled or time.monotonic() > deadline):
            return [b[0] for b in best_two], confirmed or settled


@torch.inference_mode()
def measure_skinny_gemm(weight: torch.Tensor, *, rows: tuple[int, ...] = _MEASURED_ROWS, min_rounds: int = 3,
                        max_seconds: float = _MAX_MEASURE_SECONDS,
                        sweep_bytes: int = _SWEEP_BYTES) -> SkinnyGemmMeasurement:
    """Time ``F.linear`` against :func:`skinny_linear` for each row count.

    Each timing is a sweep over ``sweep_bytes / weight bytes`` copies of
    ``weight`` (at least one), so that the weights come from memory as in a
    forward, not from the cache. All (rows, form) sweeps are timed in rounds,
    so that load from other processes (a plain and a speculative server
    starting together, say) hits both forms alike, until the minima are stable
    (:func:`_stable_minima`) or ``max_seconds`` have passed.
    Rounds under load are long and their times useless, so the limit is set to
    outlast another server's start-up (see ``_MAX_MEASURE_SECONDS``).
    """
    if weight.dim() != 2 or weight.device.type != "cpu":
        raise ValueError(f"measure_skinny_gemm takes a 2-D CPU weight, got {tuple(weight.shape)} on {weight.device}")
    copies = max(1, sweep_bytes // max(weight.numel() * weight.element_size(), 1))
    weights = [weight.detach().clone() for _ in range(copies)]
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(m, weight.shape[1], generator=generator).to(weight.dtype) for m in rows]

    def sweep(form, x):
        return lambda: [form(x, w) for w in weights]

    sweeps = [sweep(form, x) for x in inputs for form in (F.linear, skinny_linear)]
    wall, cpu = time.perf_counter(), time.process_time()
    minima, stable = _stable_minima(sweeps, min_rounds=min_rounds, max_seconds=max_seconds,
                                    tolerance=_CONFIRMED)
    share = (time.process_time() - cpu) / max((time.perf_counter() - wall) * torch.get_num_threads(), 1e-9)
    return SkinnyGemmMeasurement(tuple(weight.shape), copies, str(weight.dtype).removeprefix("torch."),
                                 tuple(rows), tuple(minima[0::2]), _same_work_same_time(rows, minima[1::2]),
                                 stable, min(share, 1.0))


def _same_work_same_time(rows: tuple[int, ...], skinny_ms: list[float]) -> tuple[float, ...]:
    """One row runs as two (:func:`skinny_linear` pads it): both counts get the better of their two times.

    A server measuring beside another one's start-up once saw 76 ms for one row and 2.8 ms for two
    (bench/RESULTS.md, eleventh session): load that hit one of two identical computations.
    """
    times = list(skinny_ms)
    if 1 in rows and 2 in rows:
        i, j = rows.index(1), rows.index(2)
        times[i] = times[j] = min(times[i], times[j])
    return tuple(times)
