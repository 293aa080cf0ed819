"""Fixtures: a real PostgreSQL and a real GPUStack 2.3.0 server against it."""

from __future__ import annotations

import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sglang_dspark.gpustack.client import Credentials, GPUStackClient, ServerConfig
from tests.gpustack.services import GPUStackServer, Postgres, free_port, install


@dataclass(frozen=True)
class LiveGPUStack:
    """A running server, an admin client and the admin's password file."""

    server: GPUStackServer
    admin: GPUStackClient
    password_file: Path
    password: str


# Module scope: one server for test_gpustack_live.py, stopped before other modules run.
@pytest.fixture(scope="module")
def gpustack_live(tmp_path_factory) -> LiveGPUStack:
    install_s = install()
    root = tmp_path_factory.mktemp("gpustack-live")
    pg = Postgres(free_port()).start()
    password = "Dspark-" + secrets.token_hex(8)
    server = GPUStackServer(root / "gs", pg.url, password, free_port())
    try:
        server.start()
    except Exception:
        pg.stop()
        raise
    print(f"\n[gpustack fixture] install {install_s:.1f} s, postgres start {pg.startup_s:.1f} s, "
          f"gpustack start {server.startup_s:.1f} s", file=sys.stderr)
    pw_file = root / "admin-password"
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    admin = GPUStackClient(ServerConfig(server.url, Credentials(username="admin", password=password)))
    try:
        yield LiveGPUStack(server, admin, pw_file, password)
    finally:
        server.stop()
        pg.stop()


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the installed ``sglang-dspark`` command line (as a user would), capturing output."""
    return subprocess.run(
        [sys.executable, "-m", "sglang_dspark.cli", *args],
        capture_output=True, text=True, timeout=timeout,
    )
