"""Per-request sampling parameters and the logits -> probabilities transform.

Lossless rejection sampling needs the draft distribution ``p_d`` and the
target distribution ``p_t`` to be processed by exactly the same transform,
so both go through :func:`logits_to_probs`:

1. rows with ``temperature <= GREEDY_TEMPERATURE`` become a one-hot of the
   argmax of the raw logits (greedy decoding);
2. other rows: ``softmax(logits / temperature)``;
3. top-k and top-p are applied *jointly* on that distribution (a token is
   kept iff its rank is below ``top_k`` and the probability mass strictly
   before it, in descending order, is at most ``top_p``), then the kept mass
   is renormalised. This is SGLang's ``filter_apply_order="joint"`` rule.

``top_k <= 0`` (or ``>= V``) and ``top_p >= 1`` disable the filters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = [
    "GREEDY_TEMPERATURE",
    "SamplingParams",
    "logits_to_probs",
    "sample_from_probs",
]

#: Temperatures at or below this are greedy (SGLang's ``_SAMPLING_EPS``).
GREEDY_TEMPERATURE = 1e-6


@dataclass(frozen=True)
class SamplingParams:
    """Batched per-row sampling parameters (tensors ``[B]`` on one device).

    Attributes:
        temperature: float32; ``<= GREEDY_TEMPERATURE`` means greedy.
        top_p: float32 in ``(0, 1]``; 1 disables nucleus filtering.
        top_k: int64; ``<= 0`` disables top-k.
        min_p: float32 in ``[0, 1]`` or ``None`` (0 / ``None`` disables min-p).

    Construction checks shapes, dtypes and devices (no device sync); value
    ranges are checked by :meth:`create`, which builds from host values.
    """

    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor
    min_p: torch.Tensor | None = None

    def __post_init__(self) -> None:
        tensors = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}
        if self.min_p is not None:
            tensors["min_p"] = self.min_p
            if self.min_p.shape != self.temperature.shape or self.min_p.device != self.temperature.device:
                raise ValueError("SamplingParams.min_p must match temperature's shape and device.")
        for name, value in tensors.items():
            if not isinstance(value, torch.Tensor) or value.ndim != 1:
                raise ValueError(f"SamplingParams.{name} must be a 1-D tensor [B].")
        if not (self.temperature.shape == self.top_p.shape == self.top_k.shape):
            raise ValueError(
                "SamplingParams tensors must share one shape [B], got "
                f"{tuple(self.temperature.shape)}, {tuple(self.top_p.shape)}, "
                f"{tuple(self.top_k.shape)}."
            )
        if not (self.temperature.device == self.top_p.device == self.top_k.device):
            raise ValueError("SamplingParams tensors must live on one device.")
        if not (self.temperature.is_floating_point() and self.top_p.is_floating_point()):
            raise ValueError("SamplingParams.temperature and top_p must be floating point.")
        if self.top_k.is_floating_point():
            raise ValueError("SamplingParams.top_k must be an integer tensor.")

    @classmethod
    def create(
        cls,
        temperature: Sequence[float] | float,
        top_p: Sequence[float] | float = 1.0,
        top_k: Sequence[int] | int = 0,
        *,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
    ) -> "SamplingParams":
        """Build from host values, validating ranges.

        Scalars broadcast to ``batch_size`` (default: the length of the first
        sequence argument).
        """

        if batch_size is None:
            for value in (temperature, top_p, top_k):
                if not isinstance(value, (int, float)):
                    batch_size = len(value)
                    break

        def as_list(value, name):
            if isinstance(value, (int, float)):
                if batch_size is None:
                    raise ValueError(f"{name} is a scalar: pass batch_size.")
                return [value] * batch_size
            return list(value)

        temps = [float(t) for t in as_list(temperature, "temperature")]
        tops_p = [float(p) for p in as_list(top_p, "top_p")]
        tops_k = [int(k) for k in as_list(top_k, "top_k")]
        for name, values in (("temperature", temps), ("top_p", tops_p), ("top_k", tops_k)):
            if len(values) != batch_size:
                raise ValueError(f"{name} has {len(values)} entries for batch size {batch_size}.")
        for t in temps:
            if not t >= 0.0:
                raise ValueError(f"temperature must be >= 0, got {t}.")
        for p in tops_p:
            if not 0.0 < p <= 1.0:
                raise ValueError(f"top_p must be in (0, 1], got {p}.")
        return cls(
            temperature=torch.tensor(temps, dtype=torch.float32, device=device),
            top_p=torch.tensor(tops_p, dtype=torch.float32, device=device),
            top_k=torch.tensor(tops_k, dtype=torch.int64, device=device),
        )

    @classmethod
    def greedy(cls, batch_size: int, device: torch.device | str | None = None) -> "SamplingParams":
        """All rows greedy."""
        return cls.create(0.0, batch_size=batch_size, device=device)

    @property
    def batch_size(self) -> int:
        """Number of rows."""
        return self.temperature.shape[0]

    @property
    def is_greedy(self) -> torch.Tensor:
        """``[B]`` bool: rows decoded greedily."""
        return self.temperature <= GREEDY_TEMPERATURE

    def to(self, device: torch.device | str) -> "SamplingParams":
        """Copy onto ``device``."""
        return SamplingParams(
            self.temperature.to(device), self.top_p.to(device), self.top_k.to(device),
            None if self.min_p is None else self.min_p.to(device),
        )

    def select(self, rows: torch.Tensor) -> "SamplingParams":
        """Parameters of a subset of rows (index tensor or bool mask)."""
        return SamplingParams(
            self.temperature[rows], self.top_p[rows], self.top_k[rows],
            None if self.min_p is None else self.min_p[rows],
        )


def logits_to_probs(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    min_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """Processed sampling distribution, float32, same shape as ``logits``.

    Args:
        logits: ``[B, ..., V]``; row b uses the parameters at index b.
        temperature: ``[B]``; greedy rows give a one-hot of the argmax.
        top_p: ``[B]`` nucleus mass (1 = off).
        top_k: ``[B]`` (``<= 0`` = off).
        min_p: ``[B]`` or ``None`` (0 = off).

    Returns:
        ``[B, ..., V]`` probabilities; each row sums to 1.
    """
    if logits.ndim < 2:
        raise ValueError(f"logits must be [B, ..., V], got shape {tuple(logits.shape)}.")
    batch = logits.shape[0]
    for name, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k)):
        if value.shape != (batch,):
            raise ValueError(f"{name} must have shape [{batch}], got {tuple(value.shape)}.")
    vocab = logits.shape[-1]
    extra = logits.ndim - 2
    view = (batch,) + (1,) * extra + (1,)
    device = logits.device
    temp = temperature.to(device=device, dtype=torch.float32).view(view)
    greedy = temp <= GREEDY_TEMPERATURE
    x = logits.float()
    one_hot = torch.zeros_like(x).scatter_(-1, x.argmax(dim=-1, keepdim=True), 1.0)
    if bool(greedy.all()):
        return one_hot  # no softmax, no sort: the common greedy case

    probs = torch.softmax(x / torch.where(greedy, torch.ones_like(temp), temp), dim=-1)

    k = top_k.to(device=device, dtype=torch.int64).view(view)
    k = torch.where((k <= 0) | (k > vocab), torch.full_like(k, vocab), k)
    p = top_p.to(device=device, dtype=torch.float32).view(view)
    if not bool((k < vocab).any() | (p < 1.0).any()) and (min_p is None or not bool((min_p > 0).any())):
        return torch.where(greedy, one_hot, probs)  # no filter on any row: skip the vocabulary sort
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    ranks = torch.arange(vocab, device=device)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    # top_p == 1 must keep everything even when the float cumsum overshoots 1.
    keep_sorted = (ranks < k) & ((mass_before <= p) | (p >= 1.0))
    if min_p is not None:
        m = min_p.to(device=device, dtype=torch.float32).view(view)
        keep_sorted &= sorted_probs >= sorted_probs[..., :1] * m
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    probs = torch.where(keep, probs, torch.zeros_like(probs))
    probs = probs / probs.sum(dim=-1, keepdim=True)
    return torch.where(greedy, one_hot, probs)


def sample_from_probs(
    probs: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per row of ``probs`` (``[..., V]`` -> ``[...]``, int64).

    With ``uniforms`` (``[...]``, values in ``(0, 1)``) the token is drawn by
    inverse CDF from that noise, so given noise gives a given token;
    otherwise ``torch.multinomial`` with ``generator``. Rows that are one-hot
    (greedy) always return their argmax.
    """
    flat = probs.reshape(-1, probs.shape[-1])
    if uniforms is None:
        tokens = torch.multinomial(flat, num_samples=1, generator=generator).squeeze(-1)
    else:
        cdf = flat.double().cumsum(dim=-1)
        target = uniforms.reshape(-1, 1).to(cdf) * cdf[:, -1:]
        # First index whose CDF reaches the target: its probability is > 0.
        tokens = torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=flat.shape[-1] - 1)
    return tokens.reshape(probs.shape[:-1])
