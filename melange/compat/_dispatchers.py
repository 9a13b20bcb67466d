"""Melange 7's dispatchers: its constructors, ``consume_event`` and ``consume_loop``.

They are melange's dispatchers with Melange 7's defaults: a consumer runs
once per delivery (a failure is redelivered later, and dead-lettered after
four deliveries, as Melange 7's redrive policy did); ``always_ack`` and
``early_ack`` are ``AckPolicy.AFTER_HANDLE`` and ``BEFORE_HANDLE``; a cache
is consulted as Melange 7 did, under its keys (``CacheStore``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from melange import aio
from melange.backends.interfaces import MessagingBackend
from melange.compat._backends import backend_or_default
from melange.compat._caches import AsyncCacheStore, AsyncNullCache, CacheStore, NullCache
from melange.compat._deprecation import deprecated
from melange.consumers import Consumer
from melange.dispatcher import MessageDispatcher as CurrentDispatcher
from melange.exceptions import ConfigurationError
from melange.idempotency.base import IdempotencyStore
from melange.middleware import ExceptionHook
from melange.policies import AckPolicy, RetryPolicy
from melange.serializers import SerializerRegistry

__all__ = [
    "MELANGE7_RETRY",
    "AsyncMessageDispatcher",
    "AsyncSimpleMessageDispatcher",
    "MessageDispatcher",
    "SimpleMessageDispatcher",
    "ack_policy_of",
]

#: One attempt per delivery; the fourth failed delivery is dead-lettered.
MELANGE7_RETRY = RetryPolicy(immediate_attempts=1, max_deliveries=4)


def ack_policy_of(always_ack: bool, early_ack: bool) -> AckPolicy:
    """Return the acknowledgement policy Melange 7's two flags mean."""
    if early_ack:
        return AckPolicy.BEFORE_HANDLE
    return AckPolicy.AFTER_HANDLE if always_ack else AckPolicy.AFTER_SUCCESS


def _store_of(cache: Any) -> IdempotencyStore | None:
    return None if cache is None or isinstance(cache, NullCache) else CacheStore(cache)


class MessageDispatcher(CurrentDispatcher):
    """Melange 7's ``MessageDispatcher(serializer_registry, cache, backend, …, early_ack)``.

    ``consume_event(queue)`` handles what the queue holds and returns when it
    is empty; ``consume_loop(queue)`` runs until ``stop()``.
    """

    def __init__(
        self,
        serializer_registry: SerializerRegistry,
        cache: Any = None,
        backend: MessagingBackend | None = None,
        always_ack: bool = False,
        early_ack: bool = False,
    ) -> None:
        if type(self) is MessageDispatcher:
            deprecated("MessageDispatcher", "melange.MessageDispatcher(backend, consumers)")
        super().__init__(
            backend_or_default(backend),
            serializers=serializer_registry,
            idempotency=_store_of(cache),
            ack_policy=ack_policy_of(always_ack, early_ack),
            retry=MELANGE7_RETRY,
        )
        self.serializer_registry = serializer_registry
        self.cache = cache if cache is not None else NullCache()
        self.always_ack = always_ack
        self.early_ack = early_ack
        self._stopping = threading.Event()

    def consume_event(
        self,
        queue_name: str,
        on_exception: ExceptionHook | None = None,
        after_consume: Callable[[], None] | None = None,
    ) -> int:
        """Handle the messages ``queue_name`` holds now; return how many were handled."""
        return super().consume_loop(
            queue_name, idle_timeout=0, on_exception=on_exception, after_consume=after_consume
        )

    def consume_loop(  # type: ignore[override]
        self,
        queue_name: str,
        on_exception: ExceptionHook | None = None,
        after_consume: Callable[[], None] | None = None,
        **options: Any,
    ) -> int:
        """Consume until ``stop()`` (melange's ``consume_loop`` options are taken too)."""
        options.setdefault("stop_event", self._stopping)
        return super().consume_loop(
            queue_name, on_exception=on_exception, after_consume=after_consume, **options
        )

    def stop(self) -> None:
        """End ``consume_loop`` once the message in hand is done."""
        self._stopping.set()


class SimpleMessageDispatcher(MessageDispatcher):
    """Melange 7's dispatcher of one consumer (its argument order: the cache before the backend)."""

    def __init__(  # noqa: PLR0917 - Melange 7's signature
        self,
        consumer: Consumer,
        serializer_registry: SerializerRegistry,
        cache: Any = None,
        backend: MessagingBackend | None = None,
        always_ack: bool = False,
        early_ack: bool = False,
    ) -> None:
        deprecated("SimpleMessageDispatcher", "melange.MessageDispatcher(backend, [consumer])")
        super().__init__(serializer_registry, cache, backend, always_ack, early_ack)
        self.attach_consumer(consumer)


