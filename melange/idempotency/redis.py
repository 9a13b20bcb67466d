"""An idempotency store in Redis: claims shared by workers on many hosts."""

from __future__ import annotations

import os
import threading
from typing import Any

from melange._secrets import check_credentials, url_error
from melange.exceptions import IdempotencyError, MissingExtraError
from melange.idempotency._redis_scripts import IF_OURS_DELETE, IF_OURS_EXPIRE, IF_OURS_SET, ms
from melange.idempotency.base import Claim, IdempotencyStore

try:
    import redis
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("redis", "redis") from e

__all__ = ["RedisIdempotencyStore", "client_from_url"]


def client_from_url(url: str, written: str | None = None) -> redis.Redis:
    """Return a client for ``url`` (no connection yet); errors show ``written`` (or ``url``) masked.

    Raises:
        ConfigurationError: redis-py cannot read the URL.
    """
    check_credentials(written or url)
    try:
        return redis.Redis.from_url(url)
    except ValueError as e:
        raise url_error(written or url, e) from None


class RedisIdempotencyStore(IdempotencyStore):
    """Claims as Redis keys: ``SET NX PX`` to claim, compare-and-set to renew, complete or release.

    A key holds the claimer's random token while in progress and ``done`` once
    completed.

    Takes a ``redis.Redis`` client or a URL. Any Redis error is raised as
    ``IdempotencyError``: deduplication is never silently switched off.
    """

    def __init__(
        self,
        client: redis.Redis | str,
        *,
        ttl_seconds: float = 86_400.0,
        lease_seconds: float = 10.0,
        prefix: str = "melange:claim:",
    ) -> None:
        super().__init__(ttl_seconds=ttl_seconds, lease_seconds=lease_seconds)
        self._redis = client_from_url(client) if isinstance(client, str) else client
        self._prefix = prefix
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        self._set_if_ours = self._redis.register_script(IF_OURS_SET)
        self._delete_if_ours = self._redis.register_script(IF_OURS_DELETE)
        self._expire_if_ours = self._redis.register_script(IF_OURS_EXPIRE)

    def claim(self, consumer_id: str, message_id: str, lease_seconds: float | None = None) -> Claim:
        key = self._prefix + self.key(consumer_id, message_id)
        token = os.urandom(8).hex()
        lease = ms(lease_seconds or self.lease_seconds)
        won = self._call(self._redis.set, key, token, nx=True, px=lease)
        if won:
            with self._lock:
                self._tokens[key] = token
            return Claim.ACQUIRED
        held = self._call(self._redis.get, key)
        return Claim.DONE if held in (b"done", "done") else Claim.IN_PROGRESS

    def renew(self, consumer_id: str, message_id: str, lease_seconds: float) -> None:
        key = self._prefix + self.key(consumer_id, message_id)
        with self._lock:
            token = self._tokens.get(key)
        if token is not None:
            self._call(self._expire_if_ours, keys=[key], args=[token, ms(lease_seconds)])

    def complete(self, consumer_id: str, message_id: str) -> None:
        key = self._prefix + self.key(consumer_id, message_id)
        with self._lock:
            token = self._tokens.get(key)
        if token is not None:
            self._call(self._set_if_ours, keys=[key], args=[token, ms(self.ttl_seconds)])
            self._take_token(key)

    def release(self, consumer_id: str, message_id: str) -> None:
        key = self._prefix + self.key(consumer_id, message_id)
        with self._lock:
            token = self._tokens.get(key)
        if token is not None:
            self._call(self._delete_if_ours, keys=[key], args=[token])
            self._take_token(key)

    def close(self) -> None:
        self._redis.close()

    def _take_token(self, key: str) -> str | None:
        with self._lock:
            return self._tokens.pop(key, None)

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except redis.RedisError as e:
            raise IdempotencyError(f"redis: {e}") from e
