"""Throwaway PostgreSQL 15 servers on 127.0.0.1: one per test session, or one a test restarts.

The server refuses to run as root, so it runs as the ``postgres`` user the
Debian package creates, in a folder made with ``tempfile.mkdtemp()`` directly
under /tmp (pytest's own folders are mode 700 and root's: ``postgres`` could
not reach inside them). The process is started as that user directly rather
than through ``runuser``, which answers a signal by SIGKILLing the server
2 s later: a server killed so, while a client is connected, leaves its lock
file behind and cannot start again.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import broker_unavailable, free_port, require_binary

__all__ = ["POSTGRES_BIN", "PostgresServer", "postgres_database", "postgres_url"]

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
_USER = "postgres"


class PostgresServer:
    """A PostgreSQL server with its own folder and port; stop and start keep its data.

    ``stop()`` asks for a fast shutdown (SIGINT: clients are disconnected);
    ``remove()`` stops it and deletes the folder.
    """

    def __init__(self) -> None:
        self.binary = require_binary(str(POSTGRES_BIN / "postgres"))
        self.base = Path(tempfile.mkdtemp(prefix="melange-pg-"))
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        try:
            shutil.chown(self.base, _USER, _USER)
        except (LookupError, PermissionError) as e:  # no such user, or not root
            self.remove()
            broker_unavailable(f"cannot run PostgreSQL as {_USER}: {e}")
        self._initdb()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """Return the server's PID while it runs."""
        return self._process.pid if self._process is not None else None

    def _run_as_postgres(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                user=_USER,
                group=_USER,
                extra_groups=[],
            )

    def _initdb(self) -> None:
        process = self._run_as_postgres(
            [
                str(POSTGRES_BIN / "initdb"),
                *("-D", str(self.base / "data"), "-A", "trust", "-U", _USER),
                *("-E", "UTF8", "--locale=C", "--no-sync"),
            ],
            self.base / "initdb.log",
        )
        if process.wait(timeout=120) != 0:
            log = (self.base / "initdb.log").read_text(errors="replace")
            self.remove()
            broker_unavailable(f"initdb failed: {log[-2000:]}")

    def start(self) -> None:
        self._process = self._run_as_postgres(
            [
                self.binary,
                *("-D", str(self.base / "data"), "-k", str(self.base), "-p", str(self.port)),
                *("-c", "listen_addresses=127.0.0.1"),
                # A throwaway server: nothing has to survive a crash.
                *("-c", "fsync=off", "-c", "synchronous_commit=off"),
                *("-c", "full_page_writes=off"),
            ],
            self.base / "postgres.log",
        )
        deadline = time.monotonic() + 30
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                broker_unavailable(f"postgres did not start: see {self.base}/postgres.log")
            time.sleep(0.05)

    def _ready(self) -> bool:
        probe = subprocess.run(
            [
                str(POSTGRES_BIN / "pg_isready"),
                *("-q", "-h", "127.0.0.1", "-p", str(self.port), "-U", _USER),
            ],
            check=False,
        )
        return probe.returncode == 0

    def stop(self) -> None:
        """Stop the server by its PID: a fast shutdown, then harder if it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        for sig, grace in ((signal.SIGINT, 30), (signal.SIGQUIT, 10)):
            process.send_signal(sig)
            try:
                process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue
        process.kill()
        process.wait(timeout=10)

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    server = PostgresServer()
    try:
        server.start()
        yield server.url
    finally:
        server.remove()


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A database of this test's own on the session's server; its conninfo."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(postgres_url, dbname=name)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
