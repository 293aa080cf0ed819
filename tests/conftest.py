"""Session-wide fixtures: the tiny target, its copy drafter and the shared plain/DSPARK servers.

Every test that needs the tiny target served plainly or with DSPARK and the
copy drafter (serving, tensor parallelism, eval through a server) shares the
one pair of servers started here; they sleep when idle (``--sleep-on-idle``),
so keeping them up for the whole session costs memory, not CPU.
"""

import os
import time

# Triton kernels run in the interpreter on CPU-only machines; this must be set
# before any @triton.jit function is defined.
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from sglang_dspark.copy_drafter import copy_drafter_config, write_copy_drafter  # noqa: E402
from sglang_dspark.server_process import ServerProcess, cpu_serve_args, dspark_args, running  # noqa: E402
from sglang_dspark.train.tiny_target import make_tiny_target  # noqa: E402

_SUITE_START = pytest.StashKey[float]()


CHUNKED_PREFILL_SIZE = 64
# Wall time of the whole suite on a 2-core development machine, with headroom: see
# bench/RESULTS.md ("Test-suite time"). Printed beside the measured time at the end of
# every run, so that growth shows when it happens; machines differ, so it never fails.
SUITE_BUDGET_S = 15 * 60


def pytest_sessionstart(session) -> None:
    session.config.stash[_SUITE_START] = time.monotonic()


@pytest.hookimpl(trylast=True)  # after --durations, just before pytest's own closing line
def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    start = config.stash.get(_SUITE_START, None)
    if start is None:
        return
    took = time.monotonic() - start
    share = took / SUITE_BUDGET_S
    terminalreporter.write_line(
        f"suite wall time {took / 60:.1f} min of a {SUITE_BUDGET_S / 60:.0f} min budget ({share:.0%})"
        + (" -- over budget: see --durations above" if share > 1 else "")
    )


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory) -> Path:
    return make_tiny_target(tmp_path_factory.mktemp("tiny-target"), seed=0)


@pytest.fixture(scope="session")
def copy_drafter(tmp_path_factory, tiny_target) -> Path:
    return write_copy_drafter(
        tmp_path_factory.mktemp("copy-drafter"), copy_drafter_config(tiny_target), confidence_spread=2.0
    )


@pytest.fixture(scope="session")
def draft_vocab_drafter(tmp_path_factory, tiny_target) -> Path:
    """The copy drafter with a reduced draft vocabulary: token ids 0-223 of the 260 (EAGLE-3 d2t/t2d)."""
    return write_copy_drafter(
        tmp_path_factory.mktemp("draft-vocab-drafter"),
        copy_drafter_config(tiny_target, draft_vocab_size=224),
        confidence_spread=2.0,
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
    # The reference decodes without SGLang's overlap scheduler, as the DSPARK server on CPU does:
    # with it, SGLang 0.5.23 counts penalties one token late (the prompt's last token instead of
    # the newest output token; docs/request-options.md), which is not what plain decoding means.
    plain = ServerProcess([*common, "--disable-overlap-schedule"], server_logs / "plain.log")
    # The speculation gate off: these tests exist to exercise multi-token commits, and on a
    # busy 2-core box the gate rightly finds plain decoding faster and stops drafting.
    spec = ServerProcess(
        [*common, *dspark_args(copy_drafter), "--enable-metrics"],
        server_logs / "dspark.log",
        env={"SGLANG_DSPARK_ADAPTIVE": "0"},
    )
    with running(plain, spec):
        yield plain, spec