def _async_backend(backend: Any) -> aio.AsyncMessagingBackend:
    if isinstance(backend, aio.AsyncMessagingBackend):
        return backend
    if isinstance(backend, MessagingBackend):
        return aio.BridgedBackend(backend)
    bridged = getattr(backend, "bridged", None)
    if isinstance(bridged, aio.AsyncMessagingBackend):
        return bridged  # melange.compat's AsyncLocalSQSBackend
    raise ConfigurationError(f"{backend!r} is not a messaging backend")


def _async_store_of(cache: Any) -> IdempotencyStore | AsyncCacheStore | None:
    if cache is None or isinstance(cache, AsyncNullCache | NullCache):
        return None
    if asyncio.iscoroutinefunction(getattr(cache, "contains", None)):
        return AsyncCacheStore(cache)
    return CacheStore(cache)


class AsyncMessageDispatcher(aio.AsyncMessageDispatcher):
    """Melange 7.3's ``AsyncMessageDispatcher(serializer_registry, backend, cache, …)``.

    ``backend`` may be melange.compat's async SQS backend, a ``melange.aio``
    backend, or a sync backend (bridged). ``message_processing_limit`` (an
    anyio ``CapacityLimiter``) bounds the messages handled at once;
    ``preserve_order`` handles one at a time. ``after_consume`` is called
    once per pass, after the pass.
    """

    def __init__(
        self,
        serializer_registry: SerializerRegistry,
        backend: Any,
        cache: Any = None,
        always_ack: bool = False,
        early_ack: bool = False,
    ) -> None:
        if type(self) is AsyncMessageDispatcher:
            deprecated("AsyncMessageDispatcher", "melange.aio.AsyncMessageDispatcher")
        super().__init__(
            _async_backend(backend),
            serializers=serializer_registry,
            idempotency=_async_store_of(cache),
            ack_policy=ack_policy_of(always_ack, early_ack),
            retry=MELANGE7_RETRY,
            max_concurrency=1,
        )
        self.serializer_registry = serializer_registry
        self.cache = cache if cache is not None else AsyncNullCache()
        self.always_ack = always_ack
        self.early_ack = early_ack
        self._stopping: asyncio.Event | None = None

    async def consume_event(
        self,
        queue_name: str,
        message_processing_limit: Any = None,
        preserve_order: bool = False,
        on_exception: ExceptionHook | None = None,
        after_consume: Callable[[], None] | None = None,
    ) -> int:
        """Handle the messages ``queue_name`` holds now; return how many were handled."""
        handled = await super().consume_loop(
            queue_name,
            idle_timeout=0,
            max_concurrency=_limit(message_processing_limit, preserve_order),
            on_exception=on_exception,
        )
        if after_consume is not None:
            after_consume()
        return handled

    async def consume_loop(  # type: ignore[override]
        self,
        queue_name: str,
        message_processing_limit: Any = None,
        preserve_order: bool = False,
        on_exception: ExceptionHook | None = None,
        after_consume: Callable[[], None] | None = None,
        **options: Any,
    ) -> int:
        """Consume until ``stop()`` or cancellation (melange's options are taken too)."""
        self._stopping = asyncio.Event()
        options.setdefault("stop_event", self._stopping)
        options.setdefault("max_concurrency", _limit(message_processing_limit, preserve_order))
        handled = await super().consume_loop(queue_name, on_exception=on_exception, **options)
        if after_consume is not None:
            after_consume()
        return handled

    def stop(self) -> None:
        """End ``consume_loop`` (call it on the loop's thread)."""
        if self._stopping is not None:
            self._stopping.set()


def _limit(message_processing_limit: Any, preserve_order: bool) -> int:
    if preserve_order or message_processing_limit is None:
        return 1
    return max(1, int(getattr(message_processing_limit, "total_tokens", 1)))


class AsyncSimpleMessageDispatcher(AsyncMessageDispatcher):
    """Melange 7.3's async dispatcher of one consumer."""

    def __init__(  # noqa: PLR0917 - Melange 7's signature
        self,
        consumer: Consumer,
        serializer_registry: SerializerRegistry,
        backend: Any,
        cache: Any = None,
        always_ack: bool = False,
        early_ack: bool = False,
    ) -> None:
        deprecated("AsyncSimpleMessageDispatcher", "melange.aio.AsyncMessageDispatcher")
        super().__init__(serializer_registry, backend, cache, always_ack, early_ack)
        self.attach_consumer(consumer)
