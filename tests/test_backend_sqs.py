"""AWSBackend against moto's SNS/SQS HTTP server, through boto3."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import botocore.exceptions
import pytest
from botocore.config import Config
from pydantic import BaseModel

from melange import Consumer, Message, MessageDispatcher, MessagePublisher, RetryPolicy, listener
from melange.backends import from_url
from melange.backends.sqs import AWSBackend, LocalSQSBackend
from melange.backends.sqs import _wire as wire
from melange.backends.sqs._errors import NOT_IN_FLIGHT_CODES, receipt_gone, translated
from melange.exceptions import (
    BackendConnectionError,
    BackendError,
    BatchPublishError,
    ConfigurationError,
    MessageTooLargeError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
    UnsupportedOperationError,
)
from melange.models import DECODE_ERROR, QueueWrapper, TopicWrapper
from melange.testing import AsyncBackendContract, BackendContract, receive, unique_name
from tests.servers.moto import MotoServer
from tests.support import free_port

pytestmark = pytest.mark.sqs

ROOT = Path(__file__).resolve().parent.parent


class Requests:
    """Counts HTTP requests per operation (``before-send``) and keeps each call's parameters."""

    def __init__(self, backend: AWSBackend) -> None:
        self.calls: Counter[str] = Counter()
        self.params: list[tuple[str, dict[str, Any]]] = []
        for client in (backend.sns_client, backend.sqs_client):
            client.meta.events.register("before-send", self._sent)
            client.meta.events.register("before-parameter-build", self._built)

    def _sent(self, **kwargs: Any) -> None:
        self.calls[kwargs["event_name"].rsplit(".", 1)[-1]] += 1

    def _built(self, params: dict[str, Any], **kwargs: Any) -> None:
        self.params.append((kwargs["event_name"].rsplit(".", 1)[-1], dict(params)))

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [params for name, params in self.params if name == operation]

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@pytest.fixture
def aws(moto: MotoServer) -> Iterator[AWSBackend]:
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as backend:
        yield backend


class TestAWSBackend(BackendContract, AsyncBackendContract):
    visibility_timeout = 1  # SQS takes whole seconds

    @pytest.fixture
    def backend(self, aws: AWSBackend) -> AWSBackend:
        return aws


def raw_attributes(aws: AWSBackend, queue: QueueWrapper) -> dict[str, Any]:
    """Receive one message with boto3 itself and return its message attributes."""
    response = aws.sqs_client.receive_message(
        QueueUrl=queue.obj, MessageAttributeNames=["All"], WaitTimeSeconds=5
    )
    [message] = response["Messages"]
    return dict(message.get("MessageAttributes", {}))


def queue_attribute(aws: AWSBackend, queue: QueueWrapper, name: Any) -> str:
    response = aws.sqs_client.get_queue_attributes(QueueUrl=queue.obj, AttributeNames=[name])
    return response["Attributes"][name]


def held(aws: AWSBackend, queue: QueueWrapper) -> tuple[int, int]:
    """Return how many messages the queue holds: (visible, in flight)."""
    return (
        int(queue_attribute(aws, queue, "ApproximateNumberOfMessages")),
        int(queue_attribute(aws, queue, "ApproximateNumberOfMessagesNotVisible")),
    )


def text(value: str) -> dict[str, Any]:
    return {"DataType": "String", "StringValue": value}


# -- typed events through SNS and the dispatcher -----------------------------------------


class OrderCreated(BaseModel):
    __melange_manifest__ = "orders.created"
    order_id: str


class Recorder(Consumer):
    def __init__(self, name: str) -> None:
        super().__init__(consumer_id=name)
        self.seen: list[tuple[OrderCreated, Message]] = []

    @listener
    def on_created(self, event: OrderCreated, message: Message) -> None:
        self.seen.append((event, message))


def test_sns_fans_out_to_two_queues_and_each_gets_the_event_typed(aws: AWSBackend) -> None:
    consumers = [Recorder("billing"), Recorder("shipping")]
    dispatchers = [MessageDispatcher(aws, [c]) for c in consumers]
    names = [unique_name("billing"), unique_name("shipping")]
    for dispatcher, name in zip(dispatchers, names, strict=True):
        dispatcher.declare(name, visibility_timeout=5)
    sent = MessagePublisher(aws).publish(OrderCreated(order_id="o-1"))
    for dispatcher, name in zip(dispatchers, names, strict=True):
        assert dispatcher.consume_loop(name, max_messages=1, idle_timeout=10) == 1
    for consumer in consumers:
        [(event, message)] = consumer.seen
        assert event == OrderCreated(order_id="o-1")
        assert (message.message_id, message.manifest) == (sent.message_id, "orders.created")
        assert message.serializer_id == sent.serializer_id
        assert dict(message.metadata) == dict(sent.metadata)


def test_requests_per_message_with_batching(aws: AWSBackend) -> None:
    name = unique_name("counted")
    recorder = Recorder("counted")
    dispatcher = MessageDispatcher(aws, [recorder])
    dispatcher.declare(name, visibility_timeout=30)
    requests = Requests(aws)
    MessagePublisher(aws).publish_batch(
        [OrderCreated(order_id=str(n)) for n in range(100)], queue=name
    )
    dispatcher.consume_loop(name, max_messages=100, idle_timeout=5)
    assert len(recorder.seen) == 100
    assert requests.total / 100 <= 0.35, requests.calls
    assert requests.calls["SendMessageBatch"] == 10
    assert requests.calls["DeleteMessageBatch"] == requests.calls["ReceiveMessage"]


# -- FIFO ------------------------------------------------------------------------------


