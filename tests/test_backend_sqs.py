from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from melange import Consumer, Message, MessageDispatcher, MessagePublisher, RetryPolicy, listener
from melange.backends import from_url
from melange.backends.sqs import AWSBackend, LocalSQSBackend
from melange.exceptions import (
    MessageTooLargeError,
    QueueNotFoundError,
    TopicNotFoundError,
    UnsupportedOperationError,
)
from melange.models import QueueWrapper, TopicWrapper
from tests.conformance import BackendContract, receive, unique
from tests.servers.moto import MotoServer

pytestmark = pytest.mark.sqs


class RequestCounter:
    """Counts HTTP requests per operation with botocore's ``before-send`` event."""

    def __init__(self, backend: AWSBackend) -> None:
        self.calls: Counter[str] = Counter()
        for client in backend.clients:
            client.meta.events.register("before-send", self._count)

    def _count(self, request: Any, **kwargs: Any) -> None:
        self.calls[kwargs["event_name"].split(".")[-1]] += 1

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@pytest.fixture
def aws(moto_server: MotoServer) -> Iterator[AWSBackend]:
    with LocalSQSBackend(moto_server.host, moto_server.port) as backend:
        yield backend


class TestAWSBackend(BackendContract):
    visibility_timeout = 1.0

    @pytest.fixture
    def backend(self, aws: AWSBackend) -> AWSBackend:
        return aws


class OrderCreated(BaseModel):
    __melange_manifest__ = "orders.created"
    order_id: str


class Recorder(Consumer):
    def __init__(self, name: str) -> None:
        super().__init__(consumer_id=name)
        self.seen: list[OrderCreated] = []

    @listener
    def on_created(self, event: OrderCreated) -> None:
        self.seen.append(event)


def test_sns_fans_out_to_two_queues_and_each_gets_the_event_typed(aws: AWSBackend) -> None:
    consumers = [Recorder("billing"), Recorder("shipping")]
    dispatchers = [MessageDispatcher(aws, [c]) for c in consumers]
    names = [unique("billing"), unique("shipping")]
    for dispatcher, name in zip(dispatchers, names, strict=True):
        dispatcher.declare(name, visibility_timeout=5)
    sent = MessagePublisher(aws).publish(OrderCreated(order_id="o-1"))
    for dispatcher, name in zip(dispatchers, names, strict=True):
        assert dispatcher.consume_loop(name, max_messages=1, idle_timeout=10) == 1
    assert [c.seen for c in consumers] == [[OrderCreated(order_id="o-1")]] * 2
    assert sent.manifest == "orders.created"


def test_fifo_keeps_order_within_a_group(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique("orders") + ".fifo")
    messages = [Message(content=str(n), metadata={"message_group_id": "o-1"}) for n in range(15)]
    for message in messages[:5]:
        aws.publish_to_queue(message, queue)
    aws.publish_batch_to_queue(messages[5:], queue)
    got: list[str] = []
    while len(got) < 15:
        batch = aws.retrieve_messages(queue, max_messages=10, wait_seconds=2)
        assert batch, f"only {got} arrived"
        got += [m.content for m in batch]
        aws.acknowledge_batch(batch)
    assert got == [str(n) for n in range(15)]


def test_fifo_topic_delivers_to_fifo_queue(aws: AWSBackend) -> None:
    topic = aws.declare_topic(unique("events") + ".fifo")
    queue, _ = aws.declare_queue(unique("sub") + ".fifo", topic)
    aws.publish_to_topic(Message(content="a"), topic, {"MessageGroupId": "g"})
    [message] = receive(aws, queue, 1)
    assert message.content == "a"


def test_redrive_moves_to_the_dead_letter_queue_after_the_chosen_count(aws: AWSBackend) -> None:
    queue, dead_letter = aws.declare_queue(
        unique("q"), dead_letter_queue_name=unique("dlq"), visibility_timeout=1, max_receive_count=2
    )
    assert dead_letter is not None
    attributes = aws._sqs.get_queue_attributes(QueueUrl=queue.obj, AttributeNames=["RedrivePolicy"])
    assert json.loads(attributes["Attributes"]["RedrivePolicy"])["maxReceiveCount"] == 2
    aws.publish_to_queue(Message(content="poison"), queue)
    for expected in (1, 2):
        [message] = receive(aws, queue, 1)
        assert message.receive_count == expected
    time.sleep(1.2)
    assert aws.retrieve_messages(queue, wait_seconds=1) == []  # this read moves it
    [dead] = receive(aws, dead_letter, 1, timeout=15)
    assert dead.content == "poison"


def test_a_failing_handler_ends_in_the_dead_letter_queue_with_error_headers(
    aws: AWSBackend,
) -> None:
    class Refuses(Consumer):
        @listener
        def on_created(self, event: OrderCreated) -> None:
            raise RuntimeError("nope")

    name = unique("refuses")
    dispatcher = MessageDispatcher(
        aws,
        [Refuses()],
        retry=RetryPolicy(immediate_attempts=1, max_deliveries=2, backoff_seconds=0),
    )
    dispatcher.declare(name, visibility_timeout=5)
    sent = MessagePublisher(aws).publish(OrderCreated(order_id="bad"), queue=name)
    dispatcher.consume_loop(name, max_messages=2, idle_timeout=10)
    [dead] = receive(aws, aws.get_queue(f"{name}-dlq"), 1)
    assert dead.content == sent.content
    assert dead.message_id == sent.message_id
    assert dead.metadata["error_message"] == "nope"
    assert dead.metadata["attempts"] == "2"
    assert dead.metadata["source_queue"] == name
    assert dead.metadata["correlation_id"] == sent.metadata["correlation_id"]


