"""Melange 7.3's async dispatcher tests, on melange.compat's in-memory backend (bridged)."""

from __future__ import annotations

import asyncio
from typing import Any

from melange.compat import AsyncSimpleMessageDispatcher, SerializerRegistry
from tests.compat.fixtures import (
    AsyncBananaConsumer,
    AsyncExceptionaleConsumer,
    AsyncNoBananaConsumer,
    serializer_settings,
)
from tests.compat.test_message_dispatcher import left_in, two_bananas


def test_consume_on_queue_with_messages() -> None:
    backend, seen = two_bananas(), []

    async def on_message(event: Any) -> None:
        seen.append(event.somevalue)

    dispatcher = AsyncSimpleMessageDispatcher(
        AsyncBananaConsumer(on_message),
        serializer_registry=SerializerRegistry(serializer_settings),
        backend=backend,
    )
    asyncio.run(dispatcher.consume_event("queue", preserve_order=True))
    assert seen == ["apple", "apple"]
    assert left_in(backend, "queue") == 0


def test_consume_on_queue_but_no_consumer_interested_in_the_messages() -> None:
    backend, registry = two_bananas(), {}
    dispatcher = AsyncSimpleMessageDispatcher(
        AsyncNoBananaConsumer(registry),
        serializer_registry=SerializerRegistry(serializer_settings),
        backend=backend,
    )
    asyncio.run(dispatcher.consume_event("queue"))
    assert "banana" not in registry
    assert left_in(backend, "queue") == 0  # 2 acknowledged


def test_if_a_consumer_raises_an_exception_the_message_is_not_acknowledged() -> None:
    backend = two_bananas()
    dispatcher = AsyncSimpleMessageDispatcher(
        AsyncExceptionaleConsumer(),
        serializer_registry=SerializerRegistry(serializer_settings),
        backend=backend,
    )
    asyncio.run(dispatcher.consume_event("queue"))
    assert left_in(backend, "queue") == 2
