"""The evaluation's user-facing error type."""

from __future__ import annotations

__all__ = ["EvalError"]


class EvalError(RuntimeError):
    """An input does not fit the request (file, drafter, server); the message says how."""
