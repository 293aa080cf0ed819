"""SGLang 0.5.23's own server-argument resolution with this plugin's hooks, without starting a server.

``sglang serve`` does ``load_plugins()`` and ``prepare_server_args(argv)``
(``sglang/cli/serve.py``: argparse into a raw ``ServerArgs``); the launcher then
calls ``server_args.resolve_once()`` (the resolution pipeline: model overrides,
the speculative hooks with ``_handle_dspark``, which this plugin replaces) and
``server_args.check_server_args()`` (where the plugin checks parallel sizes)
before it spawns any scheduler (``Engine._launch_subprocesses``). Every
start-up error the plugin raises is raised there, before any weight is read.
:func:`resolve_server_args` runs exactly that sequence, so a caller learns in
about a second (once SGLang is imported) what a ``sglang serve`` process would
learn after its imports.

Resolution may set process-wide state (logging, environment variables); run it
in a process of its own where that matters (see :func:`resolve_in_subprocess`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Resolution:
    """What resolving one ``sglang serve`` argument list gave: ok, or the error type and message."""

    ok: bool
    error_type: str = ""
    message: str = ""

    def __post_init__(self) -> None:
        if self.ok == bool(self.error_type):
            raise ValueError("a Resolution is ok or names its error, not both")


def resolve_server_args(argv: Sequence[str]):
    """``ServerArgs`` for ``sglang serve ARGV``, resolved as ``sglang serve`` resolves them; raises its errors."""
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    load_plugins()
    server_args = prepare_server_args(list(argv))
    server_args.resolve_once()
    server_args.check_server_args()
    return server_args


def try_resolve(argv: Sequence[str]) -> Resolution:
    """:func:`resolve_server_args`, with any error returned instead of raised."""
    try:
        resolve_server_args(argv)
    except SystemExit as e:  # argparse: unknown flag or bad value (its message went to stderr)
        return Resolution(False, "SystemExit", f"argument parsing exited with {e.code}")
    except Exception as e:  # noqa: BLE001 - every resolution error is the answer, whatever its type
        return Resolution(False, type(e).__name__, str(e))
    return Resolution(True)


def resolve_in_subprocess(
    cases: Mapping[str, Sequence[str]], *, env: Mapping[str, str] | None = None, timeout: float = 600
) -> dict[str, Resolution]:
    """Resolve several argument lists in one fresh Python process (one SGLang import for all)."""
    payload = json.dumps({name: list(argv) for name, argv in cases.items()})
    proc = subprocess.run(
        [sys.executable, "-m", "sglang_dspark.sglang.arg_resolution"],
        input=payload,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"argument resolution process exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    return {name: Resolution(**fields) for name, fields in json.loads(last).items()}


def _main() -> int:
    cases = json.loads(sys.stdin.read())
    results = {name: asdict(try_resolve(argv)) for name, argv in cases.items()}
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
