"""A throwaway rabbitmq-server node on 127.0.0.1, once per test session.

Everything the node writes lives under one base folder: its Erlang cookie,
config, data and logs. It gets its own epmd on a free port, so no daemon
outlives the tests. ``RabbitMQNode`` is importable on its own (the benchmark
uses it); the ``rabbitmq_node`` fixture wraps it for pytest.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.support import broker_unavailable, free_port, require_binary

__all__ = ["RABBITMQ_SERVER", "RabbitMQNode", "RabbitMQUnavailable", "rabbitmq_node"]

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


class RabbitMQUnavailable(RuntimeError):
    """The binaries are missing: the caller decides whether that skips or fails."""


def _stop_process(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _port_taken(log: str) -> bool:
    return any(sign in log for sign in ("could not bind", "already_used", "eaddrinuse"))


class RabbitMQNode:
    """One RabbitMQ node whose files all live under ``base``; stop/start keeps its data."""

    def __init__(
        self,
        base: Path,
        *,
        start_timeout: float = 90.0,
        epmd_port: int | None = None,
        node_name: str | None = None,
    ) -> None:
        for binary in (RABBITMQ_SERVER, "epmd"):
            if shutil.which(binary) is None:
                raise RabbitMQUnavailable(f"{binary} is not installed")
        self.base = base
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = epmd_port or free_port()
        self.node_name = node_name or f"melange-{uuid.uuid4().hex[:8]}@localhost"
        self.start_timeout = start_timeout
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []
        #: Remove ``base`` when stopped (set for a folder made by ``start_node``).
        self.remove_base = False
        self._started = False  # once started, its ports are what clients know
        self._write_config()

    @property
    def url(self) -> str:
        """Return the AMQP URL of the node (guest user, default vhost)."""
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    @property
    def pid(self) -> int | None:
        """Return the broker's PID while it runs."""
        return self._server.pid if self._server is not None else None

    def _write_config(self) -> None:
        (self.base / "home").mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {self.host}:{self.port}\n"
            "disk_free_limit.absolute = 10MB\n"
            "log.console = false\n"
        )

    def environment(self) -> dict[str, str]:
        """Return the environment the server and rabbitmqctl run with."""
        env = dict(os.environ)
        env.update(
            {
                "HOME": str(self.base / "home"),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "ERL_EPMD_PORT": str(self.epmd_port),
                "RABBITMQ_NODENAME": self.node_name,
                "RABBITMQ_NODE_IP_ADDRESS": self.host,
                "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port),
                "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
                "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
                "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(self.base / "log"),
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                    "-kernel inet_dist_use_interface {127,0,0,1}"
                ),
                # With input "allowed" the script execs erl instead of forking it, so
                # our PID is the broker's; -noinput keeps the Erlang shell off.
                "RABBITMQ_ALLOW_INPUT": "true",
                "RABBITMQ_SERVER_START_ARGS": "-noinput",
            }
        )
        return env

    def _output(self, name: str) -> IO[bytes]:
        log = open(self.base / name, "ab")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        return log

    def start(self) -> None:
        """Start epmd (once) and the broker; return when AMQP answers.

        A first start that finds one of its ports taken meanwhile (they were
        free when picked) tries again on new ones, up to three times.

        Raises:
            RuntimeError: the node died or did not answer in time.
        """
        for attempt in range(3):
            try:
                self._start_once()
            except RuntimeError as e:
                if self._started or attempt == 2 or not _port_taken(str(e)):
                    raise
                self.port, self.dist_port = free_port(), free_port()
                self._write_config()
            else:
                self._started = True
                return

    def _start_once(self) -> None:
        env = self.environment()
        if self._epmd is None or self._epmd.poll() is not None:
            self._epmd = subprocess.Popen(
                ["epmd", "-address", "127.0.0.1", "-port", str(self.epmd_port)],
                stdout=self._output("epmd.out"),
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        self._server = subprocess.Popen(
            [RABBITMQ_SERVER],
            stdout=self._output("server.out"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._server.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited early:\n{self.log_tail()}")
            if self.answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"rabbitmq-server did not answer in time:\n{self.log_tail()}")

    def answers(self) -> bool:
        """Return whether the AMQP port answers the protocol header with Connection.Start."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(_AMQP_HEADER)
                return sock.recv(1)[:1] == b"\x01"
        except OSError:
            return False

    def stop_node(self, grace: float = 15.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``grace`` seconds); epmd keeps running."""
        _stop_process(self._server, grace)
        self._server = None

    def kill_node(self) -> None:
        """Kill the broker with SIGKILL, as a crash would."""
        if self._server is not None and self._server.poll() is None:
            self._server.kill()
            self._server.wait(timeout=10)
        self._server = None

    def restart(self) -> None:
        """Stop the broker and start it again on the same data."""
        self.stop_node()
        self.start()

    def stop(self) -> None:
        """Stop the broker, then epmd; close the log files. Safe to call twice."""
        self.stop_node()
        _stop_process(self._epmd, 5.0)
        self._epmd = None
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self.remove_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run ``rabbitmqctl`` against this node and return its output.

        Raises:
            subprocess.CalledProcessError: rabbitmqctl failed.
        """
        result = subprocess.run(
            [RABBITMQCTL, "-n", self.node_name, *args],
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
            stdin=subprocess.DEVNULL,
        )
        return result.stdout

    def log_tail(self, lines: int = 40) -> str:
        """Return the end of the server's output and log, for error messages."""
        text = []
        for path in [self.base / "server.out", *sorted((self.base / "log").glob("*.log"))]:
            if path.exists():
                text.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(text)


def start_node(base: Path | None = None) -> RabbitMQNode:
    """Start a node under ``base`` (a new temporary folder if ``None``); the caller stops it.

    Raises:
        RabbitMQUnavailable: rabbitmq-server or epmd is not installed.
    """
    node = RabbitMQNode(base or Path(tempfile.mkdtemp(prefix="melange-rabbitmq-")))
    node.remove_base = base is None
    try:
        node.start()
    except BaseException:
        node.stop()
        raise
    return node


@pytest.fixture(scope="session")
def rabbitmq_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQNode]:
    """A running node for the whole session; missing binaries skip (locally) or fail (CI)."""
    require_binary(RABBITMQ_SERVER)
    require_binary("epmd")
    try:
        node = start_node(tmp_path_factory.mktemp("rabbitmq"))
    except RabbitMQUnavailable as e:
        broker_unavailable(str(e))
    try:
        yield node
    finally:
        node.stop()
