"""Server configurations only the serving tests use (the shared pair is in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sglang_dspark.copy_drafter import copy_drafter_config, write_copy_drafter
from sglang_dspark.server_process import ServerProcess, cpu_serve_args, dspark_args, running


@pytest.fixture(scope="session")
def wrong_drafter(tmp_path_factory, tiny_target) -> Path:
    """A drafter that always proposes the wrong token with high confidence (acceptance ~ 0)."""
    from safetensors.torch import load_file, save_file

    directory = write_copy_drafter(tmp_path_factory.mktemp("wrong-drafter"), copy_drafter_config(tiny_target))
    weights = load_file(str(directory / "model.safetensors"))
    w2 = weights["markov_head.markov_w2.weight"]
    # Propose token x + 1 after x instead of x again.
    weights["markov_head.markov_w2.weight"] = w2.roll(shifts=1, dims=0).contiguous()
    save_file(weights, str(directory / "model.safetensors"))
    return directory


@pytest.fixture(scope="session")
def faulty_server(tiny_target, wrong_drafter, server_logs):
    """DSPARK with a mismatched drafter that also raises on every 3rd drafting call."""
    server = ServerProcess(
        [*cpu_serve_args(tiny_target), *dspark_args(wrong_drafter), "--enable-metrics"],
        server_logs / "faulty.log",
        env={"SGLANG_DSPARK_INJECT_DRAFT_FAULT": "3", "SGLANG_DSPARK_STOP_ON_COLLAPSE": "1"},
    )
    with running(server):
        yield server
