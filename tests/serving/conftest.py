"""Real ``sglang serve`` processes on CPU, started once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sglang_dspark.copy_drafter import copy_drafter_config, write_copy_drafter
from sglang_dspark.server_process import ServerProcess, cpu_serve_args, dspark_args
from sglang_dspark.train.tiny_target import make_tiny_target


CHUNKED_PREFILL_SIZE = 64


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory) -> Path:
    return make_tiny_target(tmp_path_factory.mktemp("tiny-target"), seed=0)


@pytest.fixture(scope="session")
def copy_drafter(tmp_path_factory, tiny_target) -> Path:
    return write_copy_drafter(
        tmp_path_factory.mktemp("copy-drafter"), copy_drafter_config(tiny_target), confidence_spread=2.0
    )


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def servers(tiny_target, copy_drafter, server_logs):
    """(plain, dspark) servers of the same target, started side by side.

    Small prefill chunks so that long prompts are prefilled in several chunks.
    """
    common = [*cpu_serve_args(tiny_target), "--chunked-prefill-size", str(CHUNKED_PREFILL_SIZE)]
    plain = ServerProcess(common, server_logs / "plain.log").start()
    spec = ServerProcess(
        [*common, *dspark_args(copy_drafter), "--enable-metrics"],
        server_logs / "dspark.log",
    ).start()
    try:
        plain.wait_ready()
        spec.wait_ready()
        yield plain, spec
    finally:
        plain.stop()
        spec.stop()
