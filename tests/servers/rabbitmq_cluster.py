"""A throwaway three-node RabbitMQ cluster on 127.0.0.1, for the failover test.

One shared epmd, one Erlang cookie in every node's private HOME, each node
its own name, ports and folders; nodes 2 and 3 join node 1 with
``rabbitmqctl join_cluster``. Stopped (and its folders removed) by PID.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.rabbitmq import RABBITMQ_SERVER, RabbitMQNode, RabbitMQUnavailable
from tests.support import broker_unavailable, free_port, require_binary

__all__ = ["RabbitMQCluster", "rabbitmq_cluster"]


class RabbitMQCluster:
    """Three clustered nodes; ``url`` names all three."""

    def __init__(self, base: Path) -> None:
        epmd = free_port()
        cookie = secrets.token_hex(16)
        self.nodes = [
            RabbitMQNode(base / f"node{n}", epmd_port=epmd, node_name=f"rabbit{n}@localhost")
            for n in (1, 2, 3)
        ]
        for node in self.nodes:
            path = node.base / "home" / ".erlang.cookie"
            path.write_text(cookie)
            path.chmod(0o600)

    @property
    def url(self) -> str:
        hosts = ",".join(f"{node.host}:{node.port}" for node in self.nodes)
        return f"amqp://guest:guest@{hosts}/%2F"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        first = self.nodes[0].node_name
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first)
            node.ctl("start_app")
        for node in self.nodes[1:]:
            if not node.answers():  # start_app returns once AMQP listens again
                raise RuntimeError(f"{node.node_name} did not come back:\n{node.log_tail()}")

    def node_at(self, port: int) -> RabbitMQNode:
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


@pytest.fixture
def rabbitmq_cluster() -> Iterator[RabbitMQCluster]:
    """A cluster of this test's own (about 15 s to start, 450 MB while it runs)."""
    require_binary(RABBITMQ_SERVER)
    require_binary("epmd")
    base = Path(tempfile.mkdtemp(prefix="melange-cluster-"))
    cluster = RabbitMQCluster(base)
    try:
        cluster.start()
    except (RabbitMQUnavailable, RuntimeError) as e:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
        broker_unavailable(str(e))
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
