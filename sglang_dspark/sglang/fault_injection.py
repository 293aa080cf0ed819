"""Test-only fault injection for the DSPARK worker.

``SGLANG_DSPARK_INJECT_DRAFT_FAULT=N`` makes every N-th drafting call raise,
as a broken drafter kernel or an out-of-memory inside the drafter would. The
worker must then decode that batch without speculation. The variable is read
once when the worker starts; unset (the default) costs nothing.
"""

from __future__ import annotations

import os

ENV = "SGLANG_DSPARK_INJECT_DRAFT_FAULT"


class InjectedDraftFault(RuntimeError):
    """The failure raised by :class:`DraftFaultInjector`."""


class DraftFaultInjector:
    """Raises on every ``every``-th call of :meth:`maybe_raise` (never when ``every`` is 0)."""

    def __init__(self, every: int) -> None:
        if every < 0:
            raise ValueError(f"{ENV} must be a non-negative integer, got {every}")
        self.every = every
        self.calls = 0

    @classmethod
    def from_env(cls) -> "DraftFaultInjector":
        raw = os.environ.get(ENV, "").strip()
        try:
            return cls(int(raw) if raw else 0)
        except ValueError as e:
            raise ValueError(f"{ENV}={raw!r}: expected a non-negative integer") from e

    def maybe_raise(self) -> None:
        if not self.every:
            return
        self.calls += 1
        if self.calls % self.every == 0:
            raise InjectedDraftFault(f"injected drafter failure (call {self.calls}, {ENV}={self.every})")
