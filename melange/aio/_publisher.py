"""``AsyncMessagePublisher``: ``MessagePublisher``'s routing, headers and middleware, awaited."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from melange import signals
from melange._bridge import in_thread
from melange.aio._bridged import BridgedBackend
from melange.aio._interface import AsyncMessagingBackend, require_async_backend
from melange.broker_calls import run_calls_async
from melange.grouping import GroupBy
from melange.middleware import (
    Middleware,
    Publishing,
    async_hooks_of,
    compose,
    current_hold,
    hooks_of,
)
from melange.models import Message, QueueWrapper, TopicWrapper
from melange.outgoing import Destination, Outgoing
from melange.publishers import MessagePublisher
from melange.sending import Sending
from melange.serializers import SerializerRegistry

__all__ = ["AsyncMessagePublisher"]


class AsyncMessagePublisher:
    """Publishes typed events on any ``AsyncMessagingBackend`` without blocking the loop.

    The same as ``MessagePublisher`` in every rule (routing by manifest,
    ``correlation_id``/``causation_id`` from the message being handled,
    ``hold_publishes``, middleware), from the same ``melange.sending.Sending``:
    the broker calls are awaited. A ``send_message`` middleware hook with no
    ``send_message_async`` twin runs on a worker thread.
    """

    def __init__(
        self,
        backend: AsyncMessagingBackend,
        serializers: SerializerRegistry | None = None,
        *,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.backend = require_async_backend(backend)
        self.sending = Sending(
            serializers, publisher=self, messaging_system=self.backend.messaging_system
        )
        self.serializers = self.sending.serializers
        self.middleware = tuple(middleware)
        build_hooks = hooks_of(self.middleware, "build_message")
        send_hooks = async_hooks_of(self.middleware, "send_message", partial(in_thread, None))
        self._one_by_one = bool(build_hooks or send_hooks)
        self._build = compose(build_hooks, self.sending.build)
        self._send = compose(send_hooks, self._send_core)

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
        """Publish one event and return the message sent (see ``MessagePublisher.publish``)."""
        destination = None if topic is queue is None else Destination.requested(topic, queue)
        outgoing = self.sending.outgoing(event, destination, headers, delay, group_by)
        outgoing.message = self._build(outgoing)
        await self._send(outgoing)
        message = outgoing.built
        if signals.message_published.receivers:
            signals.message_published.send(self, message=message, event=event)
        return message

    async def publish_batch(
        self,
        events: Iterable[Any],
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        headers: Mapping[str, Any] | None = None,
        group_by: GroupBy | None = None,
    ) -> list[Message]:
        """Publish several events in as few broker calls as the backend allows."""
        destination = Destination.requested(topic, queue)
        if self._one_by_one or current_hold() is not None:
            return [
                await self.publish(e, topic=topic, queue=queue, headers=headers, group_by=group_by)
                for e in events
            ]
        batch = self.sending.built_batch(events, destination, headers, group_by)
        await run_calls_async(self.backend, self.sending.batch_sent(batch))
        return self.sending.announce(batch)

    def build_message(self, event: Any, headers: Mapping[str, Any] | None = None) -> Message:
        """Serialize an event into a message with melange's headers (no middleware)."""
        return self.sending.build_message(event, headers)

    async def send(
        self,
        message: Message,
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        delay: float = 0.0,
    ) -> None:
        """Send a message built earlier as it is (see ``MessagePublisher.send``)."""
        where = Destination.requested(topic, queue)
        await self.deliver(
            Outgoing(destination=where, delay=delay, publisher=self, message=message)
        )

    async def deliver(self, outgoing: Outgoing) -> None:
        """Send a built ``Outgoing`` now, as it is (see ``MessagePublisher.deliver``)."""
        call = self.sending.call(outgoing)
        if call is None:  # its topic or queue is looked up first, once
            await run_calls_async(self.backend, self.sending.sent(outgoing))
        else:
            await getattr(self.backend, call.method)(*call.args)

    @property
    def sync(self) -> MessagePublisher:
        """Deprecated: a synchronous publisher on the same broker (bridged backends only)."""
        warnings.warn(
            "AsyncMessagePublisher.sync is deprecated: the async publisher sends on its own",
            DeprecationWarning,
            stacklevel=2,
        )
        if not isinstance(self.backend, BridgedBackend):
            raise AttributeError("sync: only a publisher on a BridgedBackend has a sync twin")
        return MessagePublisher(self.backend.sync, self.serializers, middleware=self.middleware)

    # -- the core of the middleware chain -----------------------------------------------

    async def _send_core(self, publishing: Publishing) -> None:
        held = current_hold()
        if held is None:
            await self.deliver(publishing)
        else:
            held.hold(publishing, partial(self.deliver, publishing))
