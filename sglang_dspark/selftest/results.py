"""One line of the selftest's table: a check, its case, its verdict and its numbers."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping


class Status(str, Enum):
    """Verdict of one check."""

    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True)
class Timing:
    """Median time of a MoE implementation on one case, and the weight bandwidth it implies.

    Attributes:
        median_ms: median of the timed calls, milliseconds.
        repeats: timed calls behind the median.
        weight_bytes: packed weights and scales of the experts the batch routes to.
        peak_bytes_per_s: the device's HBM peak, if known.
    """

    median_ms: float
    repeats: int
    weight_bytes: int
    peak_bytes_per_s: float | None

    @property
    def bytes_per_s(self) -> float:
        """Effective weight bandwidth: bytes touched / time."""
        return self.weight_bytes / (self.median_ms * 1e-3)

    @property
    def peak_share(self) -> float | None:
        """:attr:`bytes_per_s` as a fraction of the HBM peak."""
        return None if not self.peak_bytes_per_s else self.bytes_per_s / self.peak_bytes_per_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the derived numbers."""
        return {
            "median_ms": self.median_ms,
            "repeats": self.repeats,
            "weight_bytes": self.weight_bytes,
            "gb_per_s": self.bytes_per_s / 1e9,
            "peak_share": self.peak_share,
        }


@dataclass(frozen=True)
class CheckResult:
    """One table line.

    Attributes:
        check: what was checked (``"triton moe"``, ``"draft-verify"``, ...).
        case: which case (``"T=8: 42 experts"``, ...).
        status: PASS, FAIL or SKIP.
        error: relative error against the reference, where one applies.
        bound: the pass bound on ``error`` (0 means exact).
        timing: time and bandwidth of MoE implementations.
        tokens: T of a MoE case.
        note: the reason of a FAIL or SKIP, or the measured numbers of a check without an error.
        data: more numbers for the JSON file.
    """

    check: str
    case: str
    status: Status
    error: float | None = None
    bound: float | None = None
    timing: Timing | None = None
    tokens: int | None = None
    note: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Whether this line fails the selftest."""
        return self.status is Status.FAIL

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "check": self.check,
            "case": self.case,
            "status": self.status.value,
            "error": self.error,
            "bound": self.bound,
            "tokens": self.tokens,
            "timing": None if self.timing is None else self.timing.to_dict(),
            "note": self.note,
            "data": dict(self.data),
        }


def judged(check: str, case: str, error: float, bound: float, **more: Any) -> CheckResult:
    """A PASS when ``error <= bound`` (NaN fails), else a FAIL naming the bound."""
    ok = error <= bound
    note = more.pop("note", "")
    if not ok:
        note = f"error {error:.3g} > bound {bound:.3g}" + (f"; {note}" if note else "")
    return CheckResult(check, case, Status.PASS if ok else Status.FAIL, error=error, bound=bound, note=note, **more)


@dataclass(frozen=True)
class SelftestReport:
    """Everything one run found.

    Attributes:
        title: first line (command, version, device kind, plan).
        header: context lines (device, packages, MoE layer, serving choice, notes).
        results: the table's lines, in run order.
        seconds: wall time of the run.
        context: the same context as data, for the JSON file.
    """

    title: str
    header: tuple[str, ...]
    results: tuple[CheckResult, ...]
    seconds: float
    context: Mapping[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """No line failed."""
        return not any(r.failed for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 when every correctness check passed, 1 otherwise."""
        return 0 if self.passed else 1

    def counts(self) -> dict[str, int]:
        """Lines per status."""
        return {s.value: sum(r.status is s for r in self.results) for s in Status}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "title": self.title,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "seconds": self.seconds,
            "header": list(self.header),
            **dict(self.context),
            "results": [r.to_dict() for r in self.results],
        }


def crashed(check: str, case: str, error: BaseException, tokens: int | None = None) -> CheckResult:
    """A FAIL line for a check that raised: the exception on one line, its traceback in the data."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    note = text if len(text) <= 300 else text[:297] + "..."
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return CheckResult(check, case, Status.FAIL, tokens=tokens, note=note, data={"traceback": trace})
