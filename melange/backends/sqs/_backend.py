"""SNS topics and SQS queues over boto3: AWS itself or any compatible endpoint."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from melange._secrets import check_credentials, credentials_of, masked, without_credentials
from melange.exceptions import (
    BackendError,
    BatchPublishError,
    ConfigurationError,
    ForeignMessageError,
    MissingExtraError,
    UnexpectedOptionError,
    UnsupportedOperationError,
)

try:
    import boto3
except ImportError as e:  # pragma: no cover - only without the extra
    raise MissingExtraError("boto3", "sqs") from e

from melange.backends.interfaces import MessagingBackend, QueueStats, checked_max_messages
from melange.backends.sqs import _melange7 as melange7
from melange.backends.sqs import _wire as wire
from melange.backends.sqs._errors import NOT_IN_FLIGHT_CODES, receipt_gone, translated
from melange.backends.sqs._timeouts import TIMEOUT_OPTIONS, client_config
from melange.backends.sqs._topology import MAX_VISIBILITY_SECONDS, SQSTopology
from melange.backends.sqs._wire import MANIFEST as _OWN_MANIFEST
from melange.models import Message, QueueWrapper, TopicWrapper

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

__all__ = ["AWSBackend", "LocalSQSBackend"]

_SESSION_OPTIONS = frozenset(
    {
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "region_name",
        "profile_name",
        "botocore_session",
    }
)
# publish_to_topic's extra_attributes: Publish parameters melange passes on.
_TOPIC_OPTIONS = {
    "MessageGroupId": "MessageGroupId",
    "message_group_id": "MessageGroupId",
    "MessageDeduplicationId": "MessageDeduplicationId",
    "message_deduplication_id": "MessageDeduplicationId",
    "Subject": "Subject",
}
_QUEUE_OPTIONS = {
    "message_group_id": "MessageGroupId",
    "message_deduplication_id": "MessageDeduplicationId",
}
_URL_OPTIONS = frozenset({"region", "secure", "profile", "wire"}) | TIMEOUT_OPTIONS


class AWSBackend(MessagingBackend):
    """Topics are SNS topics, queues are SQS queues; options go to ``boto3.Session`` and clients.

    Session options (``region_name``, ``profile_name``, ``aws_access_key_id``…)
    build one session; the rest (``endpoint_url``, ``config``…) go to both
    clients. See docs/backends/sqs.md for names, FIFO, attributes, limits,
    the queue policy, error mapping and request costs.

    ``wire="melange7"`` writes and reads what the original Melange 7.x does
    (docs/migrating.md): its ``manifest`` and ``serializer_id`` attributes,
    ``{"Message": …}`` bodies on queues, SNS envelopes (no raw delivery) on
    the subscriptions it makes; it still reads melange's own wire.

    Raises:
        ConfigurationError: an unknown ``wire``.
    """

    messaging_system = "aws_sqs"

    #: Largest message (UTF-8 body plus attribute names, types and values) sent, in
    #: bytes; ``None`` leaves the check to the broker. Over it, publishing raises
    #: ``MessageTooLargeError`` before any request.
    max_message_size: int | None = 262_144
    #: Largest SendMessageBatch / PublishBatch request, added up the same way.
    max_batch_bytes: int = 262_144
    #: Longest ``DelaySeconds`` SQS takes.
    max_delay_seconds: int = 900
    #: How long a dead-letter queue keeps messages (``MessageRetentionPeriod``),
    #: set on every declare: SQS's longest, 14 days, rather than its default of 4,
    #: since SQS ages a dead letter from when it was first sent. ``None`` leaves
    #: the queue's own setting alone.
    dead_letter_retention_seconds: int | None = 1_209_600
    #: Longest ``WaitTimeSeconds`` SQS takes; ``yield_messages`` long-polls this long.
    max_wait_seconds: int = 20
    #: The header a FIFO message group id is taken from when none is given.
    group_id_header: str = "message_group_id"
    #: The FIFO message group when neither an argument nor the header gives one.
    default_group_id: str = "default"

    def __init__(self, *, wire: str = "melange", **options: Any) -> None:
        if wire not in melange7.WIRES:
            raise ConfigurationError(f"wire must be one of {list(melange7.WIRES)}, not {wire!r}")
        #: Whose wire the backend writes: ``"melange"`` or ``"melange7"``.
        self.wire = wire
        self._melange7 = wire == "melange7"
        session_options = {k: v for k, v in options.items() if k in _SESSION_OPTIONS}
        client_options = {k: v for k, v in options.items() if k not in _SESSION_OPTIONS}
        with translated("create the SNS and SQS clients"):
            session = boto3.Session(**session_options)
            self._sns: SNSClient = session.client("sns", **client_options)
            self._sqs: SQSClient = session.client("sqs", **client_options)
        self._topology = SQSTopology(
            self._sns,
            self._sqs,
            raw_delivery=not self._melange7,
            manifest_attribute=melange7.MANIFEST if self._melange7 else _OWN_MANIFEST,
        )

    @classmethod
    def from_url(cls, url: str) -> AWSBackend:
        """Build from ``sqs://`` (AWS, the usual boto3 credentials) or ``sqs://host:port``.

        ``sqs://KEY_ID:SECRET@…`` gives the access key (percent-decoded; a
        ``/`` in the secret may stay as it is). Query options: ``region``,
        ``profile``, ``secure=true`` (https) with a host, and how long to wait:
        ``connect_timeout`` and ``read_timeout`` (seconds, botocore's default
        60) and ``max_attempts`` per request; ``wire=melange7`` for the
        original Melange 7.x's wire.

        Raises:
            ConfigurationError: an unknown option or a malformed URL.
        """
        shown = masked(url)
        check_credentials(url, readable="/")  # AWS secrets hold '/': read here, not by a driver
        try:
            parts = urlsplit(without_credentials(url))
            port = parts.port
        except ValueError as e:  # the credentials are gone: ``e`` cannot quote the secret
            raise ConfigurationError(f"{shown}: {e}") from None
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = sorted(set(query) - _URL_OPTIONS)
        if unknown:
            raise ConfigurationError(f"unknown sqs:// options {unknown} in {shown!r}")
        options: dict[str, Any] = _url_credentials(url)
        if "profile" in query:
            if options:
                raise ConfigurationError(f"give an access key or a profile, not both: {shown!r}")
            options["profile_name"] = query["profile"]
        config = client_config(query, shown)
        if config is not None:
            options["config"] = config
        secure = query.get("secure", "false").lower()
        if secure not in {"true", "false"}:
            raise ConfigurationError(f"secure must be true or false in {shown!r}")
        if "wire" in query:
            options["wire"] = query["wire"]
        if parts.hostname:
            region = query.get("region", "us-east-1")
            return LocalSQSBackend(
                parts.hostname, port or 9324, region=region, secure=secure == "true", **options
            )
        if issubclass(cls, LocalSQSBackend):
            raise ConfigurationError(f"LocalSQSBackend needs sqs://host:port, not {shown!r}")
        if "region" in query:
            options["region_name"] = query["region"]
        return cls(**options)

    @property
    def sns_client(self) -> SNSClient:
        """Return the boto3 SNS client (to count requests or do what melange does not)."""
        return self._sns

    @property
    def sqs_client(self) -> SQSClient:
        """Return the boto3 SQS client."""
        return self._sqs

    # -- topology (``SQSTopology`` does the work) ----------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Create or get the SNS topic (FIFO when the name ends in ``.fifo``).

        Raises:
            BackendError: SNS refused.
        """
        return self._topology.declare_topic(topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        """Return an existing queue; never creates one.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        return self._topology.get_queue(queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float | None = None,
        max_receive_count: int | None = None,
        filter_events: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create or get the queue, its dead-letter queue, its subscriptions and policy.

        ``filter_events`` (a list of manifests) sets each subscription's SNS
        filter policy on the manifest attribute: the queue receives only those
        events, and SQS is never asked for the others.

        Raises:
            ConfigurationError: FIFO and standard mixed, or a value SQS cannot take.
            UnexpectedOptionError: an option SQS does not take.
            TopicNotFoundError: a topic to bind does not exist.
            BackendError: SNS or SQS refused.
        """
        return self._topology.declare_queue(
            queue_name,
            *topics_to_bind,
            dead_letter_queue_name=dead_letter_queue_name,
            visibility_timeout=visibility_timeout,
            max_receive_count=(
                self.default_max_receive_count if max_receive_count is None else max_receive_count
            ),
            dead_letter_retention_seconds=self.dead_letter_retention_seconds,
            filter_events=filter_events,
            **kwargs,
        )

    def queue_policy(self, queue: QueueWrapper) -> str | None:
        """Return the queue's access policy JSON as SQS holds it, or ``None``.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        return self._topology.queue_policy(queue)

    def queue_stats(self, queue: QueueWrapper) -> QueueStats:
        """Return SQS's approximate ready, in-flight and delayed counts (``GetQueueAttributes``).

        Raises:
            QueueNotFoundError: the queue does not exist.
            BackendError: SQS refused.
        """
        url = queue.unwrap()
        names: list[Any] = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        with translated(f"read the counts of SQS queue {url}"):
            found = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
        counts = [int(found.get("Attributes", {}).get(name, 0)) for name in names]
        return QueueStats(*counts)

    def visibility_timeout_of(self, queue: QueueWrapper) -> float:
        """Return the queue's ``VisibilityTimeout`` attribute (``GetQueueAttributes``).

        Raises:
            QueueNotFoundError: the queue does not exist.
            BackendError: SQS refused.
        """
        url = queue.unwrap()
        with translated(f"read the visibility timeout of SQS queue {url}"):
            found = self._sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["VisibilityTimeout"]
            )
        return float(found["Attributes"]["VisibilityTimeout"])

    def delete_queue(self, queue: QueueWrapper) -> None:
        """Unsubscribe the queue from its topics, then delete it; a gone queue is fine.

        Raises:
            BackendError: SNS or SQS refused.
        """
        self._topology.delete_queue(queue)

    def delete_topic(self, topic: TopicWrapper) -> None:
        """Unsubscribe every subscriber of the topic, then delete it; a gone topic is fine.

        Raises:
            BackendError: SNS refused.
        """
        self._topology.delete_topic(topic)

    # -- publishing --------------------------------------------------------------------

    def publish_to_topic(
        self,
        message: Message,
        topic: TopicWrapper,
        extra_attributes: dict[str, Any] | None = None,
    ) -> None:
        """Publish to an SNS topic (``Publish``).

        ``extra_attributes`` may hold ``MessageGroupId``, ``MessageDeduplicationId``
        (FIFO topics; defaults: the ``message_group_id`` header or ``"default"``,
        and the message id) and ``Subject``.

        Raises:
            MessageTooLargeError: over ``max_message_size``; nothing was sent.
            TopicNotFoundError: the topic does not exist.
            PublishError: SNS refused the message.
        """
        given = _renamed(extra_attributes or {}, _TOPIC_OPTIONS, "extra_attributes")
        arn = topic.unwrap()
        attributes = self._attributes(message)
        wire.check_size(message.content, attributes, self.max_message_size, arn)
        request: dict[str, Any] = {
            "TopicArn": arn,
            "Message": message.content,
            "MessageAttributes": attributes,
        }
        request.update(self._ordering(message, arn, given))
        with translated(f"publish to SNS topic {arn}", publishing=True):
            self._sns.publish(**request)

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """Send to an SQS queue (``SendMessage``).

        FIFO queues take ``message_group_id`` and ``message_deduplication_id``
        (defaults: the ``message_group_id`` header or ``"default"``, and the message id).

        Raises:
            MessageTooLargeError: over ``max_message_size``; nothing was sent.
            QueueNotFoundError: the queue does not exist.
            PublishError: SQS refused the message.
        """
        self._send(message, queue.unwrap(), 0, _renamed(kwargs, _QUEUE_OPTIONS, "options"))

    def publish_delayed_to_queue(self, message: Message, queue: QueueWrapper, delay: float) -> None:
        """Send with ``DelaySeconds``: the delay rounded up to whole seconds.

        Raises:
            UnsupportedOperationError: over ``max_delay_seconds`` (900), or a
                delay on a FIFO queue (SQS delays those per queue only).
        """
        url = queue.unwrap()
        seconds = math.ceil(max(delay, 0.0))
        if seconds > self.max_delay_seconds:
            raise UnsupportedOperationError(
                f"SQS delays a message at most {self.max_delay_seconds} s, not {seconds} s"
            )
        if seconds and wire.is_fifo(url):
            raise UnsupportedOperationError("SQS FIFO queues cannot delay a single message")
        self._send(message, url, seconds, {})

    def _send(self, message: Message, url: str, delay: int, given: dict[str, Any]) -> None:
        attributes = self._attributes(message)
        body = self._queue_body(message.content)
        wire.check_size(body, attributes, self.max_message_size, url)
        request: dict[str, Any] = {
            "QueueUrl": url,
            "MessageBody": body,
            "MessageAttributes": attributes,
        }
        if delay:
            request["DelaySeconds"] = delay
        request.update(self._ordering(message, url, given))
        with translated(f"send to SQS queue {url}", publishing=True):
            self._sqs.send_message(**request)

    def publish_batch_to_queue(self, messages: Sequence[Message], queue: QueueWrapper) -> None:
        """Send with ``SendMessageBatch``: 10 messages and ``max_batch_bytes`` per request.

        Raises:
            MessageTooLargeError: one message is too large; nothing was sent.
            BatchPublishError: some messages were not sent (the others were); it lists them.
            QueueNotFoundError, PublishError: the first request failed; nothing was sent.
        """
        url = queue.unwrap()

        def send(entries: list[Any]) -> list[Any]:
            with translated(f"send a batch to SQS queue {url}", publishing=True):
                response = self._sqs.send_message_batch(QueueUrl=url, Entries=entries)
            return list(response.get("Failed", []))

        self._publish_batch(messages, url, "MessageBody", send)

    def publish_batch_to_topic(self, messages: Sequence[Message], topic: TopicWrapper) -> None:
        """Publish with SNS ``PublishBatch``: 10 messages and ``max_batch_bytes`` per request.

        Raises:
            MessageTooLargeError: one message is too large; nothing was sent.
            BatchPublishError: some messages were not published (the others were).
            TopicNotFoundError, PublishError: the first request failed; nothing was sent.
        """
        arn = topic.unwrap()

        def send(entries: list[Any]) -> list[Any]:
            with translated(f"publish a batch to SNS topic {arn}", publishing=True):
                response = self._sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=entries)
            return list(response.get("Failed", []))

        self._publish_batch(messages, arn, "Message", send)

    def _publish_batch(
        self,
        messages: Sequence[Message],
        destination: str,
        body_key: str,
        send: Callable[[list[Any]], list[Any]],
    ) -> None:
        sized = []
        for n, message in enumerate(messages):  # every size is checked before any request
            attributes = self._attributes(message)
            body = message.content
            if body_key == "MessageBody":
                body = self._queue_body(body)
            size = wire.check_size(body, attributes, self.max_message_size, destination)
            entry = {"Id": str(n), body_key: body, "MessageAttributes": attributes}
            entry.update(self._ordering(message, destination, {}))
            sized.append((entry, size))
        batches = wire.batches(sized, self.max_batch_bytes)
        failed: list[tuple[Any, str]] = []
        for position, batch in enumerate(batches):
            try:
                refused = send(batch)
            except BackendError as e:
                if position == 0:
                    raise
                unsent = [entry for later in batches[position:] for entry in later]
                failed += [(messages[int(entry["Id"])], str(e)) for entry in unsent]
                raise BatchPublishError(failed) from e
            failed += [(messages[int(f["Id"])], _reason(f)) for f in refused]
        if failed:
            raise BatchPublishError(failed)

    def _attributes(self, message: Message) -> wire.Attributes:
        return melange7.attributes_for(message) if self._melange7 else wire.attributes_for(message)

    def _queue_body(self, content: str) -> str:
        return melange7.queue_body(content) if self._melange7 else content

    def _decoded(self, received: Any, url: str) -> Message:
        if self._melange7:
            received = melange7.unwrapped(received)
        return wire.message_from(received, url)

    def _ordering(
        self, message: Message, destination: str, given: dict[str, Any]
    ) -> dict[str, Any]:
        """Return the FIFO parameters (with defaults on FIFO destinations) and other options."""
        if not wire.is_fifo(destination):
            return given
        defaults = {
            "MessageGroupId": message.metadata.get(self.group_id_header) or self.default_group_id,
            "MessageDeduplicationId": message.message_id,
        }
        return defaults | given

    # -- receiving ---------------------------------------------------------------------

    def retrieve_messages(
        self,
        queue: QueueWrapper,
        *,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[Message]:
        """Receive up to ``max_messages`` (at most 10), long-polling ``wait_seconds``.

        ``wait_seconds`` is rounded up to whole seconds, at most 20;
        ``visibility_timeout`` up to whole seconds (``VisibilityTimeout``).

        Raises:
            QueueNotFoundError: the queue does not exist.
            InvalidArgumentError: ``max_messages`` below 1.
            BackendError: SQS refused.
        """
        checked_max_messages(max_messages)
        url = queue.unwrap()
        request: dict[str, Any] = {
            "QueueUrl": url,
            "MaxNumberOfMessages": min(10, int(max_messages)),
            "WaitTimeSeconds": max(0, min(self.max_wait_seconds, math.ceil(wait_seconds))),
            "MessageAttributeNames": ["All"],
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
        }
        if visibility_timeout is not None:
            request["VisibilityTimeout"] = max(
                0, min(MAX_VISIBILITY_SECONDS, math.ceil(visibility_timeout))
            )
        with translated(f"receive from SQS queue {url}"):
            response = self._sqs.receive_message(**request)
        return [self._decoded(m, url) for m in response.get("Messages", [])]

    def yield_messages(
        self,
        queue: QueueWrapper,
        *,
        max_messages: int = 10,
        wait_seconds: float | None = None,
        visibility_timeout: float | None = None,
    ) -> Iterator[Message]:
        """Long-poll until closed: 10 per request, ``wait_seconds`` (default 20) per request.

        Raises:
            QueueNotFoundError: the queue does not exist.
            BackendError: SQS refused.
        """
        wait = self.max_wait_seconds if wait_seconds is None else wait_seconds
        while not self._closed:
            yield from self.retrieve_messages(
                queue,
                max_messages=max_messages,
                wait_seconds=wait,
                visibility_timeout=visibility_timeout,
            )

    def acknowledge(self, message: Message) -> None:
        """Delete a received message (``DeleteMessage``).

        Raises:
            QueueNotFoundError: its queue is gone.
            BackendError: SQS refused (e.g. an expired receipt handle).
        """
        url, handle = _receipt(message)
        with translated(f"delete from SQS queue {url}"):
            self._sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Delete received messages with ``DeleteMessageBatch``: 10 per request, per queue.

        Raises:
            BackendError: SQS refused some deletions; those messages come back.
        """
        failures: list[str] = []
        for url, entries in _receipt_batches(messages):
            with translated(f"delete a batch from SQS queue {url}"):
                response = self._sqs.delete_message_batch(QueueUrl=url, Entries=entries)
            failures += [_reason(f) for f in response.get("Failed", [])]
        if failures:
            raise BackendError(f"{len(failures)} acknowledgement(s) failed, first: {failures[0]}")

    def release(self, message: Message, delay: float = 0.0) -> None:
        """Make a received message visible again after ``delay`` (rounded up to seconds).

        Raises:
            QueueNotFoundError: its queue is gone.
            BackendError: SQS refused (e.g. an expired receipt handle).
        """
        url, handle = _receipt(message)
        # A message no longer in flight is back in the queue already (or gone): nothing to do.
        with translated(f"change visibility in SQS queue {url}", tolerate=NOT_IN_FLIGHT_CODES):
            self._sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=_visibility_seconds(delay)
            )

    def extend_visibility(self, message: Message, seconds: float) -> None:
        """Hide a received message ``seconds`` from now (``ChangeMessageVisibility``); thread-safe.

        ``seconds`` is rounded up and kept within 0 to 43,200. A message whose
        receipt SQS no longer honours (deleted, visible again, received again)
        is left alone without error. The dispatcher never extends a message
        after releasing it.

        Raises:
            QueueNotFoundError: its queue is gone.
            BackendError: SQS refused otherwise, e.g. past the 12 hours a
                message can stay hidden in all.
        """
        url, handle = _receipt(message)
        with translated(f"extend visibility in SQS queue {url}", tolerate=receipt_gone):
            self._sqs.change_message_visibility(
                QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=_visibility_seconds(seconds)
            )

    def extend_visibility_batch(self, messages: Sequence[Message], seconds: float) -> None:
        """Hide received messages ``seconds`` from now, ten per ``ChangeMessageVisibilityBatch``.

        Messages whose receipts SQS no longer honours are left alone, as in
        ``extend_visibility``.

        Raises:
            QueueNotFoundError: a queue is gone.
            BackendError: SQS refused some other way, naming the first failure.
        """
        timeout = _visibility_seconds(seconds)
        failures: list[str] = []
        for url, entries in _receipt_batches(messages):
            for entry in entries:
                entry["VisibilityTimeout"] = timeout
            with translated(f"extend visibility in SQS queue {url}"):
                response = self._sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)
            failures += [
                _reason(f)
                for f in response.get("Failed", [])
                if not receipt_gone(str(f.get("Code", "")), str(f.get("Message", "")))
            ]
        if failures:
            raise BackendError(f"{len(failures)} extension(s) failed, first: {failures[0]}")

    def close_connection(self) -> None:
        """Close both clients' connections; safe to call more than once."""
        if not self._closed:
            super().close_connection()
            self._sns.close()
            self._sqs.close()


