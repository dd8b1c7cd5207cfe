"""A real PostgreSQL for tests: Debian's server, initialised into a temporary directory and started on a
free loopback port, the way `prom` starts Prometheus.

    from tests.support import postgres

    pg_server = postgres.pg_server  # the session-scoped fixture; `pg.fresh_url()` is an empty database

The server runs as the `postgres` system user when the tests run as root (PostgreSQL refuses root), with
fsync off: the tests check behaviour, not durability. Skipped, with the reason, only where the Debian
binaries are missing; CI installs them (.ci/run).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import prom


def _bin_dir() -> Path | None:
    configured = os.environ.get("POSTGRES_BIN_DIR")
    if configured:
        return Path(configured)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """One PostgreSQL cluster under `workdir`: `start`, `fresh_url` per test, `stop`."""

    def __init__(self, workdir: Path, bin_dir: Path) -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.data = workdir / "data"
        self.socket_dir = workdir / "run"
        self.port = prom.free_port()
        self.user = "gpuburst"
        self._names = itertools.count(1)
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for d in (workdir, self.socket_dir):
                d.mkdir(parents=True, exist_ok=True)
                os.chown(d, owner.pw_uid, owner.pw_gid)
            # The tmp directories above `workdir` are root's 0700: the server needs to pass through them.
            for parent in workdir.parents:
                if parent == Path("/tmp") or parent == parent.parent:
                    break
                parent.chmod(parent.stat().st_mode | 0o011)
            self._as = ["runuser", "-u", "postgres", "--"]
        else:
            self.socket_dir.mkdir(parents=True, exist_ok=True)

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, capture_output=True, timeout=60)

    def start(self) -> PostgresServer:
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir} -c fsync=off " + (
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.workdir / "server.log"),
            "-o", options, "-w", "-t", "30", "start",
        )  # fmt: skip
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def fresh_url(self) -> str:
        """The URL of a new, empty database (one per test keeps tests apart)."""
        name = f"t{next(self._names)}"
        self._run(
            str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name
        )
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[PostgresServer]:
    bin_dir = _bin_dir()
    if bin_dir is None or (shutil.which("runuser") is None and os.geteuid() == 0):
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    server = PostgresServer(workdir, bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with running(tmp_path_factory.mktemp("postgres")) as pg:
        yield pg
