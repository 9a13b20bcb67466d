"""Idempotency stores: a redelivered message runs each consumer once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from melange._secrets import check_credentials, url_error
from melange._sqlite import path_of_url
from melange.exceptions import ConfigurationError
from melange.idempotency.base import Claim, IdempotencyStore
from melange.idempotency.memory import InMemoryIdempotencyStore
from melange.idempotency.sqlite import SQLiteIdempotencyStore

if TYPE_CHECKING:
    from melange.idempotency.redis import RedisIdempotencyStore

__all__ = [
    "Claim",
    "IdempotencyStore",
    "InMemoryIdempotencyStore",
    "RedisIdempotencyStore",
    "SQLiteIdempotencyStore",
    "store_from_url",
]


def __getattr__(name: str) -> Any:
    # The redis driver is an extra: load it only when the store is asked for.
    if name == "RedisIdempotencyStore":
        from melange.idempotency.redis import RedisIdempotencyStore

        return RedisIdempotencyStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def store_from_url(url: str) -> IdempotencyStore:
    """Build a store from ``memory://``, ``sqlite:///path/claims.db`` or ``redis://host:port/0``.

    ``?lease_seconds=`` and ``?ttl_seconds=`` set those; a Redis URL also takes ``?prefix=``.

    Raises:
        ConfigurationError: the scheme is not known or an option is malformed.
        IdempotencyError: the store cannot be opened.
        MissingExtraError: the Redis driver is not installed.
    """
    check_credentials(url)
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise url_error(url, e) from None
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    options: dict[str, Any] = {}
    try:
        for name in ("lease_seconds", "ttl_seconds"):
            if name in query:
                options[name] = float(query.pop(name))
    except ValueError as e:
        raise url_error(url, e) from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        store: IdempotencyStore = InMemoryIdempotencyStore(**options)
    elif scheme == "sqlite":
        store = SQLiteIdempotencyStore(path_of_url(url), **options)
    elif scheme in ("redis", "rediss"):
        from melange.idempotency.redis import RedisIdempotencyStore, client_from_url

        if "prefix" in query:
            options["prefix"] = query.pop("prefix")
        client = client_from_url(parts._replace(query="").geturl(), written=url)
        store = RedisIdempotencyStore(client, **options)
    else:
        raise ConfigurationError(
            f"unknown idempotency store URL scheme {scheme!r} (known: memory, sqlite, redis)"
        )
    if query:
        store.close()
        raise url_error(url, f"unknown options {sorted(query)}")
    return store
