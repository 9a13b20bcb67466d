"""``wire="melange7"``: melange and the original Melange 7.x read each other on SNS/SQS.

Melange 7.3 is not on PyPI, so its side is its documented wire reproduced
with raw boto3 (``Melange7`` below): what its ``publish_to_queue`` and
``publish_to_topic`` send, how its ``declare_queue`` subscribes (no raw
delivery, a filter policy on ``manifest``), and how its consumer decodes a
received message. All against moto's HTTP server.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from melange import MessagePublisher
from melange.backends import from_url
from melange.backends.sqs import LocalSQSBackend
from melange.backends.sqs._melange7 import unwrapped
from melange.exceptions import ConfigurationError
from melange.serializers import SerializerRegistry
from melange.testing import receive
from tests.servers.moto import MotoServer

pytestmark = pytest.mark.sqs


class OrderPlaced(BaseModel):
    __melange_manifest__ = "melange7.order_placed"
    order_id: str


class Melange7:
    """Melange 7.3's SNS/SQS wire, as its sync backend writes and reads it, over boto3."""

    def __init__(self, backend: LocalSQSBackend) -> None:
        self.sqs, self.sns = backend.sqs_client, backend.sns_client

    def declare_queue(self, name: str, topic_arn: str | None = None, **filters: Any) -> str:
        url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        if topic_arn is not None:
            arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            queue_arn = arn["Attributes"]["QueueArn"]
            subscription = self.sns.subscribe(
                TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn
            )
            policy = json.dumps({"manifest": filters["filter_events"]} if filters else {})
            self.sns.set_subscription_attributes(
                SubscriptionArn=subscription["SubscriptionArn"],
                AttributeName="FilterPolicy",
                AttributeValue=policy,
            )
        return url

    @staticmethod
    def attributes(manifest: str, serializer_id: int) -> dict[str, Any]:
        return {
            "manifest": {"DataType": "String", "StringValue": manifest},
            "serializer_id": {"DataType": "Number", "StringValue": str(serializer_id)},
        }

    def send(self, url: str, content: str, manifest: str, serializer_id: int) -> None:
        self.sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps({"Message": content}),
            MessageAttributes=self.attributes(manifest, serializer_id),
        )

    def publish(self, topic_arn: str, content: str, manifest: str, serializer_id: int) -> None:
        self.sns.publish(
            TopicArn=topic_arn,
            Message=content,
            MessageAttributes=self.attributes(manifest, serializer_id),
        )

    def receive(self, url: str, expected: int) -> list[tuple[Any, str | None, int | None]]:
        """Receive as Melange 7's consumer does: (content, manifest, serializer id) each."""
        messages: list[Any] = []
        deadline = time.monotonic() + 30
        while len(messages) < expected and time.monotonic() < deadline:
            response = self.sqs.receive_message(
                QueueUrl=url,
                MessageAttributeNames=["All"],
                WaitTimeSeconds=1,
                MaxNumberOfMessages=10,
            )
            messages += response.get("Messages", [])
        decoded = []
        for message in messages:
            manifest: Any = None
            serializer_id: Any = None
            try:
                body: Any = json.loads(message["Body"])
                if "Message" in body:
                    content = body["Message"]
                    if "MessageAttributes" in body:
                        manifest = body["MessageAttributes"].get("manifest", {}).get("Value", "")
                        serializer_id = body["MessageAttributes"]["serializer_id"]["Value"]
                else:
                    content = body
            except json.JSONDecodeError:
                content = message["Body"]
            attributes = message.get("MessageAttributes")
            try:
                manifest = manifest or attributes["manifest"]["StringValue"]  # type: ignore[index]
                serializer_id = int(
                    serializer_id or attributes["serializer_id"]["StringValue"]  # type: ignore[index]
                )
            except Exception:
                manifest = serializer_id = None
            decoded.append((content, manifest, serializer_id))
            self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        return decoded


@pytest.fixture
def aws7(moto: MotoServer) -> Iterator[LocalSQSBackend]:
    with LocalSQSBackend(moto.host, moto.port, region=moto.region, wire="melange7") as backend:
        yield backend


