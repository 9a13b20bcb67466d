"""SNS topics and SQS queues over boto3: AWS itself or any compatible endpoint."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from melange.backends import sqs_wire as wire
from melange.backends.interfaces import MessagingBackend
from melange.exceptions import (
    BackendConnectionError,
    BackendError,
    BatchPublishError,
    MissingExtraError,
    QueueNotFoundError,
    TopicNotFoundError,
    UnsupportedOperationError,
)
from melange.models import Message, QueueWrapper, TopicWrapper

try:
    import boto3
    import botocore.exceptions
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("boto3", "sqs") from e

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

__all__ = ["AWSBackend", "LocalSQSBackend"]

_MISSING_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_MISSING_TOPIC = {"NotFound", "NotFoundException"}
_MAX_DELAY_SECONDS = 900
_MAX_VISIBILITY_SECONDS = 43_200


@contextmanager
def _translated(what: str, queue: bool = False, topic: bool = False) -> Iterator[None]:
    """Turn boto3/botocore errors into melange's: the one place this backend does it."""
    try:
        yield
    except botocore.exceptions.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if queue and code in _MISSING_QUEUE:
            raise QueueNotFoundError(f"{what}: the queue does not exist") from e
        if topic and code in _MISSING_TOPIC:
            raise TopicNotFoundError(f"{what}: the topic does not exist") from e
        raise BackendError(f"{what}: {code}: {e}") from e
    except (
        botocore.exceptions.EndpointConnectionError,
        botocore.exceptions.ConnectionClosedError,
        botocore.exceptions.ConnectTimeoutError,
        botocore.exceptions.ReadTimeoutError,
    ) as e:
        raise BackendConnectionError(f"{what}: {e}") from e
    except botocore.exceptions.BotoCoreError as e:
        raise BackendError(f"{what}: {e}") from e


