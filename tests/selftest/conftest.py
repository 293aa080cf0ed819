"""One torch thread for the selftest tests (as tests/train does): on a shared 2-core box
a second intra-op thread mostly waits for the first, and the interpreter is single-threaded."""

from __future__ import annotations

import pytest

from tests.torch_threads import one_torch_thread


@pytest.fixture(autouse=True, scope="package")
def _single_thread():
    with one_torch_thread():
        yield