@pytest.fixture
def old(aws7: LocalSQSBackend) -> Melange7:
    return Melange7(aws7)


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- Melange 7 producer -> melange consumer ---------------------------------------------


def test_what_melange7_sends_to_a_queue_is_read_with_its_manifest_and_serializer(
    aws7: LocalSQSBackend, old: Melange7
) -> None:
    queue_name = name("orders")
    url = old.declare_queue(queue_name)
    old.send(url, '{"order_id": "o-1"}', "json", 1)
    [message] = receive(aws7, aws7.get_queue(queue_name), 1, timeout=30)
    assert (message.content, message.manifest, message.serializer_id) == (
        '{"order_id": "o-1"}',
        "json",
        1,
    )
    assert "manifest" not in message.metadata  # read as the wire's own, not as headers
    registry = SerializerRegistry()
    assert registry.deserialize(message.content, message.manifest, message.serializer_id) == {
        "order_id": "o-1"
    }


def test_what_melange7_publishes_to_a_topic_arrives_in_the_envelope_and_is_read(
    aws7: LocalSQSBackend, old: Melange7
) -> None:
    topic = aws7.declare_topic(name("placed"))
    queue_name = name("orders")
    old.declare_queue(queue_name, topic.unwrap())  # Melange 7's subscription: the envelope
    old.publish(topic.unwrap(), '{"order_id": "o-2"}', "json", 1)
    [message] = receive(aws7, aws7.get_queue(queue_name), 1, timeout=30)
    assert (message.content, message.manifest, message.serializer_id) == (
        '{"order_id": "o-2"}',
        "json",
        1,
    )


def test_melange7_filter_policies_on_the_manifest_keep_other_events_out(
    aws7: LocalSQSBackend, old: Melange7
) -> None:
    topic = aws7.declare_topic(name("events"))
    wanted, everything = name("wanted"), name("everything")
    old.declare_queue(wanted, topic.unwrap(), filter_events=["Banana"])
    old.declare_queue(everything, topic.unwrap())
    old.publish(topic.unwrap(), '"b"', "Banana", 1)
    old.publish(topic.unwrap(), '"n"', "NotBanana", 1)
    got = receive(aws7, aws7.get_queue(everything), 2, timeout=30)
    assert sorted(m.manifest or "" for m in got) == ["Banana", "NotBanana"]
    kept = receive(aws7, aws7.get_queue(wanted), 1, timeout=30)
    kept += receive(aws7, aws7.get_queue(wanted), 1, timeout=2)  # and nothing else comes
    assert [m.manifest for m in kept] == ["Banana"]


# -- melange producer -> Melange 7 consumer ---------------------------------------------


def test_melange_sends_to_a_queue_as_melange7_reads_it(
    aws7: LocalSQSBackend, old: Melange7
) -> None:
    queue_name = name("orders")
    queue, _ = aws7.declare_queue(queue_name)
    publisher = MessagePublisher(aws7)
    publisher.publish({"order_id": "o-3"}, queue=queue_name)
    event = publisher.publish(OrderPlaced(order_id="o-4"), queue=queue_name)
    got = sorted(old.receive(queue.unwrap(), 2))  # a standard queue keeps no order
    assert got == [
        ('{"order_id":"o-3"}', "json", 1),
        ('{"order_id":"o-4"}', "melange7.order_placed", event.serializer_id),
    ]


def test_melange_publishes_to_a_topic_as_melange7_reads_it_from_its_envelope(
    aws7: LocalSQSBackend, old: Melange7
) -> None:
    topic_name = name("placed")
    topic = aws7.declare_topic(topic_name)
    queue, _ = aws7.declare_queue(name("orders"), topic)  # no raw delivery on this wire
    MessagePublisher(aws7).publish_batch([{"order_id": "o-5"}], topic=topic_name)
    assert old.receive(queue.unwrap(), 1) == [('{"order_id":"o-5"}', "json", 1)]