def drain_fifo(aws: AWSBackend, queue: QueueWrapper, expected: int) -> list[Message]:
    got: list[Message] = []
    while len(got) < expected:
        batch = aws.retrieve_messages(queue, max_messages=10, wait_seconds=2)
        assert batch, f"only {len(got)} of {expected} arrived"
        got += batch
        aws.acknowledge_batch(batch)  # FIFO holds a group back while some of it is in flight
    return got


def test_fifo_keeps_order_within_each_group(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("orders") + ".fifo")
    requests = Requests(aws)
    for n in range(4):
        aws.publish_to_queue(Message(content=f"a{n}"), queue, message_group_id="a")
    headed = [Message(content=f"b{n}", metadata={"message_group_id": "b"}) for n in range(8)]
    aws.publish_batch_to_queue(headed, queue)
    more = [Message(content=f"a{n}", metadata={"message_group_id": "a"}) for n in range(4, 12)]
    aws.publish_batch_to_queue(more, queue)
    assert {p["MessageGroupId"] for p in requests.of("SendMessage")} == {"a"}
    [b_batch, a_batch] = requests.of("SendMessageBatch")
    assert {e["MessageGroupId"] for e in b_batch["Entries"]} == {"b"}
    assert {e["MessageGroupId"] for e in a_batch["Entries"]} == {"a"}
    got = [m.content for m in drain_fifo(aws, queue, 20)]
    assert [c for c in got if c[0] == "a"] == [f"a{n}" for n in range(12)]
    assert [c for c in got if c[0] == "b"] == [f"b{n}" for n in range(8)]


def test_fifo_deduplicates_by_message_id_or_the_given_id(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("dedup") + ".fifo")
    message = Message(content="once")
    aws.publish_to_queue(message, queue)
    aws.publish_to_queue(message, queue)  # same message id: same deduplication id
    aws.publish_to_queue(Message(content="x"), queue, message_deduplication_id="d-1")
    aws.publish_to_queue(Message(content="y"), queue, message_deduplication_id="d-1")
    assert [m.content for m in drain_fifo(aws, queue, 2)] == ["once", "x"]
    assert aws.retrieve_messages(queue, wait_seconds=1) == []


def test_fifo_topic_delivers_to_fifo_queue_in_order(aws: AWSBackend) -> None:
    topic = aws.declare_topic(unique_name("events") + ".fifo")
    queue, _ = aws.declare_queue(unique_name("sub") + ".fifo", topic)
    requests = Requests(aws)
    aws.publish_to_topic(Message(content="0"), topic, {"MessageGroupId": "g"})
    aws.publish_batch_to_topic([Message(content=str(n)) for n in range(1, 12)], topic)
    assert requests.of("Publish")[0]["MessageGroupId"] == "g"
    [first_batch, _] = requests.of("PublishBatch")
    entry = first_batch["PublishBatchRequestEntries"][0]
    assert entry["MessageGroupId"] == "default"
    assert (
        entry["MessageDeduplicationId"]
        == entry["MessageAttributes"][wire.MESSAGE_ID]["StringValue"]
    )
    assert [m.content for m in drain_fifo(aws, queue, 12)] == [str(n) for n in range(12)]


class ShipmentBooked(BaseModel):
    __melange_manifest__ = "shipments.fifo"  # a FIFO topic: FIFO queues take only those
    shipment_id: int


