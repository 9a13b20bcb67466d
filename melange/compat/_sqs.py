"""Melange 7's SNS/SQS backends: its constructor arguments, on Melange 7's wire (boto3)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from melange.aio import BridgedBackend
from melange.backends import sqs
from melange.compat._backends import Melange7Handles
from melange.compat._deprecation import deprecated
from melange.compat._models import MessageDto, QueueWrapper, TopicWrapper
from melange.exceptions import ConfigurationError, UnexpectedOptionError
from melange.models import Message
from melange.models import QueueWrapper as CurrentQueue
from melange.models import TopicWrapper as CurrentTopic

__all__ = ["AWSBackend", "AsyncBaseSQSBackend", "AsyncLocalSQSBackend", "LocalSQSBackend"]

# What Melange 7's publish_to_topic read from extra_attributes.
_TOPIC_EXTRAS = frozenset({"subject", "message_attributes"})


class AWSBackend(Melange7Handles, sqs.AWSBackend):
    """Melange 7's ``AWSBackend(**kwargs)``, writing and reading Melange 7's wire.

    ``extra_settings`` go to boto3 (``region_name``, ``endpoint_url``…);
    ``sns_settings`` may repeat them but not name another endpoint: melange
    talks to SNS and SQS through one. ``max_number_of_messages``,
    ``visibility_timeout`` and ``wait_time_seconds`` are the defaults of a
    ``retrieve_messages`` call that gives none.

    Raises:
        ConfigurationError: ``sns_settings`` and ``extra_settings`` disagree.
    """

    def __init__(self, **kwargs: Any) -> None:
        if type(self) is AWSBackend:
            deprecated("AWSBackend", 'melange.backends.sqs.AWSBackend(wire="melange7")')
        self.max_number_of_messages: int = kwargs.get("max_number_of_messages", 10)
        self.visibility_timeout: float = kwargs.get("visibility_timeout", 100)
        self.wait_time_seconds: float = kwargs.get("wait_time_seconds", 10)
        settings = dict(kwargs.get("extra_settings") or {})
        for key, value in (kwargs.get("sns_settings") or {}).items():
            if settings.setdefault(key, value) != value:
                raise ConfigurationError(
                    f"sns_settings {key}={value!r} differs from extra_settings"
                    f" {key}={settings[key]!r}: melange uses one setting for SNS and SQS"
                )
        super().__init__(wire="melange7", **settings)

    def retrieve_messages(
        self,
        queue: CurrentQueue,
        *,
        max_messages: int | None = None,
        wait_seconds: float | None = None,
        visibility_timeout: float | None = None,
    ) -> list[Message]:
        """Receive messages; what is not given comes from the constructor's arguments."""
        return super().retrieve_messages(
            queue,
            max_messages=max_messages or self.max_number_of_messages,
            wait_seconds=self.wait_time_seconds if wait_seconds is None else wait_seconds,
            visibility_timeout=(
                self.visibility_timeout if visibility_timeout is None else visibility_timeout
            ),
        )

    def publish_to_topic(
        self,
        message: Message,
        topic: CurrentTopic,
        extra_attributes: dict[str, Any] | None = None,
    ) -> None:
        """Publish, taking Melange 7's ``subject`` and ``message_attributes`` extras too.

        ``message_attributes`` (SNS's ``{"DataType":…, "StringValue":…}``) become headers.

        Raises:
            UnexpectedOptionError: an extra neither melange nor Melange 7 takes.
        """
        extras = dict(extra_attributes or {})
        if "subject" in extras:
            extras["Subject"] = extras.pop("subject")
        attributes = extras.pop("message_attributes", None) or {}
        if "message_structure" in extras:
            raise UnexpectedOptionError("message_structure is not supported by melange")
        if attributes:
            headers = {name: str(value.get("StringValue")) for name, value in attributes.items()}
            message = message.with_changes(metadata={**message.metadata, **headers})
        super().publish_to_topic(message, topic, extras or None)

    def get_queue_attributes(self, queue: CurrentQueue) -> dict[str, str]:
        """Return all the queue's SQS attributes (7.3's async backend had this)."""
        response: Any = self.sqs_client.get_queue_attributes(
            QueueUrl=queue.unwrap(), AttributeNames=["All"]
        )
        return dict(response.get("Attributes") or {})

    def set_queue_attributes(self, queue: CurrentQueue, attributes: dict[str, str]) -> None:
        """Set SQS attributes of the queue."""
        given: Any = attributes
        self.sqs_client.set_queue_attributes(QueueUrl=queue.unwrap(), Attributes=given)

    def get_queue_url(self, queue_name: str) -> str:
        """Return the queue's URL."""
        return str(self.get_queue(queue_name).unwrap())

    def publish_to_queue_batch(
        self, message_dtos: Sequence[MessageDto], queue: CurrentQueue
    ) -> None:
        """Send messages with their FIFO group and deduplication ids (7.3's batch send).

        Messages without a deduplication id go in batches of 10, their group
        id in the ``message_group_id`` header; the others one by one.
        """
        batched = [
            dto.message.with_changes(
                metadata={**dto.message.metadata, "message_group_id": dto.message_group_id}
            )
            if dto.message_group_id
            else dto.message
            for dto in message_dtos
            if dto.message_deduplication_id is None
        ]
        if batched:
            self.publish_batch_to_queue(batched, queue)
        for dto in message_dtos:
            if dto.message_deduplication_id is not None:
                options = {"message_deduplication_id": dto.message_deduplication_id}
                if dto.message_group_id:
                    options["message_group_id"] = dto.message_group_id
                self.publish_to_queue(dto.message, queue, **options)


