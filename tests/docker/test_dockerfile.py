"""docker/Dockerfile: hadolint, the pins it must agree with, and `make image` without an engine."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
HADOLINT_VENV = REPO / ".cache" / "hadolint-venv"


@pytest.fixture(scope="module")
def hadolint() -> Path:
    subprocess.run(["bash", str(REPO / "docker" / "dev" / "install-hadolint.sh"), str(HADOLINT_VENV)], check=True)
    return HADOLINT_VENV / "bin" / "hadolint"


def test_hadolint_finds_nothing(hadolint):
    proc = subprocess.run([str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _text() -> str:
    return DOCKERFILE.read_text()


def _cuda_extra() -> dict[str, str]:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = meta["project"]["optional-dependencies"]["cuda"]
    return dict(p.split("==") for p in pins)


def test_base_image_matches_the_sglang_pin():
    sglang = _cuda_extra()["sglang"]
    (base,) = re.findall(r"^ARG SGLANG_IMAGE=(\S+)$", _text(), re.M)
    assert base == f"lmsysorg/sglang:v{sglang}-cu130-runtime"
    assert f'base.name="{base}"' in _text()
    nodeps = (REPO / "requirements" / "cpu-nodeps.txt").read_text()
    assert f"sglang=={sglang}" in nodeps  # the CPU dev stack serves the same SGLang


def test_installs_the_wheel_with_cuda_extra_on_the_base_image():
    text = _text()
    assert re.search(r"^FROM \$\{BUILDER_IMAGE\} AS wheel$", text, re.M)
    assert "pip wheel --no-cache-dir --no-deps" in text
    assert re.search(r"^FROM \$\{SGLANG_IMAGE\}$", text, re.M)
    assert re.search(r"sglang-dspark-install-wheel /tmp/dist/\S+\.whl cuda", text)


def test_entrypoint_healthcheck_labels():
    text = _text()
    assert re.search(r'^ENTRYPOINT \["sglang", "serve"\]$', text, re.M)
    assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/health'" in text
    for label in ("version", "source", "description", "title"):
        assert f"org.opencontainers.image.{label}=" in text


def test_no_secrets_in_the_image():
    text = _text()
    for word in ("PASSWORD", "TOKEN", "SECRET", "API_KEY", "HF_TOKEN"):
        assert not re.search(rf"^(ENV|ARG)\b.*{word}", text, re.M | re.I), word
    # The build context starts empty and re-includes only the sources.
    ignore = [line for line in (REPO / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
              if line and not line.startswith("#")]
    assert ignore[0] == "*"


def _engine_reachable() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


@pytest.mark.skipif(_engine_reachable(), reason="a Docker engine is reachable: `make image` would build")
def test_make_image_without_an_engine_says_so():
    proc = subprocess.run(["make", "-s", "image"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no Docker engine" in proc.stderr
