"""``OutboxPublisher``: publish by writing the message into the caller's own transaction.

Nothing leaves until that transaction commits, and a rollback leaves
nothing; the relay (``melange.outbox.Relay``) sends committed rows to the
broker afterwards, under the message ids fixed here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from melange._bridge import in_thread
from melange.grouping import GroupBy
from melange.middleware import Middleware, Publishing, async_hooks_of, compose, hooks_of
from melange.models import Message, QueueWrapper, TopicWrapper
from melange.outbox._connections import async_row_writer, row_writer
from melange.outbox._rows import row_of
from melange.outgoing import Destination, Outgoing
from melange.sending import Sending
from melange.serializers import SerializerRegistry

__all__ = ["AsyncOutboxPublisher", "OutboxPublisher"]


class _OutboxWriting:
    """What both outbox publishers share: the message built and the row it makes."""

    def __init__(
        self,
        serializers: SerializerRegistry | None,
        middleware: Sequence[Middleware],
        messaging_system: str,
        clock: Callable[[], float],
    ) -> None:
        self.sending = Sending(serializers, publisher=self, messaging_system=messaging_system)
        self.serializers = self.sending.serializers
        self.middleware = tuple(middleware)
        self._build = compose(hooks_of(self.middleware, "build_message"), self.sending.build)
        self._clock = clock

    def _built(
        self,
        event: Any,
        topic: str | TopicWrapper | None,
        queue: str | QueueWrapper | None,
        headers: Mapping[str, Any] | None,
        delay: float,
        *,
        group_by: GroupBy | None,
    ) -> Outgoing:
        """Return the outgoing message of one event, built (routing checked now, not later)."""
        destination = Destination.requested(topic, queue)
        outgoing = self.sending.outgoing(event, destination, headers, delay, group_by)
        outgoing.message = self._build(outgoing)
        outgoing.where  # noqa: B018 - raises now for an event with nowhere to go
        return outgoing

    def _row(self, outgoing: Outgoing) -> tuple[object, ...]:
        return row_of(outgoing, self._clock())


class OutboxPublisher(_OutboxWriting):
    """Publishes events into the outbox table, inside the caller's transaction.

    ``connection`` is what the application writes its own data through: a
    SQLAlchemy ``Session`` or ``Connection``, a psycopg 3 connection, or a
    ``sqlite3`` connection. ``publish`` takes ``MessagePublisher.publish``'s
    arguments and returns the message, whose id is the one the broker will
    carry. The ``send_message`` middleware hooks run as the row is written
    (so a trace started here travels with the message); the relay sends
    the row as it is.
    """

    def __init__(
        self,
        connection: object,
        serializers: SerializerRegistry | None = None,
        *,
        middleware: Sequence[Middleware] = (),
        messaging_system: str = "melange",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(serializers, middleware, messaging_system, clock)
        self.connection = connection
        self._write = row_writer(connection)
        send_hooks = hooks_of(self.middleware, "send_message")
        self._one_by_one = bool(send_hooks)
        self._send = compose(send_hooks, self._write_one)

    def publish(
        self,
        event: Any,
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        headers: Mapping[str, Any] | None = None,
        delay: float = 0.0,
        group_by: GroupBy | None = None,
    ) -> Message:
        """Add one event to the outbox; return its message.

        Raises:
            ConfigurationError: both ``topic`` and ``queue``, a delay on a topic,
                or an event with no manifest and no destination.
            SerializationError: the event cannot be serialized.
            OutboxError: the row cannot be written (no table, the database failed).
        """
        outgoing = self._built(event, topic, queue, headers, delay, group_by=group_by)
        self._send(outgoing)
        return outgoing.built

    def publish_batch(
        self,
        events: Iterable[Any],
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        headers: Mapping[str, Any] | None = None,
        group_by: GroupBy | None = None,
    ) -> list[Message]:
        """Add several events to the outbox in one statement; return their messages, in order."""
        batch = [
            self._built(event, topic, queue, headers, 0.0, group_by=group_by) for event in events
        ]
        if self._one_by_one:
            for outgoing in batch:
                self._send(outgoing)
        elif batch:
            self._write([self._row(outgoing) for outgoing in batch])
        return [outgoing.built for outgoing in batch]

    def _write_one(self, publishing: Publishing) -> None:
        self._write([self._row(publishing)])


class AsyncOutboxPublisher(_OutboxWriting):
    """``OutboxPublisher`` for asyncio: a SQLAlchemy ``AsyncSession`` or ``AsyncConnection``,
    or a psycopg ``AsyncConnection``; ``publish`` is awaited."""

    def __init__(
        self,
        connection: object,
        serializers: SerializerRegistry | None = None,
        *,
        middleware: Sequence[Middleware] = (),
        messaging_system: str = "melange",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(serializers, middleware, messaging_system, clock)
        self.connection = connection
        self._write = async_row_writer(connection)
        send_hooks = async_hooks_of(self.middleware, "send_message", partial(in_thread, None))
        self._one_by_one = bool(send_hooks)
        self._send = compose(send_hooks, self._write_one)

    async def publish(
        self,
        event: Any,
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        headers: Mapping[str, Any] | None = None,
        delay: float = 0.0,
        group_by: GroupBy | None = None,
    ) -> Message:
        """Add one event to the outbox; return its message (see ``OutboxPublisher.publish``)."""
        outgoing = self._built(event, topic, queue, headers, delay, group_by=group_by)
        await self._send(outgoing)
        return outgoing.built

    async def publish_batch(
        self,
        events: Iterable[Any],
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        headers: Mapping[str, Any] | None = None,
        group_by: GroupBy | None = None,
    ) -> list[Message]:
        """Add several events to the outbox in one statement; return their messages, in order."""
        batch = [
            self._built(event, topic, queue, headers, 0.0, group_by=group_by) for event in events
        ]
        if self._one_by_one:
            for outgoing in batch:
                await self._send(outgoing)
        elif batch:
            await self._write([self._row(outgoing) for outgoing in batch])
        return [outgoing.built for outgoing in batch]

    async def _write_one(self, publishing: Publishing) -> None:
        await self._write([self._row(publishing)])
