"""The Dockerfile's install steps, run on this CPU machine.

Stage 1 is replayed as written (its COPY lines into a clean folder, then its
``pip wheel`` command). Stage 2's ``docker/install-wheel.sh`` runs in a fresh
virtual environment whose only other packages are the CPU development stack
(.venv's site-packages, standing in for the CUDA image's): the same script,
without the ``[cuda]`` extra, whose CUDA-only wheels cannot install here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"

pytestmark = pytest.mark.slow


def _wheel_stage() -> list[str]:
    """The instructions of the Dockerfile's wheel stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    start = next(i for i, ln in enumerate(lines) if ln.endswith("AS wheel"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("FROM "))
    return lines[start + 1 : end]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("wheel-src")
    dist = tmp_path_factory.mktemp("dist")
    for ins in _wheel_stage():
        op, *args = shlex.split(ins)
        if op == "COPY":
            *sources, dest = args
            for s in sources:
                target = src / dest / (Path(s).name if dest.endswith("/") else "")
                if (REPO / s).is_dir():
                    shutil.copytree(REPO / s, target, symlinks=True,
                                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(REPO / s, target, follow_symlinks=False)
        elif op == "RUN" and "pip wheel" in ins:
            # The builder pins setuptools/wheel to the versions .venv has; build with .venv's.
            cmd = [sys.executable if a == "python" else str(dist) if a == "/dist" else a for a in args]
            subprocess.run(cmd, cwd=src, check=True, capture_output=True)
    (whl,) = dist.glob("sglang_dspark-*.whl")
    return whl


def test_wheel_carries_the_package_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "sglang_dspark/gpustack/dspark-backend.yaml" in names
    assert "sglang_dspark/sglang/plugin.py" in names
    ep = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "dspark = sglang_dspark.sglang.plugin:load" in ep
    assert "sglang-dspark = sglang_dspark.cli:main" in ep


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory, wheel) -> tuple[Path, str]:
    venv = tmp_path_factory.mktemp("image-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # pip from the dev stack runs inside the fresh interpreter (no download).
    site = Path(sysconfig.get_paths()["purelib"])
    fresh_site = next((venv / "lib").glob("python*/site-packages"))
    standins = sorted(site.glob("__editable___sglang_dspark_cpu_standins*_finder.py"))
    lines = [str(site)] + [f"import {p.stem}; {p.stem}.install()" for p in standins]
    (fresh_site / "zz_cpu_stack.pth").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHON": str(venv / "bin" / "python"), "SGLANG_USE_CPU_ENGINE": "1"}
    # Run outside the checkout, so that nothing imports the working tree's sglang_dspark.
    proc = subprocess.run(["sh", str(REPO / "docker" / "install-wheel.sh"), str(wheel)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=venv.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv, proc.stdout


def test_wheel_installs_without_touching_the_stack(fresh_venv):
    venv, out = fresh_venv
    assert "sglang-dspark plugin loaded: sglang_dspark.sglang.plugin:load" in out
    assert "Downloading" not in out  # every dependency was already there
    py = str(venv / "bin" / "python")
    where = subprocess.run([py, "-c", "import sglang_dspark, torch; print(sglang_dspark.__file__); print(torch.__version__)"],
                           capture_output=True, text=True, check=True, cwd=venv.parent).stdout.split()
    assert where[0].startswith(str(venv)), where  # the wheel's copy, not the dev checkout
    assert where[1].startswith("2.13.0")  # the stack's torch was kept
    cli = subprocess.run([str(venv / "bin" / "sglang-dspark"), "--version"], capture_output=True, text=True,
                         cwd=venv.parent)
    assert cli.returncode == 0 and "sglang-dspark 0.1.0" in cli.stdout


def test_sglang_serve_help_lists_dspark_flags(fresh_venv):
    venv, _ = fresh_venv
    # What the image's ENTRYPOINT `sglang serve` runs (sglang's console script).
    code = "import sys; from sglang.cli.main import main; sys.argv = ['sglang', 'serve', '--help']; sys.exit(main())"
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          timeout=400, env={**os.environ, "SGLANG_USE_CPU_ENGINE": "1"}, cwd=venv.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for flag in ("--speculative-algorithm", "--speculative-dspark-block-size",
                 "--speculative-dspark-sps-table-path", "--speculative-dspark-confidence-sts-path"):
        assert flag in proc.stdout
    assert "DSPARK" in proc.stdout