class LocalSQSBackend(AWSBackend):
    """Melange 7's ``LocalSQSBackend(host="http://localhost", port=4566, …)`` (LocalStack, moto).

    ``host`` may carry its scheme (Melange 7's form) or not; ``sns_host`` and
    ``sns_port``, if given, must name the same endpoint.
    """

    def __init__(self, **kwargs: Any) -> None:
        deprecated(
            "LocalSQSBackend", 'melange.backends.sqs.LocalSQSBackend(host, port, wire="melange7")'
        )
        sqs_endpoint = _endpoint(kwargs.pop("host", "localhost"), kwargs.pop("port", 4566))
        sns_host, sns_port = kwargs.pop("sns_host", None), kwargs.pop("sns_port", None)
        if sns_host is not None or sns_port is not None:
            sns_endpoint = _endpoint(sns_host or "localhost", sns_port or 4566)
            if sns_endpoint != sqs_endpoint:
                raise ConfigurationError(
                    f"SNS at {sns_endpoint} and SQS at {sqs_endpoint}:"
                    " melange uses one endpoint for both"
                )
        settings = {
            "endpoint_url": sqs_endpoint,
            "region_name": "us-east-1",
            "aws_access_key_id": "x",
            "aws_secret_access_key": "x",
            **(kwargs.pop("extra_settings", None) or {}),
        }
        super().__init__(extra_settings=settings, **kwargs)


def _endpoint(host: str, port: int | str) -> str:
    scheme_and_host = host if "://" in host else f"http://{host}"
    return f"{scheme_and_host}:{port}"


class AsyncBaseSQSBackend:
    """Melange 7.3's async SQS backend: the sync one's calls, run on threads of their own.

    ``sync`` is the Melange 7 backend doing the work; ``bridged`` the same as
    a ``melange.aio`` backend, which the compat async dispatcher consumes with.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.sync: AWSBackend = self._sync_backend(**kwargs)
        self.bridged = BridgedBackend(self.sync)

    def _sync_backend(self, **kwargs: Any) -> AWSBackend:
        return AWSBackend(**kwargs)

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Create or get a topic."""
        return await self.bridged.run(self.sync.declare_topic, topic_name)

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        """Return an existing queue."""
        return await self.bridged.run(self.sync.get_queue, queue_name)

    async def declare_queue(
        self, queue_name: str, *topics_to_bind: CurrentTopic, **kwargs: Any
    ) -> tuple[CurrentQueue, CurrentQueue | None]:
        """Create or get a queue (and its dead-letter queue) subscribed to the topics."""
        return await self.bridged.run(
            self.sync.declare_queue, queue_name, *topics_to_bind, **kwargs
        )

    async def get_queue_attributes(self, queue: CurrentQueue) -> dict[str, str]:
        """Return all the queue's SQS attributes."""
        return await self.bridged.run(self.sync.get_queue_attributes, queue)

    async def set_queue_attributes(self, queue: CurrentQueue, attributes: dict[str, str]) -> None:
        """Set SQS attributes of the queue."""
        await self.bridged.run(self.sync.set_queue_attributes, queue, attributes)

    async def get_queue_url(self, queue_name: str) -> str:
        """Return the queue's URL."""
        return await self.bridged.run(self.sync.get_queue_url, queue_name)

    async def publish_to_queue(self, message: Message, queue: CurrentQueue, **kwargs: Any) -> None:
        """Send to a queue (FIFO: ``message_group_id``, ``message_deduplication_id``)."""
        await self.bridged.run(self.sync.publish_to_queue, message, queue, **kwargs)

    async def publish_to_queue_batch(
        self, message_dtos: Sequence[MessageDto], queue: CurrentQueue
    ) -> None:
        """Send several messages (see ``AWSBackend.publish_to_queue_batch``)."""
        await self.bridged.run(self.sync.publish_to_queue_batch, message_dtos, queue)

    async def publish_to_topic(
        self, message: Message, topic: CurrentTopic, extra_attributes: dict[str, Any] | None = None
    ) -> None:
        """Publish to a topic."""
        await self.bridged.run(self.sync.publish_to_topic, message, topic, extra_attributes)

    async def retrieve_messages(self, queue: CurrentQueue, **kwargs: Any) -> AsyncIterator[Message]:
        """Yield the messages of one receive."""
        for message in await self.bridged.run(self.sync.retrieve_messages, queue, **kwargs):
            yield message

    async def yield_messages(self, queue: CurrentQueue, **kwargs: Any) -> AsyncIterator[Message]:
        """Yield messages as they come, until the backend is closed."""
        while not self.bridged.closed:
            async for message in self.retrieve_messages(queue, **kwargs):
                yield message

    async def acknowledge(self, message: Message) -> None:
        """Delete a received message from its queue."""
        await self.bridged.run(self.sync.acknowledge, message)

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Delete received messages, 10 per request."""
        await self.bridged.run(self.sync.acknowledge_batch, messages)

    async def delete_queue(self, queue: CurrentQueue) -> None:
        """Delete a queue."""
        await self.bridged.run(self.sync.delete_queue, queue)

    async def delete_topic(self, topic: CurrentTopic) -> None:
        """Delete a topic."""
        await self.bridged.run(self.sync.delete_topic, topic)

    def close_connection(self) -> None:
        """Close the clients (sync, as in 7.3); ``aclose`` also stops the threads."""
        self.sync.close_connection()

    async def aclose(self) -> None:
        """Close the clients and stop the threads."""
        await self.bridged.close_connection()


class AsyncLocalSQSBackend(AsyncBaseSQSBackend):
    """Melange 7.3's ``AsyncLocalSQSBackend(**kwargs)``: ``LocalSQSBackend``'s arguments."""

    def _sync_backend(self, **kwargs: Any) -> AWSBackend:
        return LocalSQSBackend(**kwargs)
