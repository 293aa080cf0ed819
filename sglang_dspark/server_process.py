"""Start and stop real ``sglang serve`` processes on loopback (tests, demo, benchmarks)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

CPU_ENV = {"SGLANG_USE_CPU_ENGINE": "1"}

logger = logging.getLogger(__name__)


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sglang_command() -> list[str]:
    """``sglang serve`` of the running interpreter's environment."""
    exe = Path(sys.executable).with_name("sglang")
    return [str(exe), "serve"] if exe.exists() else [sys.executable, "-m", "sglang.cli.main", "serve"]



def stop_process_group(proc: subprocess.Popen | None, *, term_timeout: float, kill_timeout: float) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL it after ``term_timeout`` s; never raises.

    Logs, rather than raises, when the group is still not reaped ``kill_timeout`` s after SIGKILL.
    """
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=term_timeout)
        return
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=kill_timeout)
    except subprocess.TimeoutExpired:
        logger.warning("process group %d still not reaped %.0f s after SIGKILL", proc.pid, kill_timeout)

@dataclass
class ServerProcess:
    """One ``sglang serve`` process on 127.0.0.1 with its log file."""

    args: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        env = {**os.environ, **CPU_ENV, **self.env}
        env.pop("TRITON_INTERPRET", None)
        cmd = [*sglang_command(), *self.args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        return self

    def wait_ready(self, timeout: float = 600.0) -> "ServerProcess":
        """Block until ``/health_generate`` answers 200; raise with the log tail on failure."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"sglang serve exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                if requests.get(self.url + "/health_generate", timeout=30).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(2)
        self.stop()
        raise TimeoutError(f"sglang serve not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to exit by itself (start-up errors); return its code."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the whole process group, SIGKILL after 20 s; never raises.

        On a loaded machine a killed process can take a while to be reaped
        (SGLang's own shutdown waits up to 60 s for its children); a teardown
        must not fail the test it belongs to because of that.
        """
        stop_process_group(self.proc, term_timeout=20, kill_timeout=90)

    def __enter__(self) -> "ServerProcess":
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def running(*servers: ServerProcess, timeout: float = 600.0) -> Iterator[tuple[ServerProcess, ...]]:
    """Start all ``servers`` at once (their start-ups overlap), wait until each is ready, stop all on exit."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(timeout)
        yield servers
    finally:
        for server in servers:
            server.stop()


# SGLang's scheduler polls its sockets in a busy loop unless told to sleep when idle:
# an idle CPU server then burns a whole core (7 s of CPU in 10 s idle, measured on a
# 2-core machine), which the other servers, the other TP rank and the client lose.
SLEEP_ON_IDLE = "--sleep-on-idle"


def cpu_serve_args(model_path: str | Path, *, max_total_tokens: int = 8192) -> list[str]:
    """The flags every CPU server of this project starts with (fp32, bounded KV pool, idle scheduler asleep)."""
    return [
        "--model-path", str(model_path),
        "--device", "cpu",
        "--dtype", "float32",
        "--max-total-tokens", str(max_total_tokens),
        SLEEP_ON_IDLE,
    ]


def dspark_args(drafter_path: str | Path | None = None) -> list[str]:
    """Flags that turn DSPARK on, with a DeepSpec drafter when given."""
    args = ["--speculative-algorithm", "DSPARK"]
    if drafter_path is not None:
        args += ["--speculative-draft-model-path", str(drafter_path)]
    return args