class Shipping(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    @listener
    def on_booked(self, event: ShipmentBooked) -> None:
        self.seen.append(event.shipment_id)


def test_dispatcher_on_a_fifo_topic_and_queue(aws: AWSBackend) -> None:
    name = unique_name("shipping") + ".fifo"
    shipping = Shipping()
    dispatcher = MessageDispatcher(aws, [shipping])
    _, dead_letter = dispatcher.declare(name, visibility_timeout=5)
    assert dead_letter is not None
    assert dead_letter.obj.endswith("-dlq.fifo")  # the dispatcher's "<queue>-dlq" name
    assert aws.get_queue(f"{name}-dlq") == dead_letter
    publisher = MessagePublisher(aws)
    publisher.publish_batch([ShipmentBooked(shipment_id=n) for n in range(12)])
    publisher.publish(ShipmentBooked(shipment_id=12))
    assert dispatcher.consume_loop(name, max_messages=13, idle_timeout=10) == 13
    assert shipping.seen == list(range(13))


def test_what_sqs_would_refuse_is_refused_before_any_request(aws: AWSBackend) -> None:
    standard = aws.declare_topic(unique_name("t"))
    requests = Requests(aws)
    with pytest.raises(ConfigurationError, match="FIFO"):
        aws.declare_queue(unique_name("q") + ".fifo", dead_letter_queue_name=unique_name("dlq"))
    with pytest.raises(ConfigurationError, match="FIFO"):
        aws.declare_queue(unique_name("q"), dead_letter_queue_name=unique_name("dlq") + ".fifo")
    with pytest.raises(ConfigurationError, match="FIFO topics"):
        aws.declare_queue(unique_name("q") + ".fifo", standard)
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        aws.declare_queue(unique_name("q"), visibility_timeout=50_000)
    with pytest.raises(ConfigurationError, match="max_receive_count"):
        aws.declare_queue(
            unique_name("q"), dead_letter_queue_name=unique_name("dlq"), max_receive_count=0
        )
    assert requests.total == 0


# -- topology ----------------------------------------------------------------------------


def test_redrive_moves_to_the_dead_letter_queue_after_the_chosen_count(aws: AWSBackend) -> None:
    queue, dead_letter = aws.declare_queue(
        unique_name("q"),
        dead_letter_queue_name=unique_name("dlq"),
        visibility_timeout=1,
        max_receive_count=2,
    )
    assert dead_letter is not None
    redrive = json.loads(queue_attribute(aws, queue, "RedrivePolicy"))
    assert redrive["maxReceiveCount"] == 2
    assert redrive["deadLetterTargetArn"] == queue_attribute(aws, dead_letter, "QueueArn")
    aws.publish_to_queue(Message(content="poison"), queue)
    for expected in (1, 2):
        [message] = receive(aws, queue, 1)
        assert message.receive_count == expected
    time.sleep(1.2)
    assert aws.retrieve_messages(queue, wait_seconds=1) == []  # this read moves it
    [dead] = receive(aws, dead_letter, 1, timeout=15)
    assert dead.content == "poison"


def test_default_receive_count_is_the_class_attribute(moto: MotoServer) -> None:
    class Patient(LocalSQSBackend):
        default_max_receive_count = 7

    with Patient(moto.host, moto.port) as backend:
        queue, _ = backend.declare_queue(
            unique_name("q"), dead_letter_queue_name=unique_name("dlq")
        )
        redrive = json.loads(queue_attribute(backend, queue, "RedrivePolicy"))
    assert redrive["maxReceiveCount"] == 7


def test_visibility_timeout_is_rounded_up_to_whole_seconds(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"), visibility_timeout=1.2)
    assert queue_attribute(aws, queue, "VisibilityTimeout") == "2"


def test_queue_policy_names_exactly_the_subscribed_topics(aws: AWSBackend) -> None:
    first, second, other = (aws.declare_topic(unique_name(n)) for n in ("a", "b", "c"))
    name = unique_name("q")
    queue, _ = aws.declare_queue(name, first)
    aws.declare_queue(name, second)  # adding a topic keeps the first

    policy = json.loads(aws.queue_policy(queue) or "{}")
    [statement] = policy["Statement"]
    assert sorted(statement["Condition"]["ArnEquals"]["aws:SourceArn"]) == sorted(
        [first.obj, second.obj]
    )
    assert other.obj not in json.dumps(policy)
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
    assert statement["Resource"] == queue_attribute(aws, queue, "QueueArn")
    subscriptions = aws.sns_client.list_subscriptions()["Subscriptions"]
    assert sorted(s["TopicArn"] for s in subscriptions) == sorted([first.obj, second.obj])
    for subscription in subscriptions:
        attributes = aws.sns_client.get_subscription_attributes(
            SubscriptionArn=subscription["SubscriptionArn"]
        )["Attributes"]
        assert attributes["RawMessageDelivery"] == "true"


def test_redeclaring_keeps_statements_written_by_others_and_skips_needless_writes(
    aws: AWSBackend,
) -> None:
    topic = aws.declare_topic(unique_name("t"))
    name = unique_name("q")
    queue, _ = aws.declare_queue(name)
    foreign = {"Sid": "ops", "Effect": "Deny", "Principal": "*", "Action": "sqs:PurgeQueue"}
    policy = json.dumps({"Version": "2012-10-17", "Statement": [foreign]})
    aws.sqs_client.set_queue_attributes(QueueUrl=queue.obj, Attributes={"Policy": policy})
    aws.declare_queue(name, topic)
    statements = json.loads(aws.queue_policy(queue) or "{}")["Statement"]
    assert [s["Sid"] for s in statements] == ["ops", "melange-topics"]
    requests = Requests(aws)
    aws.declare_queue(name, topic)
    assert "SetQueueAttributes" not in requests.calls


def test_delete_queue_removes_its_subscriptions(aws: AWSBackend) -> None:
    topic = aws.declare_topic(unique_name("t"))
    kept, _ = aws.declare_queue(unique_name("kept"), topic)
    gone, _ = aws.declare_queue(unique_name("gone"), topic)
    aws.delete_queue(gone)
    aws.delete_queue(gone)  # already gone: nothing to do
    subscriptions = aws.sns_client.list_subscriptions_by_topic(TopicArn=topic.obj)
    endpoints = [s["Endpoint"] for s in subscriptions["Subscriptions"]]
    assert endpoints == [queue_attribute(aws, kept, "QueueArn")]


def test_delete_topic_removes_it_and_its_subscriptions(aws: AWSBackend) -> None:
    topic = aws.declare_topic(unique_name("t"))
    aws.declare_queue(unique_name("q"), topic)
    aws.delete_topic(topic)
    aws.delete_topic(topic)  # already gone: nothing to do
    assert aws.sns_client.list_subscriptions()["Subscriptions"] == []
    assert topic.obj not in [t["TopicArn"] for t in aws.sns_client.list_topics()["Topics"]]


def test_names_sns_and_sqs_refuse_are_mapped(aws: AWSBackend) -> None:
    topic = aws.declare_topic("orders.created")
    assert topic.obj.endswith(":orders_created")
    queue, _ = aws.declare_queue("billing.v2", topic)
    assert queue.obj.endswith("/billing_v2")
    assert queue == aws.get_queue("billing.v2")


# -- messages on the wire ------------------------------------------------------------------


def test_a_message_comes_back_identical(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"))
    sent = Message(
        content='{"name": "Zoë ✓ 😀"}',
        metadata={"correlation_id": "c-1", "custom": "välue"},
        serializer_id=3,
        manifest="orders.created",
    )
    aws.publish_to_queue(sent, queue)
    [received] = receive(aws, queue, 1)
    assert received.with_changes(receive_count=0) == sent
    assert received.receive_count == 1
    url, handle = received.receipt
    assert url == queue.obj
    assert isinstance(handle, str)
    assert handle


def test_headers_travel_one_attribute_each_while_they_fit(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"))
    headers = {f"h{n}": str(n) for n in range(7)}
    aws.publish_to_queue(
        Message(content="x", metadata=headers, manifest="m", serializer_id=1), queue
    )
    attributes = raw_attributes(aws, queue)
    assert len(attributes) == 10
    assert attributes["h3"] == {"StringValue": "3", "DataType": "String"}
    assert attributes[wire.SERIALIZER_ID]["DataType"] == "Number"


@pytest.mark.parametrize(
    "headers",
    [
        {f"h{n}": str(n) for n in range(12)},
        {"AWS.trace": "1", "ok": "2"},
        {"a..b": "1"},
        {".dot": "1", "dot.": "2"},
        {"melange.manifest": "not the manifest"},
        {"empty": ""},
        {"control": "bell\x07"},
        {"x" * 300: "long name"},
    ],
    ids=[
        "twelve",
        "aws-prefix",
        "double-dot",
        "edge-dots",
        "melange-prefix",
        "empty",
        "ctl",
        "long",
    ],
)
def test_headers_sqs_would_refuse_or_too_many_are_packed(
    aws: AWSBackend, headers: dict[str, str]
) -> None:
    queue, _ = aws.declare_queue(unique_name("q"))
    sent = Message(content="x", metadata=headers, manifest="m", serializer_id=3)
    aws.publish_to_queue(sent, queue)
    [received] = receive(aws, queue, 1)
    assert received.with_changes(receive_count=0) == sent
    aws.publish_to_queue(sent, queue)
    assert set(raw_attributes(aws, queue)) == {
        wire.MESSAGE_ID,
        wire.MANIFEST,
        wire.SERIALIZER_ID,
        wire.PACKED_HEADERS,
    }


def test_a_message_from_another_producer_is_read(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"))
    response = aws.sqs_client.send_message(
        QueueUrl=queue.obj,
        MessageBody="plain",
        MessageAttributes={
            "tenant": text("t-1"),
            "count": {"DataType": "Number", "StringValue": "42"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\xff"},
        },
    )
    [message] = receive(aws, queue, 1)
    assert message.message_id == response["MessageId"]
    assert (message.manifest, message.serializer_id) == (None, None)
    assert dict(message.metadata) == {"tenant": "t-1", "count": "42", "blob": b"\x00\xff"}


# -- messages melange cannot read --------------------------------------------------------------

# attributes another producer set by hand, what the reason says, the header that keeps the value
UNREADABLE: dict[str, tuple[dict[str, Any], str, tuple[str, str]]] = {
    "serializer-id-text": (
        {wire.SERIALIZER_ID: text("json")},
        "melange.serializer_id is not an integer: 'json'",
        (wire.SERIALIZER_ID, "json"),
    ),
    "serializer-id-decimal": (
        {wire.SERIALIZER_ID: {"DataType": "Number", "StringValue": "3.5"}},
        "melange.serializer_id is not an integer: '3.5'",
        (wire.SERIALIZER_ID, "3.5"),
    ),
    "serializer-id-binary": (
        {wire.SERIALIZER_ID: {"DataType": "Binary", "BinaryValue": b"\x03"}},
        "melange.serializer_id is not an integer: 'Aw=='",
        (wire.SERIALIZER_ID, "Aw=="),
    ),
    "packed-not-json": (
        {wire.PACKED_HEADERS: text('{"a": ')},
        "melange.headers is not JSON: Expecting value",
        (wire.PACKED_HEADERS, '{"a": '),
    ),
    "packed-a-list": (
        {wire.PACKED_HEADERS: text('["a", "b"]')},
        "melange.headers is not a JSON object of strings",
        (wire.PACKED_HEADERS, '["a", "b"]'),
    ),
    "packed-not-strings": (
        {wire.PACKED_HEADERS: text('{"attempts": 2}')},
        "melange.headers is not a JSON object of strings",
        (wire.PACKED_HEADERS, '{"attempts": 2}'),
    ),
}


@pytest.mark.parametrize(
    ("attributes", "reason", "kept"), list(UNREADABLE.values()), ids=list(UNREADABLE)
)
def test_an_unreadable_message_comes_back_undecodable_and_the_others_intact(
    aws: AWSBackend, attributes: dict[str, Any], reason: str, kept: tuple[str, str]
) -> None:
    queue, _ = aws.declare_queue(unique_name("q"), visibility_timeout=30)
    before = Message(content="before", metadata={"correlation_id": "c-1"}, serializer_id=1)
    after = Message(content="after", metadata={"k": "v"}, serializer_id=2, manifest="m")
    aws.publish_to_queue(before, queue)
    aws.sqs_client.send_message(
        QueueUrl=queue.obj,
        MessageBody="the original ✓ body",
        MessageAttributes={
            wire.MESSAGE_ID: text("bad-1"),
            wire.MANIFEST: text("orders.created"),
            "tenant": text("t-1"),
            **attributes,
        },
    )
    aws.publish_to_queue(after, queue)
    received = {m.content: m for m in receive(aws, queue, 3)}
    assert set(received) == {"before", "the original ✓ body", "after"}
    bad = received["the original ✓ body"]
    assert bad.metadata[DECODE_ERROR].startswith(reason)
    assert (bad.message_id, bad.manifest, bad.serializer_id) == ("bad-1", "orders.created", None)
    assert (bad.metadata["tenant"], bad.metadata[kept[0]]) == ("t-1", kept[1])
    assert bad.receive_count == 1
    for good, sent in ((received["before"], before), (received["after"], after)):
        assert DECODE_ERROR not in good.metadata
        assert good.with_changes(receive_count=0) == sent
    aws.acknowledge(bad)
    aws.acknowledge_batch([received["before"], received["after"]])
    assert held(aws, queue) == (0, 0)


def test_yield_messages_hands_out_an_unreadable_message_without_raising(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"))
    aws.sqs_client.send_message(
        QueueUrl=queue.obj,
        MessageBody="b",
        MessageAttributes={wire.PACKED_HEADERS: text("nope"), wire.SERIALIZER_ID: text("x")},
    )
    message = next(iter(aws.yield_messages(queue, wait_seconds=5)))
    reason = message.metadata[DECODE_ERROR]
    assert "melange.serializer_id is not an integer" in reason
    assert "melange.headers is not JSON" in reason
    assert message.content == "b"


def test_a_receive_count_that_is_not_an_integer_is_unknown_and_undecodable() -> None:
    # SQS itself writes the receive count: only a broken emulator can send this entry.
    entry = {
        "MessageId": "m-1",
        "ReceiptHandle": "h-1",
        "Body": "b",
        "Attributes": {"ApproximateReceiveCount": "many"},
        "MessageAttributes": {wire.SERIALIZER_ID: {"DataType": "Number", "StringValue": "3"}},
    }
    message = wire.message_from(entry, "url")
    assert message.receive_count == 0
    assert message.metadata[DECODE_ERROR] == "ApproximateReceiveCount is not an integer: 'many'"
    assert (message.content, message.message_id, message.receipt) == ("b", "m-1", ("url", "h-1"))
    entry["Attributes"] = {"ApproximateReceiveCount": "4"}
    readable = wire.message_from(entry, "url")
    assert (readable.receive_count, readable.serializer_id) == (4, 3)
    assert DECODE_ERROR not in readable.metadata


# -- limits ----------------------------------------------------------------------------------


def test_an_oversized_message_is_refused_before_any_request(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"))
    topic = aws.declare_topic(unique_name("t"))
    requests = Requests(aws)
    assert aws.max_message_size == 262_144
    big = Message(content="x" * 262_144)  # the attributes push it over
    multibyte = Message(content="é" * 131_073)  # fewer characters than the limit, more bytes
    with pytest.raises(MessageTooLargeError, match="262144") as refused:
        aws.publish_to_queue(big, queue)
    assert refused.value.limit == 262_144
    assert refused.value.size > 262_144
    attempts: list[Callable[[], object]] = [
        lambda: aws.publish_to_queue(multibyte, queue),
        lambda: aws.publish_to_topic(big, topic),
        lambda: aws.publish_delayed_to_queue(big, queue, 1),
        lambda: aws.publish_batch_to_queue([Message(content="ok"), big], queue),
        lambda: aws.publish_batch_to_topic([Message(content="ok"), big], topic),
    ]
    for attempt in attempts:
        with pytest.raises(MessageTooLargeError):
            attempt()
    assert requests.total == 0


def test_a_dead_letter_copy_that_no_longer_fits_is_refused_before_any_request(
    aws: AWSBackend,
) -> None:
    queue, dead_letter = aws.declare_queue(
        unique_name("q"), dead_letter_queue_name=unique_name("dlq")
    )
    assert dead_letter is not None
    assert aws.max_message_size == 262_144
    probe = Message(content="", manifest="m", serializer_id=1, metadata={"correlation_id": "c"})
    room = aws.max_message_size - wire.size_of("", wire.attributes_for(probe))
    aws.publish_to_queue(probe.with_changes(content="x" * room), queue)
    [received] = receive(aws, queue, 1)
    errors = {"error_type": "RuntimeError", "error_message": "boom", "traceback": "t" * 500}
    copy = received.with_changes(metadata={**received.metadata, **errors})
    requests = Requests(aws)
    with pytest.raises(MessageTooLargeError) as refused:
        aws.publish_to_queue(copy, dead_letter)
    assert requests.total == 0
    assert refused.value.size == wire.size_of(copy.content, wire.attributes_for(copy))
    assert refused.value.size > refused.value.limit == 262_144
    aws.publish_to_queue(received, dead_letter)  # with the headers it came with, it fits
    assert requests.calls == Counter({"SendMessage": 1})
    [dead] = receive(aws, dead_letter, 1)
    assert dead.content == received.content


def test_without_a_size_limit_the_broker_decides(aws: AWSBackend) -> None:
    aws.max_message_size = None
    queue, _ = aws.declare_queue(unique_name("q"))
    requests = Requests(aws)
    with pytest.raises(PublishError, match="shorter than"):  # the queue's MaximumMessageSize
        aws.publish_to_queue(Message(content="x" * 1_100_000), queue)
    assert requests.calls == Counter({"SendMessage": 1})


def test_a_message_of_exactly_the_limit_is_sent(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"))
    probe = Message(content="", manifest="m")
    assert aws.max_message_size is not None
    room = aws.max_message_size - wire.size_of("", wire.attributes_for(probe))
    exact = probe.with_changes(content="x" * room)
    aws.publish_to_queue(exact, queue)
    [received] = receive(aws, queue, 1)
    assert len(received.content) == room


def test_batch_publish_of_25_makes_3_send_message_batch_calls(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"))
    requests = Requests(aws)
    aws.publish_batch_to_queue([Message(content=str(n)) for n in range(25)], queue)
    assert requests.calls == Counter({"SendMessageBatch": 3})
    assert [len(p["Entries"]) for p in requests.of("SendMessageBatch")] == [10, 10, 5]
    assert sorted(int(m.content) for m in receive(aws, queue, 25)) == list(range(25))


def test_topic_batch_of_25_makes_3_publish_batch_calls(aws: AWSBackend) -> None:
    topic = aws.declare_topic(unique_name("t"))
    queue, _ = aws.declare_queue(unique_name("q"), topic)
    requests = Requests(aws)
    aws.publish_batch_to_topic([Message(content=str(n)) for n in range(25)], topic)
    assert requests.calls == Counter({"PublishBatch": 3})
    assert sorted(int(m.content) for m in receive(aws, queue, 25)) == list(range(25))


def test_batches_are_split_by_size_too(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"))
    requests = Requests(aws)
    aws.publish_batch_to_queue([Message(content="x" * 100_000) for _ in range(4)], queue)
    assert [len(p["Entries"]) for p in requests.of("SendMessageBatch")] == [2, 2]
    assert len(receive(aws, queue, 4)) == 4


def test_entries_a_batch_refuses_are_reported_and_the_rest_delivered(aws: AWSBackend) -> None:
    # SNS takes 256 KiB: with melange's own check raised, SNS refuses that one entry.
    aws.max_message_size = 400_000
    topic = aws.declare_topic(unique_name("t"))
    queue, _ = aws.declare_queue(unique_name("q"), topic)
    small = [Message(content=f"small-{n}") for n in range(3)]
    big = Message(content="x" * 300_000)
    with pytest.raises(BatchPublishError) as refused:
        aws.publish_batch_to_topic([small[0], big, small[1], small[2]], topic)
    [(message, reason)] = refused.value.failed
    assert message is big
    assert "too long" in reason
    assert sorted(m.content for m in receive(aws, queue, 3)) == [m.content for m in small]


def test_a_failed_later_request_reports_every_unsent_message(aws: AWSBackend) -> None:
    # moto refuses a SendMessageBatch over 1 MiB as a whole; melange's limits are raised
    # so that the second request is the one refused, after the first was sent.
    aws.max_message_size = aws.max_batch_bytes = 2_000_000
    queue, _ = aws.declare_queue(unique_name("q"))
    first = [Message(content=str(n)) for n in range(10)]
    unsent = [Message(content="x" * 600_000) for _ in range(2)]
    with pytest.raises(BatchPublishError) as refused:
        aws.publish_batch_to_queue([*first, *unsent], queue)
    assert [message for message, _ in refused.value.failed] == unsent
    assert isinstance(refused.value.__cause__, PublishError)
    assert sorted(m.content for m in receive(aws, queue, 10)) == sorted(m.content for m in first)
    with pytest.raises(PublishError) as whole:  # the first request: nothing was sent
        aws.publish_batch_to_queue(unsent, queue)
    assert not isinstance(whole.value, BatchPublishError)


def test_delays_are_whole_seconds_and_within_sqs_limits(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"))
    fifo, _ = aws.declare_queue(unique_name("q") + ".fifo")
    requests = Requests(aws)
    with pytest.raises(UnsupportedOperationError, match="900"):
        aws.publish_delayed_to_queue(Message(content="x"), queue, 901)
    with pytest.raises(UnsupportedOperationError, match="FIFO"):
        aws.publish_delayed_to_queue(Message(content="x"), fifo, 5)
    assert requests.total == 0
    aws.publish_delayed_to_queue(Message(content="x"), queue, 0.5)
    assert requests.of("SendMessage")[0]["DelaySeconds"] == 1


# -- receiving and acknowledging -------------------------------------------------------------


def test_receiving_long_polls_ten_at_a_time(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"))
    aws.publish_batch_to_queue([Message(content=str(n)) for n in range(30)], queue)
    requests = Requests(aws)  # 30 waiting: no request below has to wait
    assert int(next(iter(aws.yield_messages(queue))).content) in range(30)
    aws.retrieve_messages(queue, max_messages=50, wait_seconds=0.3)
    aws.retrieve_messages(queue, wait_seconds=60)
    received = requests.of("ReceiveMessage")
    assert [(p["MaxNumberOfMessages"], p["WaitTimeSeconds"]) for p in received] == [
        (10, 20),
        (10, 1),
        (10, 20),
    ]


def test_acknowledge_batch_deletes_ten_per_request_per_queue(aws: AWSBackend) -> None:
    first, _ = aws.declare_queue(unique_name("a"), visibility_timeout=1)
    second, _ = aws.declare_queue(unique_name("b"), visibility_timeout=1)
    aws.publish_batch_to_queue([Message(content=str(n)) for n in range(15)], first)
    aws.publish_batch_to_queue([Message(content=str(n)) for n in range(10)], second)
    received = receive(aws, first, 15) + receive(aws, second, 10)
    requests = Requests(aws)
    aws.acknowledge_batch(received)
    assert requests.calls == Counter({"DeleteMessageBatch": 3})
    time.sleep(1.2)
    assert aws.retrieve_messages(first, wait_seconds=1) == []
    assert aws.retrieve_messages(second, wait_seconds=0) == []


def test_release_rounds_the_delay_up(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"), visibility_timeout=30)
    aws.publish_to_queue(Message(content="r"), queue)
    [message] = receive(aws, queue, 1)
    requests = Requests(aws)
    aws.release(message, 0.2)
    assert requests.of("ChangeMessageVisibility")[0]["VisibilityTimeout"] == 1
    [again] = receive(aws, queue, 1, timeout=10)
    assert again.receive_count == 2


def test_extend_visibility_keeps_a_message_hidden_longer_in_one_request(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"), visibility_timeout=1)
    aws.publish_to_queue(Message(content="slow"), queue)
    [message] = receive(aws, queue, 1)
    requests = Requests(aws)
    aws.extend_visibility(message, 2.2)
    assert requests.calls == Counter({"ChangeMessageVisibility": 1})
    assert requests.of("ChangeMessageVisibility")[0]["VisibilityTimeout"] == 3
    quiet_until = time.monotonic() + 2  # its own 1 s timeout would have shown it by now
    while time.monotonic() < quiet_until:
        assert aws.retrieve_messages(queue) == []
        time.sleep(0.1)
    [again] = receive(aws, queue, 1, timeout=5)
    assert (again.content, again.receive_count) == ("slow", 2)


def test_extend_visibility_batch_sends_ten_receipts_per_request(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"), visibility_timeout=30)
    aws.publish_batch_to_queue([Message(content=str(n)) for n in range(12)], queue)
    messages = receive(aws, queue, 12)
    aws.acknowledge(messages[0])  # its receipt is gone: not a failure
    requests = Requests(aws)
    aws.extend_visibility_batch(messages, 0.5)
    assert requests.calls == Counter({"ChangeMessageVisibilityBatch": 2})
    sent = requests.of("ChangeMessageVisibilityBatch")
    assert [len(r["Entries"]) for r in sent] == [10, 2]
    assert {e["VisibilityTimeout"] for r in sent for e in r["Entries"]} == {1}
    again = receive(aws, queue, 11, timeout=10)  # 1 s from now, not 30
    assert sorted(m.content for m in again) == sorted(m.content for m in messages[1:])


def test_extend_visibility_is_clamped_to_what_sqs_takes(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"), visibility_timeout=30)
    aws.publish_to_queue(Message(content="m"), queue)
    [message] = receive(aws, queue, 1)
    requests = Requests(aws)
    aws.extend_visibility(message, -5)  # 0: visible again at once
    [again] = receive(aws, queue, 1, timeout=5)
    assert again.receive_count == 2
    # 12 hours from now is past SQS's 12 hours in all: refused, and translated.
    with pytest.raises(BackendError, match="VisibilityTimeout") as refused:
        aws.extend_visibility(again, 50_000)
    assert isinstance(refused.value.__cause__, botocore.exceptions.ClientError)
    assert [p["VisibilityTimeout"] for p in requests.of("ChangeMessageVisibility")] == [0, 43_200]


def test_extend_visibility_after_acknowledge_is_a_quiet_no_op(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"), visibility_timeout=30)
    aws.publish_to_queue(Message(content="m"), queue)
    [message] = receive(aws, queue, 1)
    aws.acknowledge(message)
    requests = Requests(aws)
    aws.extend_visibility(message, 30)
    assert requests.calls == Counter({"ChangeMessageVisibility": 1})
    assert held(aws, queue) == (0, 0)


# -- errors -------------------------------------------------------------------------------------


def test_a_missing_queue_or_topic_is_a_typed_error(aws: AWSBackend) -> None:
    with pytest.raises(QueueNotFoundError) as missing:
        aws.get_queue(unique_name("ghost"))
    assert isinstance(missing.value.__cause__, botocore.exceptions.ClientError)
    queue, _ = aws.declare_queue(unique_name("q"))
    aws.delete_queue(queue)
    attempts: list[Callable[[], object]] = [
        lambda: aws.publish_to_queue(Message(content="x"), queue),
        lambda: aws.publish_batch_to_queue([Message(content="x")], queue),
        lambda: aws.retrieve_messages(queue),
        lambda: aws.queue_policy(queue),
    ]
    for attempt in attempts:
        with pytest.raises(QueueNotFoundError):
            attempt()
    topic = aws.declare_topic(unique_name("t"))
    aws.delete_topic(topic)
    with pytest.raises(TopicNotFoundError):
        aws.publish_to_topic(Message(content="x"), TopicWrapper(topic.obj))
    with pytest.raises(TopicNotFoundError):
        aws.publish_batch_to_topic([Message(content="x")], TopicWrapper(topic.obj))
    with pytest.raises(TopicNotFoundError):
        aws.declare_queue(unique_name("q"), TopicWrapper(topic.obj))


def test_an_unreachable_endpoint_is_a_connection_error() -> None:
    no_retries = Config(retries={"total_max_attempts": 1}, connect_timeout=2)
    backend = LocalSQSBackend("127.0.0.1", free_port(), config=no_retries)
    with backend, pytest.raises(BackendConnectionError) as unreachable:
        backend.get_queue("anything")
    assert isinstance(unreachable.value.__cause__, botocore.exceptions.EndpointConnectionError)


def test_url_timeout_options_bound_the_wait_for_an_unreachable_endpoint() -> None:
    port = free_port()
    url = f"sqs://127.0.0.1:{port}?connect_timeout=1.5&read_timeout=25&max_attempts=2"
    with from_url(url) as backend:
        assert isinstance(backend, AWSBackend)
        for client in (backend.sqs_client, backend.sns_client):
            config = cast(Any, client.meta.config)
            assert (config.connect_timeout, config.read_timeout) == (1.5, 25)
            assert config.retries == {"total_max_attempts": 2, "mode": "standard"}
        attempts: list[str] = []
        backend.sqs_client.meta.events.register(
            "before-send", lambda request, **_: attempts.append(request.url)
        )
        with pytest.raises(BackendConnectionError, match=f"127.0.0.1:{port}"):
            backend.get_queue("anything")
    assert len(attempts) == 2


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("connect_timeout=soon", "bad timeout option"),
        ("connect_timeout=0", "connect_timeout"),
        ("read_timeout=5", "longest receive poll"),
        ("max_attempts=0", "max_attempts"),
    ],
)
def test_bad_timeout_options_are_refused(query: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        from_url(f"sqs://127.0.0.1:9324?{query}")


def client_error(code: str, operation: str = "SendMessage") -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError({"Error": {"Code": code, "Message": "m"}}, operation)


@pytest.mark.parametrize(
    ("error", "publishing", "expected"),
    [
        (client_error("AWS.SimpleQueueService.NonExistentQueue"), False, QueueNotFoundError),
        (client_error("QueueDoesNotExist"), True, QueueNotFoundError),
        (client_error("NotFound", "Publish"), True, TopicNotFoundError),
        (client_error("Throttling"), True, PublishError),
        (client_error("Throttling"), False, BackendError),
        (
            botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"),
            False,
            BackendConnectionError,
        ),
        (
            botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"),
            True,
            BackendConnectionError,
        ),
        (botocore.exceptions.NoCredentialsError(), False, ConfigurationError),
        (botocore.exceptions.NoRegionError(), False, ConfigurationError),
        (botocore.exceptions.ParamValidationError(report="bad"), True, PublishError),
    ],
)
def test_boto_errors_map_to_melange_errors(
    error: Exception, publishing: bool, expected: type[Exception]
) -> None:
    with pytest.raises(expected) as raised, translated("doing it", publishing=publishing):
        raise error
    assert type(raised.value) is expected
    assert raised.value.__cause__ is error
    assert str(raised.value).startswith("doing it")


def test_tolerated_codes_end_the_block_quietly() -> None:
    with translated("release", tolerate=NOT_IN_FLIGHT_CODES):
        raise client_error("AWS.SimpleQueueService.MessageNotInflight", "ChangeMessageVisibility")
    with pytest.raises(BackendError), translated("release", tolerate=NOT_IN_FLIGHT_CODES):
        raise client_error("ReceiptHandleIsInvalid", "ChangeMessageVisibility")


@pytest.mark.parametrize(
    ("code", "text", "gone"),
    [
        ("AWS.SimpleQueueService.MessageNotInflight", "", True),
        ("ReceiptHandleIsInvalid", "The input receipt handle is invalid.", True),
        (
            "InvalidParameterValue",
            "Value AQEB for parameter ReceiptHandle is invalid. Reason: Message does not exist "
            "or is not available for visibility timeout change.",
            True,
        ),
        (
            "InvalidParameterValue",
            "Value 43200 for parameter VisibilityTimeout is invalid. Reason: Total "
            "VisibilityTimeout for the message is beyond the limit [43200 seconds]",
            False,
        ),
        ("AccessDenied", "parameter ReceiptHandle", False),
    ],
)
def test_a_receipt_sqs_no_longer_holds_is_told_apart(code: str, text: str, gone: bool) -> None:
    assert receipt_gone(code, text) is gone
    error = botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": text}}, "ChangeMessageVisibility"
    )
    if gone:
        with translated("extend", tolerate=receipt_gone):
            raise error
        return
    with pytest.raises(BackendError) as refused, translated("extend", tolerate=receipt_gone):
        raise error
    assert refused.value.__cause__ is error


def test_unknown_options_are_refused(aws: AWSBackend) -> None:
    queue, _ = aws.declare_queue(unique_name("q"))
    topic = aws.declare_topic(unique_name("t"))
    with pytest.raises(TypeError, match="group"):
        aws.publish_to_queue(Message(content="x"), queue, group="g")
    with pytest.raises(TypeError, match="Ttl"):
        aws.publish_to_topic(Message(content="x"), topic, {"Ttl": "1"})
    with pytest.raises(TypeError, match="durable"):
        aws.declare_queue(unique_name("q"), durable=True)


# -- construction ---------------------------------------------------------------------------------


def test_from_url_forms(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    local = from_url(moto.url)
    assert isinstance(local, LocalSQSBackend)
    with local:
        queue, _ = local.declare_queue(unique_name("q"))
        assert queue.obj.startswith(moto.endpoint)
        assert local.sqs_client.meta.region_name == moto.region
    secure = AWSBackend.from_url("sqs://localhost:4566?region=eu-west-1&secure=true")
    assert secure.sns_client.meta.endpoint_url == "https://localhost:4566"
    assert secure.sqs_client.meta.region_name == "eu-west-1"

    real = from_url("sqs://?region=eu-west-1")
    assert type(real) is AWSBackend
    assert real.sqs_client.meta.endpoint_url == "https://sqs.eu-west-1.amazonaws.com"

    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(ConfigurationError, match="region"):
        from_url("sqs://")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    chain = from_url("sqs://")
    assert type(chain) is AWSBackend
    assert chain.sns_client.meta.region_name == "ap-south-1"

    with pytest.raises(ConfigurationError, match="regoin"):
        from_url("sqs://127.0.0.1:9324?regoin=us-east-1")
    with pytest.raises(ConfigurationError, match="host:port"):
        LocalSQSBackend.from_url("sqs://")


def test_clients_take_session_and_client_options(moto: MotoServer) -> None:
    with AWSBackend(**moto.client_options(), config=Config(read_timeout=30)) as backend:
        assert cast(Any, backend.sqs_client.meta.config).read_timeout == 30
        queue, _ = backend.declare_queue(unique_name("q"))
        assert backend.get_queue(queue.obj.rsplit("/", 1)[1]) == queue
    assert backend.sqs_client.meta.region_name == moto.region


def test_without_boto3_the_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['boto3'] = None\n"
        "try:\n"
        "    import melange.backends.sqs\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == (
        "MissingExtraError boto3 is not installed: pip install 'melange[sqs]'"
    )


class Fails(Consumer):
    @listener
    def on_created(self, event: OrderCreated) -> None:
        raise RuntimeError("refused: " + "x" * 2000)


def test_a_dead_letter_copy_near_the_size_limit_is_made_to_fit(aws: AWSBackend) -> None:
    name = unique_name("big")
    dispatcher = MessageDispatcher(aws, consumers=[Fails()], retry=RetryPolicy.none())
    dispatcher.declare(name, visibility_timeout=5)
    publisher = MessagePublisher(aws)
    probe = publisher.build_message(OrderCreated(order_id=""))
    room = aws.max_message_size - wire.size_of(probe.content, wire.attributes_for(probe))
    sent = publisher.publish(OrderCreated(order_id="o" * (room - 10)), queue=name)
    assert wire.size_of(sent.content, wire.attributes_for(sent)) > aws.max_message_size - 20
    assert dispatcher.consume_loop(name, idle_timeout=1) == 1
    [dead] = receive(aws, aws.get_queue(f"{name}-dlq"), 1, timeout=10)
    assert dead.content == sent.content  # the content survives whole
    assert dead.message_id == sent.message_id
    assert dead.metadata["error_stage"] == "handle"
    assert held(aws, aws.get_queue(name)) == (0, 0)  # not left cycling