def test_queue_policy_names_exactly_the_subscribed_topics(aws: AWSBackend) -> None:
    first, second, other = (aws.declare_topic(unique(n)) for n in ("a", "b", "c"))
    name = unique("q")
    queue, _ = aws.declare_queue(name, first)
    aws.declare_queue(name, second)  # adding a topic keeps the first

    policy = json.loads(aws.queue_policy(queue) or "{}")
    [statement] = policy["Statement"]
    assert sorted(statement["Condition"]["ArnEquals"]["aws:SourceArn"]) == sorted(
        [first.obj, second.obj]
    )
    assert other.obj not in json.dumps(policy)
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
    assert statement["Resource"].endswith(":" + name)


def test_an_oversized_message_is_refused_before_any_request(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique("q"))
    topic = aws.declare_topic(unique("t"))
    counter = RequestCounter(aws)
    big = Message(content="x" * 262_144)
    with pytest.raises(MessageTooLargeError, match="262144"):
        aws.publish_to_queue(big, queue)
    with pytest.raises(MessageTooLargeError):
        aws.publish_to_topic(big, topic)
    with pytest.raises(MessageTooLargeError):
        aws.publish_batch_to_queue([Message(content="ok"), big], queue)
    assert counter.total == 0


def test_batch_publish_of_25_makes_3_send_message_batch_calls(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique("q"))
    counter = RequestCounter(aws)
    aws.publish_batch_to_queue([Message(content=str(n)) for n in range(25)], queue)
    assert counter.calls == Counter({"SendMessageBatch": 3})
    assert sorted(int(m.content) for m in receive(aws, queue, 25)) == list(range(25))


def test_batches_are_split_by_size_too(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique("q"))
    counter = RequestCounter(aws)
    aws.publish_batch_to_queue([Message(content="x" * 100_000) for _ in range(4)], queue)
    assert counter.calls["SendMessageBatch"] == 2


def test_many_headers_are_packed_into_one_attribute(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique("q"))
    headers = {f"h{n}": str(n) for n in range(12)}
    aws.publish_to_queue(
        Message(content="x", metadata=headers, manifest="m", serializer_id=3), queue
    )
    [message] = receive(aws, queue, 1)
    assert dict(message.metadata) == headers
    assert (message.manifest, message.serializer_id) == ("m", 3)


def test_a_missing_queue_or_topic_is_a_typed_error(aws: AWSBackend) -> None:
    with pytest.raises(QueueNotFoundError):
        aws.get_queue(unique("ghost"))
    ghost = QueueWrapper(aws.declare_queue(unique("q"))[0].obj.rsplit("/", 1)[0] + "/ghost")
    with pytest.raises(QueueNotFoundError):
        aws.publish_to_queue(Message(content="x"), ghost)
    topic = aws.declare_topic(unique("t"))
    aws.delete_topic(topic)
    with pytest.raises(TopicNotFoundError):
        aws.publish_to_topic(Message(content="x"), TopicWrapper(topic.obj))


def test_delays_beyond_sqs_limits_are_refused(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique("q"))
    with pytest.raises(UnsupportedOperationError, match="900"):
        aws.publish_delayed_to_queue(Message(content="x"), queue, 901)


def test_names_sns_and_sqs_refuse_are_mapped(aws: AWSBackend) -> None:
    topic = aws.declare_topic("orders.created")
    assert topic.obj.endswith(":orders_created")
    queue, _ = aws.declare_queue("billing.v2", topic)
    assert queue == aws.get_queue("billing.v2")


def test_from_url_forms(moto_server: MotoServer) -> None:
    local = from_url(moto_server.url)
    assert isinstance(local, LocalSQSBackend)
    queue, _ = local.declare_queue(unique("q"))
    assert queue.obj.startswith(moto_server.endpoint)
    local.close_connection()
    real = from_url("sqs://?region=eu-west-1")
    assert isinstance(real, AWSBackend)
    assert real.clients[1].meta.region_name == "eu-west-1"
    real.close_connection()


def test_requests_per_message_with_batching(aws: AWSBackend) -> None:
    name = unique("counted")
    recorder = Recorder("counted")
    dispatcher = MessageDispatcher(aws, [recorder])
    dispatcher.declare(name, visibility_timeout=30)
    counter = RequestCounter(aws)
    MessagePublisher(aws).publish_batch(
        [OrderCreated(order_id=str(n)) for n in range(100)], queue=name
    )
    dispatcher.consume_loop(name, max_messages=100, idle_timeout=5)
    assert len(recorder.seen) == 100
    assert counter.total / 100 <= 0.35, counter.calls
