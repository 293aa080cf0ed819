"""Real ``sglang serve`` processes on CPU, started once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from sglang_dspark.copy_drafter import copy_drafter_config, write_copy_drafter
from sglang_dspark.server_process import ServerProcess, cpu_serve_args, dspark_args, running
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
    plain = ServerProcess(common, server_logs / "plain.log")
    # The speculation gate off: these tests exist to exercise multi-token commits, and on a
    # busy 2-core box the gate rightly finds plain decoding faster and stops drafting.
    spec = ServerProcess(
        [*common, *dspark_args(copy_drafter), "--enable-metrics"],
        server_logs / "dspark.log",
        env={"SGLANG_DSPARK_ADAPTIVE": "0"},
    )
    with running(plain, spec):
        yield plain, spec


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
