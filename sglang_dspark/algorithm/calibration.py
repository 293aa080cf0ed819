"""STS calibration of the confidence head (per-position temperature scaling).

The confidence head predicts ``c_k = sigmoid(l_k)``, the probability that
draft position ``k`` is accepted given that all earlier positions were. The
scheduler only consumes the survival probabilities ``a_j = prod_{k<=j} c_k``,
so the temperatures ``T_k`` in ``c_k = sigmoid(l_k / T_k)`` are fitted to make
``a_j`` calibrated against the observed prefix survival: position by
position, ``T_j`` is the grid value minimising the expected calibration error
of ``a_j`` with ``T_1..T_{j-1}`` already fixed.

JSON format (``sglang-dspark-sts/1``)::

    {
      "format": "sglang-dspark-sts/1",
      "temperatures": [2.0, 1.5, 3.0],
      "ece_before": 0.081,
      "ece_after": 0.006,
      "num_samples": 50000,
      "n_bins": 15
    }

``ece_before`` / ``ece_after`` are the ECE of all survival probabilities
pooled over positions, at ``T = 1`` and at the fitted temperatures; they may
be ``null`` for hand-written files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "STS_FORMAT",
    "StsCalibration",
    "StsFormatError",
    "default_temperature_grid",
    "expected_calibration_error",
    "fit_sts",
]

STS_FORMAT = "sglang-dspark-sts/1"


class StsFormatError(ValueError):
    """A JSON file is not a valid ``sglang-dspark-sts/1`` calibration."""


def default_temperature_grid() -> torch.Tensor:
    """61 temperatures ``2 ** (i / 12)`` from 0.25 to 8 (about 5.9 % apart, 1.0 included)."""
    return 2.0 ** (torch.arange(-24, 37, dtype=torch.float64) / 12.0)


def _ece_rows(probs: torch.Tensor, outcomes: torch.Tensor, n_bins: int) -> torch.Tensor:
    """ECE of each row of ``probs [G, N]`` against shared ``outcomes [N]``."""
    rows, n = probs.shape
    bins = (probs * n_bins).long().clamp_(0, n_bins - 1)
    bins += torch.arange(rows, device=probs.device)[:, None] * n_bins
    bins = bins.flatten()
    size = rows * n_bins
    outcomes = outcomes.to(probs.dtype).expand(rows, n).flatten()
    count = torch.bincount(bins, minlength=size).to(probs.dtype)
    prob_sum = torch.bincount(bins, weights=probs.flatten(), minlength=size)
    outcome_sum = torch.bincount(bins, weights=outcomes, minlength=size)
    gap = (prob_sum - outcome_sum).abs().view(rows, n_bins)
    return gap.sum(dim=1) / n


def expected_calibration_error(probs: Any, outcomes: Any, *, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width bins.

    ``ECE = sum_b (n_b / N) * |mean(p in b) - mean(outcome in b)|`` over
    ``n_bins`` bins ``[i / n_bins, (i + 1) / n_bins)`` of ``[0, 1]``; the
    last bin includes 1.

    Args:
        probs: predicted probabilities, any shape (flattened).
        outcomes: observed 0/1 outcomes (or frequencies), same number of elements.
        n_bins: number of bins.
    """
    p = torch.as_tensor(probs, dtype=torch.float64).flatten()
    o = torch.as_tensor(outcomes).to(torch.float64).flatten()
    if p.numel() != o.numel():
        raise ValueError(f"probs and outcomes differ in size ({p.numel()} vs {o.numel()})")
    if p.numel() == 0:
        raise ValueError("expected_calibration_error of no samples")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return float(_ece_rows(p.clamp(0.0, 1.0)[None], o, n_bins)[0])


