"""Names are checked, never folded (#17 item 7): one rule per backend, named by the error."""

from __future__ import annotations

import pytest

from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.sqs import LocalSQSBackend
from melange.exceptions import InvalidNameError
from melange.testing import unique_name
from tests.servers.moto import MotoServer
from tests.servers.rabbitmq import RabbitMQNode
from tests.wire import (
    Wire,
)

# -- 7. names are checked, never folded -----------------------------------------------------

NOT_NAMES = {"empty": "", "NUL": "a\0b", "100,000 characters": "n" * 100_000}


@pytest.mark.parametrize("name", list(NOT_NAMES.values()), ids=list(NOT_NAMES))
def test_every_backend_refuses_a_name_it_cannot_take(wire: Wire, name: str) -> None:
    backend = wire.backend
    with pytest.raises(InvalidNameError) as declared:
        backend.declare_queue(name)
    assert declared.value.backend in {"rabbitmq", "aws_sqs", "melange_sqlite"}
    with pytest.raises(InvalidNameError):
        backend.declare_topic(name)
    with pytest.raises(InvalidNameError):
        backend.get_queue(name)
    with pytest.raises(InvalidNameError):
        backend.declare_queue(unique_name("ok"), dead_letter_queue_name=name)


def test_the_memory_backend_checks_names_too() -> None:
    backend = InMemoryMessagingBackend()
    for name in NOT_NAMES.values():
        with pytest.raises(InvalidNameError, match="melange_memory"):
            backend.declare_queue(name)
    assert backend.declare_queue("n" * 255)[0].unwrap() == "n" * 255


def test_rabbitmq_counts_bytes_and_keeps_amq_for_itself(rabbitmq_node: RabbitMQNode) -> None:
    with RabbitMQBackend(rabbitmq_node.url) as backend:
        with pytest.raises(InvalidNameError, match="255 bytes"):
            backend.declare_queue("é" * 128)  # 128 characters, 256 bytes
        with pytest.raises(InvalidNameError, match="amq"):
            backend.declare_topic("amq.mine")
        queue, _ = backend.declare_queue("é" * 127)
        assert queue.unwrap() == "é" * 127


def test_sqs_refuses_what_it_would_fold_and_suggests_a_spelling(moto: MotoServer) -> None:
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as backend:
        with pytest.raises(InvalidNameError) as spaced:
            backend.declare_queue("orders created")
        assert spaced.value.suggestion == "orders-created"
        with pytest.raises(InvalidNameError, match="80 characters"):
            backend.declare_queue("q" * 81)
        with pytest.raises(InvalidNameError, match="-dlq"):  # 77 + "-dlq" is 81
            backend.declare_queue("q" * 77, dead_letter_queue_name="q" * 77 + "-dlq")
        backend.declare_queue("q" * 76, dead_letter_queue_name="q" * 76 + "-dlq")
        long_topic = backend.declare_topic("t" * 256)  # SNS takes 256
        assert long_topic.unwrap().endswith("t" * 256)
        with pytest.raises(InvalidNameError, match="256"):
            backend.declare_topic("t" * 257)


def test_two_services_whose_names_fold_together_cannot_share_a_queue(moto: MotoServer) -> None:
    base = unique_name("orders").replace("-", "")
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as first:
        queue, _ = first.declare_queue(f"{base}.created")
        topic = first.declare_topic(f"{base}.events")
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as other:
        with pytest.raises(InvalidNameError) as shared:
            other.declare_queue(f"{base}_created")
        assert f"{base}.created" in str(shared.value)
        with pytest.raises(InvalidNameError):
            other.get_queue(f"{base}_created")
        with pytest.raises(InvalidNameError):
            other.declare_topic(f"{base}_events")
        again, _ = other.declare_queue(f"{base}.created")  # the same name keeps working
        assert again == queue
        assert other.declare_topic(f"{base}.events") == topic