class AWSBackend(MessagingBackend):
    """Topics are SNS topics, queues are SQS queues; options go to ``boto3.Session``/clients.

    ``declare_queue`` subscribes the queue to its topics with raw message
    delivery and writes a queue policy that lets exactly those topics send;
    a dead-letter queue gets a redrive policy with the caller's
    ``max_receive_count``. Names with characters SNS/SQS refuse (such as the
    dot of ``orders.created``) are mapped with ``_``. Names ending in
    ``.fifo`` make FIFO topics and queues.

    Manifest, serializer id, message id and headers travel as message
    attributes (headers are packed into one when more than 7). A message over
    256 KiB is refused before any request. Batches go 10 (and at most
    256 KiB) per request; acknowledgements are deleted in batches.
    """

    def __init__(self, **options: Any) -> None:
        session_keys = {
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
            "region_name",
            "profile_name",
            "botocore_session",
        }
        session = boto3.Session(**{k: v for k, v in options.items() if k in session_keys})
        client_options = {k: v for k, v in options.items() if k not in session_keys}
        self._sns: SNSClient = session.client("sns", **client_options)
        self._sqs: SQSClient = session.client("sqs", **client_options)
        self._topics: dict[str, str] = {}
        self._queue_urls: dict[str, str] = {}
        self._queue_arns: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> AWSBackend:
        """Build from ``sqs://`` (AWS, usual credentials) or ``sqs://host:port?region=…``.

        With a host the endpoint is ``http://host:port`` (``?secure=true`` for
        https) and dummy credentials are used unless the environment has some.
        """
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        region = query.get("region")
        if not parts.hostname:
            return cls(region_name=region) if region else cls()
        return LocalSQSBackend(
            parts.hostname,
            parts.port or 9324,
            region=region or "us-east-1",
            secure=query.get("secure", "false").lower() == "true",
        )

    @property
    def clients(self) -> tuple[Any, Any]:
        """Return the (sns, sqs) boto3 clients, e.g. to count requests."""
        return self._sns, self._sqs

    # -- topology --------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        arn = self._topics.get(topic_name)
        if arn is None:
            name = wire.entity_name(topic_name)
            attributes = {"FifoTopic": "true"} if name.endswith(".fifo") else {}
            with _translated(f"create topic {name}"):
                arn = self._sns.create_topic(Name=name, Attributes=attributes)["TopicArn"]
            with self._lock:
                self._topics[topic_name] = arn
        return TopicWrapper(arn)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        url = self._queue_urls.get(queue_name)
        if url is None:
            with _translated(f"get queue {queue_name}", queue=True):
                url = self._sqs.get_queue_url(QueueName=wire.entity_name(queue_name))["QueueUrl"]
            with self._lock:
                self._queue_urls[queue_name] = url
        return QueueWrapper(url)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float | None = None,
        max_receive_count: int | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        url = self._create_queue(queue_name)
        arn = self._queue_arn(url)
        attributes: dict[Any, str] = {}
        if visibility_timeout is not None:
            attributes["VisibilityTimeout"] = str(math.ceil(visibility_timeout))
        dead_letter = None
        if dead_letter_queue_name is not None:
            dead_letter = QueueWrapper(self._create_queue(dead_letter_queue_name))
            redrive = {
                "deadLetterTargetArn": self._queue_arn(dead_letter.obj),
                "maxReceiveCount": max_receive_count or self.default_max_receive_count,
            }
            attributes["RedrivePolicy"] = json.dumps(redrive)
        if topics_to_bind:
            with _translated(f"read policy of {queue_name}", queue=True):
                current = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"])
            allowed = wire.topics_in_policy(current.get("Attributes", {}).get("Policy"))
            allowed |= {topic.obj for topic in topics_to_bind}
            attributes["Policy"] = wire.queue_policy(arn, allowed)
        if attributes:
            with _translated(f"configure queue {queue_name}", queue=True):
                self._sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        for topic in topics_to_bind:
            with _translated(f"subscribe {queue_name} to {topic.obj}", topic=True):
                self._sns.subscribe(
                    TopicArn=topic.obj,
                    Protocol="sqs",
                    Endpoint=arn,
                    Attributes={"RawMessageDelivery": "true"},
                    ReturnSubscriptionArn=True,
                )
        return QueueWrapper(url), dead_letter

    def _create_queue(self, queue_name: str) -> str:
        name = wire.entity_name(queue_name)
        attributes: dict[Any, str] = {"FifoQueue": "true"} if name.endswith(".fifo") else {}
        with _translated(f"create queue {name}"):
            url = self._sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        with self._lock:
            self._queue_urls[queue_name] = url
        return url

    def _queue_arn(self, url: str) -> str:
        arn = self._queue_arns.get(url)
        if arn is None:
            with _translated(f"read queue {url}", queue=True):
                response = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            arn = response["Attributes"]["QueueArn"]
            with self._lock:
                self._queue_arns[url] = arn
        return arn

    def queue_policy(self, queue: QueueWrapper) -> str | None:
        """Return the queue's access policy JSON, as SQS holds it."""
        with _translated("read queue policy", queue=True):
            response = self._sqs.get_queue_attributes(QueueUrl=queue.obj, AttributeNames=["Policy"])
        return response.get("Attributes", {}).get("Policy")

    def delete_queue(self, queue: QueueWrapper) -> None:
        arn = self._queue_arn(queue.obj)
        with _translated("list subscriptions"):
            pages = self._sns.get_paginator("list_subscriptions").paginate()
            subscriptions = [s for page in pages for s in page["Subscriptions"]]
        for subscription in subscriptions:
            if subscription["Endpoint"] == arn:
                with _translated("unsubscribe"):
                    self._sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
        with _translated("delete queue", queue=True):
            self._sqs.delete_queue(QueueUrl=queue.obj)
        with self._lock:
            self._queue_urls = {k: v for k, v in self._queue_urls.items() if v != queue.obj}
            self._queue_arns.pop(queue.obj, None)

    def delete_topic(self, topic: TopicWrapper) -> None:
        with _translated("list topic subscriptions", topic=True):
            pages = self._sns.get_paginator("list_subscriptions_by_topic").paginate(
                TopicArn=topic.obj
            )
            subscriptions = [s["SubscriptionArn"] for page in pages for s in page["Subscriptions"]]
        for arn in subscriptions:
            with _translated("unsubscribe"):
                self._sns.unsubscribe(SubscriptionArn=arn)
        with _translated("delete topic", topic=True):
            self._sns.delete_topic(TopicArn=topic.obj)
        with self._lock:
            self._topics = {k: v for k, v in self._topics.items() if v != topic.obj}

    # -- publishing --------------------------------------------------------------------

    def publish_to_topic(
        self,
        message: Message,
        topic: TopicWrapper,
        extra_attributes: dict[str, Any] | None = None,
    ) -> None:
        """Publish to an SNS topic; ``extra_attributes`` may set ``MessageGroupId``
        and ``MessageDeduplicationId`` (FIFO topics) or go to ``Publish`` as they are."""
        attributes = wire.attributes_for(message)
        wire.check_size(message, attributes, topic.obj)
        request: dict[str, Any] = {
            "TopicArn": topic.obj,
            "Message": message.content,
            "MessageAttributes": attributes,
        }
        request.update(_fifo(message, topic.obj, extra_attributes or {}))
        with _translated(f"publish to {topic.obj}", topic=True):
            self._sns.publish(**request)

    def publish_batch_to_topic(self, messages: Sequence[Message], topic: TopicWrapper) -> None:
        def publish(entries: list[Any]) -> Any:
            with _translated(f"publish batch to {topic.obj}", topic=True):
                return self._sns.publish_batch(
                    TopicArn=topic.obj, PublishBatchRequestEntries=entries
                )

        _send_in_batches(messages, topic.obj, "Message", publish)

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """Send to an SQS queue; FIFO queues take ``message_group_id`` and
        ``message_deduplication_id`` (defaults: ``"default"`` and the message id)."""
        self._send(message, queue, 0, kwargs)

    def publish_delayed_to_queue(self, message: Message, queue: QueueWrapper, delay: float) -> None:
        """Send with ``DelaySeconds`` (SQS allows at most 900 s).

        Raises:
            UnsupportedOperationError: over 900 s, or a FIFO queue (no per-message delay).
        """
        seconds = math.ceil(max(delay, 0.0))
        if seconds > _MAX_DELAY_SECONDS:
            raise UnsupportedOperationError(f"SQS delays a message at most 900 s, not {seconds}")
        if seconds and queue.obj.endswith(".fifo"):
            raise UnsupportedOperationError("FIFO queues cannot delay a single message")
        self._send(message, queue, seconds, {})

    def _send(
        self, message: Message, queue: QueueWrapper, delay: int, options: dict[str, Any]
    ) -> None:
        attributes = wire.attributes_for(message)
        wire.check_size(message, attributes, queue.obj)
        request: dict[str, Any] = {
            "QueueUrl": queue.obj,
            "MessageBody": message.content,
            "MessageAttributes": attributes,
        }
        if delay:
            request["DelaySeconds"] = delay
        request.update(
            _fifo(
                message,
                queue.obj,
                {
                    "MessageGroupId": options.get("message_group_id"),
                    "MessageDeduplicationId": options.get("message_deduplication_id"),
                },
            )
        )
        with _translated(f"send to {queue.obj}", queue=True):
            self._sqs.send_message(**request)

    def publish_batch_to_queue(self, messages: Sequence[Message], queue: QueueWrapper) -> None:
        def send(entries: list[Any]) -> Any:
            with _translated(f"send batch to {queue.obj}", queue=True):
                return self._sqs.send_message_batch(QueueUrl=queue.obj, Entries=entries)

        _send_in_batches(messages, queue.obj, "MessageBody", send)

    # -- receiving ---------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        """Receive up to 10 messages, long-polling up to ``wait_seconds`` (at most 20)."""
        wanted = max(1, min(10, int(kwargs.get("max_messages", 10))))
        wait = min(20, math.ceil(float(kwargs.get("wait_seconds", 0))))
        with _translated(f"receive from {queue.obj}", queue=True):
            response = self._sqs.receive_message(
                QueueUrl=queue.obj,
                MaxNumberOfMessages=wanted,
                WaitTimeSeconds=wait,
                MessageAttributeNames=["All"],
                AttributeNames=["ApproximateReceiveCount"],
            )
        return [wire.message_from(m, queue.obj) for m in response.get("Messages", [])]

    def yield_messages(self, queue: QueueWrapper, **kwargs: Any) -> Iterator[Message]:
        """Long-poll forever (20 s per request unless ``wait_seconds`` says otherwise)."""
        kwargs.setdefault("wait_seconds", 20)
        while not self._closed:
            yield from self.retrieve_messages(queue, **kwargs)

    def acknowledge(self, message: Message) -> None:
        url, handle = _receipt(message)
        with _translated(f"delete from {url}", queue=True):
            self._sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Delete received messages, 10 per ``DeleteMessageBatch`` per queue.

        Raises:
            BackendError: SQS refused some deletions; they will be delivered again.
        """
        by_queue: dict[str, list[str]] = {}
        for message in messages:
            url, handle = _receipt(message)
            by_queue.setdefault(url, []).append(handle)
        failures = []
        for url, handles in by_queue.items():
            for first in range(0, len(handles), 10):
                entries: list[Any] = [
                    {"Id": str(n), "ReceiptHandle": h}
                    for n, h in enumerate(handles[first : first + 10])
                ]
                with _translated(f"delete batch from {url}", queue=True):
                    response = self._sqs.delete_message_batch(QueueUrl=url, Entries=entries)
                failures += [_reason(f) for f in response.get("Failed", [])]
        if failures:
            raise BackendError(f"{len(failures)} acknowledgement(s) failed: {failures[0]}")

    def release(self, message: Message, delay: float = 0.0) -> None:
        url, handle = _receipt(message)
        seconds = min(_MAX_VISIBILITY_SECONDS, math.ceil(max(delay, 0.0)))
        with _translated(f"change visibility in {url}", queue=True):
            self._sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=seconds
            )

    def close_connection(self) -> None:
        if not self._closed:
            super().close_connection()
            self._sns.close()
            self._sqs.close()


class LocalSQSBackend(AWSBackend):
    """An SQS/SNS-compatible endpoint at ``host:port`` (ElasticMQ, LocalStack, moto's server)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        region: str = "us-east-1",
        secure: bool = False,
        **options: Any,
    ) -> None:
        options.setdefault("aws_access_key_id", "melange")
        options.setdefault("aws_secret_access_key", "melange")
        scheme = "https" if secure else "http"
        super().__init__(endpoint_url=f"{scheme}://{host}:{port}", region_name=region, **options)


