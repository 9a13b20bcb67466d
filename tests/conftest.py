"""Shared test setup. Broker fixtures live in tests/servers/, one module per broker."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = [
    *sorted(
        f"tests.servers.{path.stem}"
        for path in (Path(__file__).parent / "servers").glob("*.py")
        if path.stem != "__init__"
    ),
    "tests.wire",  # the ``wire`` fixture: each test on RabbitMQ, SQS and SQLite
]
