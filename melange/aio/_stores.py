"""Idempotency stores for asyncio: the store contract, awaitable.

``BridgedIdempotencyStore`` runs a sync store (memory, SQLite: file I/O off
the loop) on threads of its own; ``AsyncRedisIdempotencyStore`` talks to
Redis through ``redis.asyncio`` with the sync store's scripts, so a claim
made by either is honoured by the other. ``store_from_url`` picks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from melange._bridge import in_thread
from melange.exceptions import IdempotencyError, InvalidArgumentError, MissingExtraError
from melange.idempotency import store_from_url as sync_store_from_url
from melange.idempotency._redis_scripts import IF_OURS_DELETE, IF_OURS_EXPIRE, IF_OURS_SET, ms
from melange.idempotency.base import AsyncIdempotencyStore, Claim, IdempotencyStore

__all__ = [
    "AsyncIdempotencyStore",
    "AsyncRedisIdempotencyStore",
    "BridgedIdempotencyStore",
    "store_from_url",
]

_T = TypeVar("_T")


class BridgedIdempotencyStore(AsyncIdempotencyStore):
    """A sync store's calls, run on ``threads`` threads of its own."""

    def __init__(self, store: IdempotencyStore, *, threads: int = 4) -> None:
        self.sync = store
        self.ttl_seconds, self.lease_seconds = store.ttl_seconds, store.lease_seconds
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="melange-aio-store")

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        return await in_thread(self._pool, function, *args)

    async def claim(
        self, consumer_id: str, message_id: str, lease_seconds: float | None = None
    ) -> Claim:
        return await self._run(self.sync.claim, consumer_id, message_id, lease_seconds)

    async def renew(self, consumer_id: str, message_id: str, lease_seconds: float) -> None:
        await self._run(self.sync.renew, consumer_id, message_id, lease_seconds)

    async def complete(self, consumer_id: str, message_id: str) -> None:
        await self._run(self.sync.complete, consumer_id, message_id)

    async def release(self, consumer_id: str, message_id: str) -> None:
        await self._run(self.sync.release, consumer_id, message_id)

    async def close(self) -> None:
        await self._run(self.sync.close)
        self._pool.shutdown(wait=False)


class AsyncRedisIdempotencyStore(AsyncIdempotencyStore):
    """Claims as Redis keys through ``redis.asyncio``; the same keys as ``RedisIdempotencyStore``.

    Takes a ``redis.asyncio.Redis`` client or a URL. Any Redis error is raised
    as ``IdempotencyError``.
    """

    def __init__(
        self,
        client: Any,
        *,
        ttl_seconds: float = 86_400.0,
        lease_seconds: float = 10.0,
        prefix: str = "melange:claim:",
    ) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as e:  # pragma: no cover - only without the extra
            raise MissingExtraError("redis", "redis") from e
        if ttl_seconds <= 0 or lease_seconds <= 0:
            raise InvalidArgumentError("ttl_seconds and lease_seconds must be positive")
        self.ttl_seconds, self.lease_seconds = ttl_seconds, lease_seconds
        self._errors: type[Exception] = aioredis.RedisError
        self._redis = aioredis.Redis.from_url(client) if isinstance(client, str) else client
        self._prefix = prefix
        self._tokens: dict[str, str] = {}
        self._set_if_ours = self._redis.register_script(IF_OURS_SET)
        self._delete_if_ours = self._redis.register_script(IF_OURS_DELETE)
        self._expire_if_ours = self._redis.register_script(IF_OURS_EXPIRE)

    async def claim(
        self, consumer_id: str, message_id: str, lease_seconds: float | None = None
    ) -> Claim:
        key = self._prefix + self.key(consumer_id, message_id)
        token = os.urandom(8).hex()
        lease = ms(lease_seconds or self.lease_seconds)
        if await self._call(self._redis.set(key, token, nx=True, px=lease)):
            self._tokens[key] = token
            return Claim.ACQUIRED
        held = await self._call(self._redis.get(key))
        return Claim.DONE if held in (b"done", "done") else Claim.IN_PROGRESS

    async def renew(self, consumer_id: str, message_id: str, lease_seconds: float) -> None:
        key = self._prefix + self.key(consumer_id, message_id)
        token = self._tokens.get(key)
        if token is not None:
            await self._call(self._expire_if_ours(keys=[key], args=[token, ms(lease_seconds)]))

    async def complete(self, consumer_id: str, message_id: str) -> None:
        key = self._prefix + self.key(consumer_id, message_id)
        token = self._tokens.pop(key, None)
        if token is not None:
            await self._call(self._set_if_ours(keys=[key], args=[token, ms(self.ttl_seconds)]))

    async def release(self, consumer_id: str, message_id: str) -> None:
        key = self._prefix + self.key(consumer_id, message_id)
        token = self._tokens.pop(key, None)
        if token is not None:
            await self._call(self._delete_if_ours(keys=[key], args=[token]))

    async def close(self) -> None:
        await self._redis.aclose()

    async def _call(self, pending: Any) -> Any:
        try:
            return await pending
        except self._errors as e:
            raise IdempotencyError(f"redis: {e}") from e


def store_from_url(url: str) -> AsyncIdempotencyStore:
    """Build an async store from the URLs ``melange.idempotency.store_from_url`` takes.

    ``redis://`` gives an ``AsyncRedisIdempotencyStore``; the others bridge the sync store.
    """
    if url.lower().startswith(("redis://", "rediss://")):
        sync = sync_store_from_url(url)  # parses and checks the options the same way
        options = {"ttl_seconds": sync.ttl_seconds, "lease_seconds": sync.lease_seconds}
        sync.close()
        prefix = parse_qs(urlsplit(url).query).get("prefix", ["melange:claim:"])[-1]
        return AsyncRedisIdempotencyStore(url.split("?", 1)[0], prefix=prefix, **options)
    return BridgedIdempotencyStore(sync_store_from_url(url))
