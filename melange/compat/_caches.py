"""Melange 7's duplicate caches, and the idempotency stores that consult them.

A Melange 7 cache remembers ``"<module>.<Consumer>.<message id>"`` once the
consumer handled the message; the stores here read and write those same
keys, so a service keeps the duplicates its Melange 7 version recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from melange.compat._deprecation import deprecated
from melange.exceptions import IdempotencyError, MissingExtraError
from melange.idempotency.base import AsyncIdempotencyStore, Claim, IdempotencyStore

if TYPE_CHECKING:
    import redis
    import redis.asyncio as aioredis

__all__ = [
    "AsyncCacheStore",
    "AsyncDeduplicationCache",
    "AsyncNullCache",
    "AsyncRedisCache",
    "CacheStore",
    "DeduplicationCache",
    "NullCache",
    "RedisCache",
    "cache_key",
    "get_async_redis_cache",
    "get_redis_cache",
]


def cache_key(consumer_id: str, message_id: str) -> str:
    """Return Melange 7's key for a consumer and a message."""
    return f"{consumer_id}.{message_id}"


class DeduplicationCache(Protocol):
    """What Melange 7's dispatcher asks of a cache."""

    def store(self, key: str, value: Any, expire: int | None = None) -> Any:
        """Remember ``key``."""

    def get(self, key: str) -> Any:
        """Return what was stored under ``key``, or ``None``."""

    def __contains__(self, key: object) -> bool:
        """Return whether ``key`` is remembered."""


class AsyncDeduplicationCache(Protocol):
    """``DeduplicationCache`` as coroutines (7.3)."""

    async def store(self, key: str, value: Any, expire: int | None = None) -> Any:
        """Remember ``key``."""

    async def get(self, key: str) -> Any:
        """Return what was stored under ``key``, or ``None``."""

    async def contains(self, key: str) -> bool:
        """Return whether ``key`` is remembered."""


class NullCache:
    """Remembers nothing."""

    def store(self, key: str, value: Any, expire: int | None = None) -> None:
        """Do nothing."""

    def get(self, key: str) -> None:
        """Return ``None``."""

    def contains(self, key: str) -> bool:
        """Return ``False``."""
        return False

    def __contains__(self, key: object) -> bool:
        return False


class AsyncNullCache:
    """Remembers nothing (7.3's async twin)."""

    async def store(self, key: str, value: Any, expire: int | None = None) -> None:
        """Do nothing."""

    async def get(self, key: str) -> None:
        """Return ``None``."""

    async def contains(self, key: str) -> bool:
        """Return ``False``."""
        return False


def _redis_options(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "host": options.get("host", "localhost"),
        "port": options.get("port", 6379),
        "db": options.get("db", 0),
        "password": options.get("password"),
        "decode_responses": True,
    }


