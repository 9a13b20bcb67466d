"""Run consumers inside ``publish``: the in-memory backend as a synchronous bus for unit tests."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from melange.backends.memory import InMemoryMessagingBackend
from melange.consumers import Consumer
from melange.dispatcher import MessageDispatcher
from melange.serializers import SerializerRegistry

__all__ = ["link_synchronously"]


def link_synchronously(
    queue: str,
    consumers: Sequence[Consumer],
    backend: InMemoryMessagingBackend,
    *,
    serializers: SerializerRegistry | None = None,
) -> MessageDispatcher:
    """Make every publish that lands in ``queue`` run ``consumers`` before it returns.

    The queue is declared (with its dead-letter queue and topic
    subscriptions) and each publish drains it through the returned dispatcher,
    which reads messages with ``serializers`` (default: melange's).
    """
    dispatcher = MessageDispatcher(backend, consumers=list(consumers), serializers=serializers)
    dispatcher.declare(queue)
    wrapper = backend.get_queue(queue)
    draining = threading.local()

    def drain() -> None:
        if getattr(draining, "active", False):
            return  # a handler published again: the outer drain picks it up
        draining.active = True
        try:
            dispatcher.consume_loop(queue, idle_timeout=0)
        finally:
            draining.active = False

    backend.subscribe_to_publish(wrapper, drain)
    return dispatcher