class LocalSQSBackend(AWSBackend):
    """An SQS/SNS-compatible endpoint at ``host:port``: ElasticMQ, LocalStack, moto's server.

    Dummy credentials are used unless given (or a profile is).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        region: str = "us-east-1",
        secure: bool = False,
        **options: Any,
    ) -> None:
        if "profile_name" not in options:
            options.setdefault("aws_access_key_id", "melange")
            options.setdefault("aws_secret_access_key", "melange")
        scheme = "https" if secure else "http"
        super().__init__(endpoint_url=f"{scheme}://{host}:{port}", region_name=region, **options)


def _url_credentials(url: str) -> dict[str, Any]:
    """Return the session options for the ``KEY_ID:SECRET@`` of an ``sqs://`` URL, if any.

    Raises:
        ConfigurationError: a key id without a secret, or a secret without a key id.
    """
    credentials = credentials_of(url)
    if credentials is None:
        return {}
    key_id, secret = credentials
    if not key_id or not secret:
        raise ConfigurationError(
            f"{masked(url)}: sqs://KEY_ID:SECRET@… needs both the access key id and the secret"
        )
    return {"aws_access_key_id": key_id, "aws_secret_access_key": secret}


def _renamed(given: Mapping[str, Any], known: Mapping[str, str], what: str) -> dict[str, Any]:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UnexpectedOptionError(f"unknown {what} {unknown}; known: {sorted(known)}")
    return {known[key]: value for key, value in given.items() if value is not None}


def _receipt_batches(messages: Sequence[Message]) -> Iterator[tuple[str, list[Any]]]:
    """Yield ``(queue URL, entries)``: the messages' receipts, ten per entry list, per queue."""
    by_queue: dict[str, list[str]] = {}
    for message in messages:
        url, handle = _receipt(message)
        by_queue.setdefault(url, []).append(handle)
    for url, handles in by_queue.items():
        for first in range(0, len(handles), 10):
            chunk = handles[first : first + 10]
            yield url, [{"Id": str(n), "ReceiptHandle": h} for n, h in enumerate(chunk)]


def _reason(failure: Mapping[str, Any]) -> str:
    return f"{failure.get('Code', '?')}: {failure.get('Message', '')}"


def _visibility_seconds(seconds: float) -> int:
    """Return ``seconds`` rounded up, within what SQS takes (0 to 43,200; NaN is 0)."""
    return math.ceil(min(float(MAX_VISIBILITY_SECONDS), max(0.0, seconds)))


def _receipt(message: Message) -> tuple[str, str]:
    receipt = message.receipt
    if not (isinstance(receipt, tuple) and len(receipt) == 2):
        raise ForeignMessageError("this message was not received from an AWSBackend")
    return receipt
