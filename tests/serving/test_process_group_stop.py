"""stop_process_group: the teardown every server fixture relies on (no server needed)."""

from __future__ import annotations

import subprocess
import sys
import time

from sglang_dspark.server_process import stop_process_group


def _group(script: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    time.sleep(0.5)  # let the child install its handlers
    return proc


def test_terminates_a_group_that_honours_sigterm() -> None:
    proc = _group("import time; time.sleep(60)")
    started = time.monotonic()
    stop_process_group(proc, term_timeout=10, kill_timeout=10)
    assert proc.poll() is not None and proc.returncode < 0
    assert time.monotonic() - started < 5


def test_kills_a_group_that_ignores_sigterm() -> None:
    proc = _group("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")
    stop_process_group(proc, term_timeout=0.5, kill_timeout=10)
    assert proc.returncode == -9


def test_no_process_or_an_exited_one_is_a_no_op() -> None:
    stop_process_group(None, term_timeout=1, kill_timeout=1)
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()
    stop_process_group(proc, term_timeout=1, kill_timeout=1)
    assert proc.returncode == 0
