"""moto's SNS/SQS HTTP server on 127.0.0.1, once per test session."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import broker_unavailable, free_port


@dataclass(frozen=True)
class MotoServer:
    host: str
    port: int
    region: str = "us-east-1"
    access_key: str = "testing"
    secret_key: str = "testing"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"sqs://{self.host}:{self.port}?region={self.region}"

    def client_options(self) -> dict[str, Any]:
        """Options for ``boto3.client`` (or ``AWSBackend``) that point at this server."""
        return {
            "endpoint_url": self.endpoint,
            "region_name": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }

    def reset(self) -> None:
        """Forget every topic, queue and message (``POST /moto-api/reset``)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        broker_unavailable(f"moto[server] is not installed: {e}")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield MotoServer(host, port)
    finally:
        server.stop()


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The session's moto server, emptied for this test (keeps its queues shallow and fast)."""
    moto_server.reset()
    return moto_server
