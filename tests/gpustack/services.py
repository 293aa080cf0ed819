"""Real PostgreSQL 15 and GPUStack 2.3.0 processes for the integration tests.

Both are installed by ``gpustack/dev/install-gpustack.sh`` (Debian's
postgresql-15, GPUStack in its own virtual environment); nothing here fakes
either service.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sglang_dspark.server_process import stop_process_group

REPO = Path(__file__).resolve().parents[2]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
GPUSTACK_VENV = REPO / ".cache" / "gpustack-venv"
INSTALL_SCRIPT = REPO / "gpustack" / "dev" / "install-gpustack.sh"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install() -> float:
    """Run the project's install script (a no-op once its stamp exists); return seconds spent."""
    t0 = time.monotonic()
    subprocess.run(["bash", str(INSTALL_SCRIPT), str(GPUSTACK_VENV)], check=True)
    return time.monotonic() - t0


def _as_postgres_user() -> list[str]:
    # initdb and postgres refuse to run as root; "nobody" exists on every Debian.
    return ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []


@dataclass
class Postgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1 with trust auth for user ``root``.

    Its folder is a fresh one under the system temp dir: pytest's own temp
    folders are private to root, and the server runs as ``nobody`` there.
    """

    port: int
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dspark-pg-")))
    startup_s: float = 0.0

    @property
    def url(self) -> str:
        """SQLAlchemy-style URL of the ``gpustack`` database."""
        return f"postgresql://root@127.0.0.1:{self.port}/gpustack"

    def start(self) -> "Postgres":
        """initdb, start, create the ``gpustack`` database."""
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, user="nobody")
        run = _as_postgres_user()
        data = self.root / "data"
        subprocess.run(
            run + [str(PG_BIN / "initdb"), "-D", str(data), "-U", "root", "--auth=trust",
                   "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, cwd=self.root,
        )
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            run + [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(self.root / "postgres.log"),
                   "-w", "-t", "120", "start"],
            check=True, capture_output=True, cwd=self.root,
        )
        subprocess.run(
            [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "root", "gpustack"],
            check=True, capture_output=True,
        )
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Fast shutdown."""
        subprocess.run(
            _as_postgres_user() + [str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"],
            capture_output=True, cwd=self.root,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class GPUStackServer:
    """``gpustack start`` (server only, no gateway, no observability) on a free port."""

    data_dir: Path
    database_url: str
    password: str
    port: int
    proc: subprocess.Popen | None = None
    startup_s: float = 0.0

    @property
    def url(self) -> str:
        """Base URL of the API."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """Where the server's output goes."""
        return self.data_dir / "gpustack.log"

    def start(self, timeout_s: float = 300.0) -> "GPUStackServer":
        """Start the server and wait for ``/readyz``.

        Raises:
            RuntimeError: the server exited or was not ready in time (log tail included).
        """
        t0 = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The bootstrap password reaches GPUStack through its env variable, so
        # it does not show in `ps`.
        env = {**os.environ, "GPUSTACK_BOOTSTRAP_PASSWORD": self.password}
        cmd = [
            str(GPUSTACK_VENV / "bin" / "gpustack"), "start",
            "--data-dir", str(self.data_dir / "data"),
            "--database-url", self.database_url,
            "--port", str(self.port), "--api-port", str(self.port),
            "--gateway-mode", "disabled",
            "--disable-builtin-observability", "--disable-metrics",
            "--disable-update-check",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gpustack exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout_s:
                self.stop()
                raise RuntimeError(f"gpustack not ready after {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(1.0)
        self.startup_s = time.monotonic() - t0
        return self

    def log_tail(self, n: int = 40) -> str:
        """The last ``n`` lines of the server log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM the server's process group; SIGKILL after 30 s."""
        stop_process_group(self.proc, term_timeout=30, kill_timeout=10)
