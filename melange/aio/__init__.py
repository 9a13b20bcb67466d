"""melange for asyncio: publish and consume without blocking the event loop.

``from_url(url)`` builds the async backend for any backend URL;
``AsyncMessagePublisher`` and ``AsyncMessageDispatcher`` are the sync API's
twins, sharing its pipeline, serializers, routing, retries, dead letters and
middleware. Listeners may be ``async def``. See docs/asyncio.md.
"""

from melange.aio._bridged import BridgedBackend, from_url
from melange.aio._dispatcher import AsyncMessageDispatcher
from melange.aio._interface import AsyncMessagingBackend
from melange.aio._publisher import AsyncMessagePublisher
from melange.aio._saga_stores import BridgedSagaStore, saga_store_from_url
from melange.aio._stores import (
    AsyncIdempotencyStore,
    AsyncRedisIdempotencyStore,
    BridgedIdempotencyStore,
    store_from_url,
)
from melange.middleware.idempotency_async import AsyncIdempotencyMiddleware

__all__ = [
    "AsyncIdempotencyMiddleware",
    "AsyncIdempotencyStore",
    "AsyncMessageDispatcher",
    "AsyncMessagePublisher",
    "AsyncMessagingBackend",
    "AsyncRedisIdempotencyStore",
    "BridgedBackend",
    "BridgedIdempotencyStore",
    "BridgedSagaStore",
    "from_url",
    "saga_store_from_url",
    "store_from_url",
]