class RedisCache:
    """Melange 7.3's Redis cache: ``RedisCache(host=, port=, db=, password=, expire=3600)``.

    Keys are stored as they are, for ``expire`` seconds unless ``store`` is
    given another expiry (7.3 kept them forever; melange does not).
    """

    def __init__(self, **options: Any) -> None:
        deprecated("RedisCache", "melange.idempotency.RedisIdempotencyStore")
        try:
            import redis
        except ModuleNotFoundError as e:
            raise MissingExtraError("redis", "redis") from e
        self.expire: int = options.get("expire", 3600)
        self.client: redis.Redis = redis.Redis(**_redis_options(options))

    def store(self, key: str, value: Any, expire: int | None = None) -> None:
        """Remember ``key`` with ``value``."""
        self.client.set(key, value, ex=expire or self.expire)

    def get(self, key: str) -> Any:
        """Return the value stored under ``key``, or ``None``."""
        return self.client.get(key)

    def contains(self, key: str) -> bool:
        """Return whether ``key`` is stored."""
        return bool(self.client.exists(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.contains(key)


class AsyncRedisCache:
    """``RedisCache`` over ``redis.asyncio`` (7.3)."""

    def __init__(self, **options: Any) -> None:
        deprecated("AsyncRedisCache", "melange.aio.AsyncRedisIdempotencyStore")
        try:
            import redis.asyncio as aioredis
        except ModuleNotFoundError as e:
            raise MissingExtraError("redis", "redis") from e
        self.expire: int = options.get("expire", 3600)
        self.client: aioredis.Redis = aioredis.Redis(**_redis_options(options))

    async def store(self, key: str, value: Any, expire: int | None = None) -> None:
        """Remember ``key`` with ``value``."""
        await self.client.set(key, value, ex=expire or self.expire)

    async def get(self, key: str) -> Any:
        """Return the value stored under ``key``, or ``None``."""
        return await self.client.get(key)

    async def contains(self, key: str) -> bool:
        """Return whether ``key`` is stored."""
        return bool(await self.client.exists(key))


def get_redis_cache(null_if_no_connection: bool = False, **options: Any) -> Any:
    """Return a ``RedisCache``; with ``null_if_no_connection``, a ``NullCache`` if Redis is down."""
    cache = RedisCache(**options)
    if null_if_no_connection:
        import redis

        try:
            cache.client.ping()
        except redis.ConnectionError:
            return NullCache()
    return cache


async def get_async_redis_cache(null_if_no_connection: bool = False, **options: Any) -> Any:
    """Return an ``AsyncRedisCache``; with ``null_if_no_connection``, an ``AsyncNullCache``."""
    cache = AsyncRedisCache(**options)
    if null_if_no_connection:
        import redis

        try:
            await cache.client.ping()
        except redis.ConnectionError:
            return AsyncNullCache()
    return cache


class CacheStore(IdempotencyStore):
    """An idempotency store over a Melange 7 cache, as Melange 7's dispatcher used it.

    Not atomic (Melange 7's check and store were two steps): two workers
    handed one message at once may both run it. ``complete`` stores the key.
    """

    def __init__(self, cache: DeduplicationCache) -> None:
        super().__init__()
        self.cache = cache

    def claim(self, consumer_id: str, message_id: str, lease_seconds: float | None = None) -> Claim:
        """Return ``DONE`` if the cache has the key, else ``ACQUIRED``."""
        key = cache_key(consumer_id, message_id)
        try:
            return Claim.DONE if key in self.cache else Claim.ACQUIRED
        except Exception as e:
            raise IdempotencyError(f"the duplicate cache failed: {e}") from e

    def renew(self, consumer_id: str, message_id: str, lease_seconds: float) -> None:
        """Do nothing: a cache holds no claims."""

    def complete(self, consumer_id: str, message_id: str) -> None:
        """Store the key (its value is the key, as Melange 7 stored it)."""
        key = cache_key(consumer_id, message_id)
        try:
            self.cache.store(key, key)
        except Exception as e:
            raise IdempotencyError(f"the duplicate cache failed: {e}") from e

    def release(self, consumer_id: str, message_id: str) -> None:
        """Do nothing: nothing was stored."""


class AsyncCacheStore(AsyncIdempotencyStore):
    """``CacheStore`` over an ``AsyncDeduplicationCache``."""

    def __init__(self, cache: AsyncDeduplicationCache) -> None:
        self.cache = cache

    async def claim(
        self, consumer_id: str, message_id: str, lease_seconds: float | None = None
    ) -> Claim:
        """Return ``DONE`` if the cache has the key, else ``ACQUIRED``."""
        key = cache_key(consumer_id, message_id)
        try:
            return Claim.DONE if await self.cache.contains(key) else Claim.ACQUIRED
        except Exception as e:
            raise IdempotencyError(f"the duplicate cache failed: {e}") from e

    async def renew(self, consumer_id: str, message_id: str, lease_seconds: float) -> None:
        """Do nothing: a cache holds no claims."""

    async def complete(self, consumer_id: str, message_id: str) -> None:
        """Store the key."""
        key = cache_key(consumer_id, message_id)
        try:
            await self.cache.store(key, key)
        except Exception as e:
            raise IdempotencyError(f"the duplicate cache failed: {e}") from e

    async def release(self, consumer_id: str, message_id: str) -> None:
        """Do nothing: nothing was stored."""
