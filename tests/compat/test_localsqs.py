"""Melange 7's LocalSQSBackend tests, on moto's SNS/SQS server."""

from __future__ import annotations

import json
import uuid

import pytest

from melange.compat import LocalSQSBackend, Message, QueueWrapper
from tests.compat.conftest import unique

pytestmark = pytest.mark.sqs
FIFO = {"FifoQueue": "true", "ContentBasedDeduplication": "true"}


def is_fifo(attributes: dict[str, str]) -> bool:
    return all(attributes.get(k) == v for k, v in FIFO.items())


def drain(backend: LocalSQSBackend, queue: QueueWrapper, ack_first: int | None = None) -> list[str]:
    """Receive until a receive comes back empty; acknowledge all (or the first few of each)."""
    got: list[str] = []
    while batch := backend.retrieve_messages(queue):
        for message in batch[:ack_first]:
            got.append(message.content)
            backend.acknowledge(message)
    return got


def test_create_fifo_queue(backend: LocalSQSBackend) -> None:
    name = unique("test-queue") + ".fifo"
    backend.declare_queue(name)
    assert is_fifo(backend.get_queue_attributes(backend.get_queue(name)))


def test_create_fifo_queue_with_dlq(backend: LocalSQSBackend) -> None:
    queue, dead_letter = backend.declare_queue(
        unique("test-queue") + ".fifo", dead_letter_queue_name=unique("dlq") + ".fifo"
    )
    assert dead_letter is not None
    assert is_fifo(backend.get_queue_attributes(queue))
    assert is_fifo(backend.get_queue_attributes(dead_letter))


def test_create_a_non_fifo_queue(backend: LocalSQSBackend) -> None:
    queue, _ = backend.declare_queue(unique("test-queue"))
    assert not is_fifo(backend.get_queue_attributes(queue))


def test_create_normal_queue_with_dlq(backend: LocalSQSBackend) -> None:
    queue, dead_letter = backend.declare_queue(
        unique("test-queue"), dead_letter_queue_name=unique("dlq")
    )
    assert dead_letter is not None
    assert not is_fifo(backend.get_queue_attributes(queue))
    assert not is_fifo(backend.get_queue_attributes(dead_letter))


def test_send_messages_through_a_fifo_queue_and_make_sure_they_are_always_ordered(
    backend: LocalSQSBackend,
) -> None:
    queue, _ = backend.declare_queue(unique("test-queue") + ".fifo")
    sent = [f"my-message-{i}" for i in range(100)]
    for content in sent:
        backend.publish_to_queue(
            Message.create(content, "my-event-type", 40),
            queue,
            message_group_id="my-app",
            message_deduplication_id=str(uuid.uuid4()),
        )
    assert drain(backend, queue) == sent


@pytest.mark.skip(
    reason="skipped in Melange 7.3 too; moto hands out a FIFO group's later messages"
    " while earlier ones are in flight, which SQS does not"
)
def test_not_acknowledging_any_of_the_messages_on_a_fifo_queue_will_delay_the_delivery_of_the_rest(
    moto_backend_fast: LocalSQSBackend,
) -> None:
    backend = moto_backend_fast
    queue, _ = backend.declare_queue(unique("test-queue") + ".fifo")
    sent = [f"my-message-{i}" for i in range(20)]
    for content in sent:
        backend.publish_to_queue(
            Message.create(content, "my-event-type", 40), queue, message_group_id="my-app"
        )
    # Only the first 5 of each batch are acknowledged: the rest come again, in order.
    got: list[str] = []
    while len(got) < 20:
        batch = backend.retrieve_messages(queue)
        for message in batch[:5]:
            got.append(message.content)
            backend.acknowledge(message)
    assert got == sent


def test_send_messages_through_a_non_fifo_queue_does_not_guarantee_order(
    backend: LocalSQSBackend,
) -> None:
    queue, _ = backend.declare_queue(unique("test-queue"))
    sent = {f"my-message-{i}" for i in range(100)}
    for content in sorted(sent):
        backend.publish_to_queue(Message.create(content, "my-event-type", 40), queue)
    got = drain(backend, queue)
    assert len(got) == 100
    assert set(got) == sent


def test_backend_declare_a_queue_for_a_topic_filtering_the_events_it_sends_to_certain_queues(
    backend: LocalSQSBackend,
) -> None:
    topic = backend.declare_topic(unique("dev-topic"))
    bananas, _ = backend.declare_queue(unique("q1"), topic, filter_events=["MyBananaEvent"])
    others, _ = backend.declare_queue(unique("q2"), topic, filter_events=["MyNonBananaEvent"])
    everything, _ = backend.declare_queue(unique("q3"), topic)
    content = json.dumps({"value": "banana"})
    backend.publish_to_topic(Message.create(content, "MyBananaEvent", 40), topic)
    backend.publish_to_topic(Message.create(content, "MyNonBananaEvent", 40), topic)
    assert manifests(backend, bananas, 1) == ["MyBananaEvent"]
    assert manifests(backend, others, 1) == ["MyNonBananaEvent"]
    assert manifests(backend, everything, 2) == ["MyBananaEvent", "MyNonBananaEvent"]


def manifests(backend: LocalSQSBackend, queue: QueueWrapper, expected: int) -> list[str | None]:
    """Receive until ``expected`` arrived (SNS delivers a little later), then until empty."""
    got = []
    for _ in range(30):
        batch = backend.retrieve_messages(queue)
        got += batch
        for message in batch:
            backend.acknowledge(message)
        if len(got) >= expected and not batch:
            break
    return sorted(m.manifest for m in got)
