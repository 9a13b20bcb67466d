"""Throwaway redis-servers on 127.0.0.1: one per test session, or one a test can stop."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import broker_unavailable, free_port, require_binary


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server on a fixed port and folder, which can be stopped and started again."""

    def __init__(self, base: Path) -> None:
        self.binary = require_binary("redis-server")
        self.base = base
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with open(self.base / "stdout.log", "ab") as log:
            self._process = subprocess.Popen(
                [
                    self.binary,
                    *("--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.base)),
                    *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                    *("--protected-mode", "yes", "--logfile", str(self.base / "redis.log")),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while not _pong(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                broker_unavailable(f"redis-server did not start: see {self.base}/redis.log")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server by its PID (its data is gone: nothing is saved)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def restartable_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may stop and start."""
    server = RedisServer(tmp_path_factory.mktemp("redis-own"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