@dataclass(frozen=True)
class StsCalibration:
    """Per-position temperatures for the confidence logits.

    Attributes:
        temperatures: ``T_k`` per draft position (positive).
        ece_before: pooled survival ECE at ``T = 1`` on the fitting data.
        ece_after: pooled survival ECE at the fitted temperatures.
        num_samples: drafted blocks used for fitting.
        n_bins: ECE bins used for fitting.
    """

    temperatures: tuple[float, ...]
    ece_before: float | None = None
    ece_after: float | None = None
    num_samples: int = 0
    n_bins: int = 15

    def __post_init__(self) -> None:
        temps = tuple(float(t) for t in self.temperatures)
        if not temps:
            raise ValueError("StsCalibration needs at least one temperature")
        if not all(math.isfinite(t) and t > 0 for t in temps):
            raise ValueError(f"temperatures must be positive and finite, got {temps}")
        if self.num_samples < 0 or self.n_bins < 1:
            raise ValueError(f"need num_samples >= 0 and n_bins >= 1, got {self.num_samples}, {self.n_bins}")
        object.__setattr__(self, "temperatures", temps)

    @classmethod
    def identity(cls, block_size: int) -> StsCalibration:
        """No calibration: every temperature 1."""
        return cls(temperatures=(1.0,) * block_size)

    def _scaled(self, conf_logits: torch.Tensor) -> torch.Tensor:
        if conf_logits.shape[-1] != len(self.temperatures):
            raise ValueError(
                f"confidence logits have {conf_logits.shape[-1]} positions, "
                f"calibration has {len(self.temperatures)} temperatures"
            )
        temps = torch.tensor(self.temperatures, dtype=conf_logits.dtype, device=conf_logits.device)
        return conf_logits / temps

    def apply(self, conf_logits: torch.Tensor) -> torch.Tensor:
        """Calibrated conditional acceptance probabilities ``sigmoid(l_k / T_k)``, shape ``[..., K]``."""
        return torch.sigmoid(self._scaled(conf_logits))

    def survival(self, conf_logits: torch.Tensor) -> torch.Tensor:
        """Calibrated prefix survival probabilities ``a_j = prod_{k<=j} c_k``, shape ``[..., K]``."""
        return self.apply(conf_logits).cumprod(dim=-1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready ``sglang-dspark-sts/1`` representation."""
        return {
            "format": STS_FORMAT,
            "temperatures": list(self.temperatures),
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "num_samples": self.num_samples,
            "n_bins": self.n_bins,
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "STS calibration") -> StsCalibration:
        """Parse the ``sglang-dspark-sts/1`` representation.

        Raises:
            StsFormatError: naming ``source`` and what is wrong.
        """

        def fail(msg: str) -> StsFormatError:
            return StsFormatError(f"{source}: {msg}")

        if not isinstance(data, dict):
            raise fail(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != STS_FORMAT:
            raise fail(f"expected \"format\": \"{STS_FORMAT}\", got {data.get('format')!r}")
        temps = data.get("temperatures")
        if not isinstance(temps, list) or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) for t in temps
        ):
            raise fail("\"temperatures\" must be a list of numbers")
        for key in ("ece_before", "ece_after"):
            value = data.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise fail(f"\"{key}\" must be a number or null")
        for key, default in (("num_samples", 0), ("n_bins", 15)):
            value = data.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int):
                raise fail(f"\"{key}\" must be an integer")
        try:
            return cls(
                temperatures=tuple(temps),
                ece_before=data.get("ece_before"),
                ece_after=data.get("ece_after"),
                num_samples=data.get("num_samples", 0),
                n_bins=data.get("n_bins", 15),
            )
        except ValueError as exc:
            raise fail(str(exc)) from exc

    def to_json(self, path: str | Path) -> None:
        """Write the calibration to ``path`` in the ``sglang-dspark-sts/1`` format."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> StsCalibration:
        """Read a calibration written by :meth:`to_json`.

        Raises:
            StsFormatError: the file is not valid JSON or not a valid calibration.
            OSError: the file cannot be read.
        """
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise StsFormatError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, source=str(path))


def fit_sts(
    conf_logits: torch.Tensor,
    accepted: torch.Tensor,
    *,
    grid: Sequence[float] | torch.Tensor | None = None,
    n_bins: int = 15,
) -> StsCalibration:
    """Fit per-position temperatures by grid search on held-out drafts.

    Args:
        conf_logits: ``[N, K]`` confidence-head logits of ``N`` drafted blocks.
        accepted: ``[N, K]`` whether position ``k`` was accepted given all
            earlier positions were; entries after the first rejection are
            ignored (the observed prefix survival is the cumulative product).
        grid: candidate temperatures; defaults to
            :func:`default_temperature_grid`. On ties the first wins.
        n_bins: ECE bins.

    Returns:
        The fitted :class:`StsCalibration` with its ECE before and after.
    """
    if conf_logits.dim() != 2 or accepted.shape != conf_logits.shape:
        raise ValueError(
            f"conf_logits and accepted must both be [N, K], got "
            f"{tuple(conf_logits.shape)} and {tuple(accepted.shape)}"
        )
    n, k = conf_logits.shape
    if n == 0 or k == 0:
        raise ValueError("fit_sts needs at least one sample and one position")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    logits = conf_logits.detach().to(torch.float64)
    survived = accepted.detach().to(torch.float64).cumprod(dim=1)
    temps = default_temperature_grid() if grid is None else torch.as_tensor(grid, dtype=torch.float64)
    temps = temps.flatten().to(logits.device)
    if temps.numel() == 0 or not bool((temps > 0).all()):
        raise ValueError("grid must hold positive temperatures")

    # Evaluate the grid in chunks to bound memory at a few million entries.
    chunk = max(1, 4_000_000 // n)
    fitted: list[float] = []
    prefix = torch.ones(n, dtype=torch.float64, device=logits.device)
    for j in range(k):
        ece = torch.cat([
            _ece_rows(prefix * torch.sigmoid(logits[:, j] / t[:, None]), survived[:, j], n_bins)
            for t in temps.split(chunk)
        ])
        best = float(temps[int(torch.argmin(ece))])
        fitted.append(best)
        prefix = prefix * torch.sigmoid(logits[:, j] / best)

    before = torch.sigmoid(logits).cumprod(dim=1)
    return StsCalibration(
        temperatures=tuple(fitted),
        ece_before=expected_calibration_error(before, survived, n_bins=n_bins),
        ece_after=expected_calibration_error(StsCalibration(tuple(fitted)).survival(logits), survived, n_bins=n_bins),
        num_samples=n,
        n_bins=n_bins,
    )