def _fifo(message: Message, destination: str, given: dict[str, Any]) -> dict[str, str]:
    if not destination.endswith(".fifo"):
        return {k: v for k, v in given.items() if v is not None}
    return {
        "MessageGroupId": given.get("MessageGroupId")
        or message.metadata.get("message_group_id")
        or "default",
        "MessageDeduplicationId": given.get("MessageDeduplicationId") or message.message_id,
    }


def _send_in_batches(
    messages: Sequence[Message], destination: str, body_key: str, send: Callable[[list[Any]], Any]
) -> None:
    """Check every size first, send 10 (and at most 256 KiB) per request, report failures.

    Raises:
        MessageTooLargeError: one message is too large; nothing was sent.
        BatchPublishError: some entries failed; the others were sent.
    """
    sized = []
    for n, message in enumerate(messages):
        attributes = wire.attributes_for(message)
        size = wire.check_size(message, attributes, destination)
        entry = {"Id": str(n), body_key: message.content, "MessageAttributes": attributes}
        entry.update(_fifo(message, destination, {}))
        sized.append((entry, size))
    failed: list[tuple[Any, str]] = []
    for batch in wire.batches(sized):
        response = send(batch)
        failed += [(messages[int(f["Id"])], _reason(f)) for f in response.get("Failed", [])]
    if failed:
        raise BatchPublishError(failed)


def _reason(failure: Any) -> str:
    return f"{failure.get('Code', '?')}: {failure.get('Message', '')}"


def _receipt(message: Message) -> tuple[str, str]:
    receipt = message.receipt
    if not (isinstance(receipt, tuple) and len(receipt) == 2):
        raise ValueError("this message was not received from an AWSBackend")
    return receipt
