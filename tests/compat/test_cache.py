"""Melange 7.3's Redis cache tests, on a real redis-server."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from melange.compat import AsyncRedisCache, RedisCache

pytestmark = pytest.mark.redis


def test_store_to_redis_cache(redis_url: str) -> None:
    where = urlsplit(redis_url)
    cache = RedisCache(host=where.hostname, port=where.port, db=0, password=None, expire=3600)
    cache.store("potato", "falafel")
    assert cache.get("potato") == "falafel"
    assert cache.contains("potato")
    assert "potato" in cache
    assert not cache.contains("banana")
    assert 0 < cache.client.ttl("potato") <= 3600


def test_store_to_async_redis_cache(redis_url: str) -> None:
    where = urlsplit(redis_url)

    async def scenario() -> tuple[object, bool, bool]:
        cache = AsyncRedisCache(host=where.hostname, port=where.port, db=0, password=None)
        await cache.store("potato-async", "falafel")
        found = (
            await cache.get("potato-async"),
            await cache.contains("potato-async"),
            await cache.contains("banana"),
        )
        await cache.client.aclose()
        return found

    assert asyncio.run(scenario()) == ("falafel", True, False)
