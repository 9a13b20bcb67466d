"""moto's SNS/SQS HTTP server on 127.0.0.1, once per test session."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support import broker_unavailable, free_port


@dataclass(frozen=True)
class MotoServer:
    host: str
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"sqs://{self.host}:{self.port}?region=us-east-1"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        broker_unavailable(f"moto[server] is not installed: {e}")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield MotoServer(host, port)
    finally:
        server.stop()