def test_a_melange7_backend_still_reads_melanges_own_wire(
    aws7: LocalSQSBackend, moto: MotoServer
) -> None:
    queue_name = name("orders")
    aws7.declare_queue(queue_name)
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as today:
        # A body that looks like Melange 7's wrapping is content on melange's wire.
        sent = MessagePublisher(today).publish({"Message": "not a wrapper"}, queue=queue_name)
    [message] = receive(aws7, aws7.get_queue(queue_name), 1, timeout=30)
    assert (message.message_id, message.content) == (sent.message_id, sent.content)


# -- the decoding never raises ----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "",
        "[1, 2]",
        "{",
        '{"Message": 5}',
        '{"Message": "x", "Type": "Notification", "TopicArn": "t", "MessageAttributes": 3}',
        '{"Message": "x", "Type": "Notification", "TopicArn": "t",'
        ' "MessageAttributes": {"manifest": {"Type": "Binary", "Value": "%%%"}, "a": 1}}',
        "[" * 100_000,
    ],
)
def test_foreign_bodies_are_unwrapped_without_raising(body: str) -> None:
    received = {"Body": body, "MessageId": "m-1", "MessageAttributes": None}
    result = unwrapped(received)
    assert isinstance(result.get("Body"), str)


def test_the_wire_option_is_checked_and_read_from_urls(moto: MotoServer) -> None:
    with pytest.raises(ConfigurationError, match="wire"):
        LocalSQSBackend(moto.host, moto.port, wire="melange6")
    backend = from_url(f"{moto.url}&wire=melange7")
    assert isinstance(backend, LocalSQSBackend)
    assert backend.wire == "melange7"
    backend.close_connection()


# -- filter_events: an SNS filter policy on the manifest ---------------------------------


class Requests:
    """Counts the SQS requests a backend makes (``before-send``)."""

    def __init__(self, backend: LocalSQSBackend) -> None:
        self.count = 0
        backend.sqs_client.meta.events.register("before-send", self._sent)

    def _sent(self, **kwargs: Any) -> None:
        self.count += 1


@pytest.mark.parametrize("wire", ["melange", "melange7"])
def test_filter_events_keeps_other_events_out_of_the_queue(moto: MotoServer, wire: str) -> None:
    """20 wanted events among 200: received, and SQS requests per wanted event, with and without."""
    figures = {}
    with LocalSQSBackend(moto.host, moto.port, region=moto.region, wire=wire) as backend:
        topic_name = name("mixed")
        topic = backend.declare_topic(topic_name)
        publisher = MessagePublisher(backend)
        for filtered in (False, True):
            queue_name = name("orders")
            options = {"filter_events": [OrderPlaced.__melange_manifest__]} if filtered else {}
            queue, _ = backend.declare_queue(queue_name, topic, **options)
            events: list[Any] = []
            for n in range(200):
                events.append(OrderPlaced(order_id=f"o-{n}") if n % 10 == 0 else {"noise": n})
            for first in range(0, 200, 10):
                publisher.publish_batch(events[first : first + 10], topic=topic_name)
            requests = Requests(backend)
            # Everything that arrives, to reach the 20 wanted ones: 200 without the filter.
            got = receive(backend, queue, 20 if filtered else 200, timeout=60)
            asked = requests.count
            got += receive(backend, queue, 200, timeout=2)  # and nothing else comes
            wanted = [m for m in got if m.manifest == OrderPlaced.__melange_manifest__]
            figures[filtered] = (len(got), len(wanted), asked / len(wanted))
            backend.delete_queue(queue)
    (all_got, all_wanted, _), (kept_got, kept_wanted, _) = figures[False], figures[True]
    assert (all_got, all_wanted) == (200, 20)
    assert (kept_got, kept_wanted) == (20, 20)
    assert figures[True][2] < figures[False][2]
    before, after = figures[False][2], figures[True][2]
    print(f"\nSQS requests per wanted event ({wire}): {before:.2f} -> {after:.2f}")


def test_filter_events_must_be_manifests(aws7: LocalSQSBackend) -> None:
    topic = aws7.declare_topic(name("t"))
    for bad in ("one-string", [], [""], [f"m{n}" for n in range(151)]):
        with pytest.raises(ConfigurationError, match="filter_events"):
            aws7.declare_queue(name("q"), topic, filter_events=bad)
