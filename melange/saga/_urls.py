"""Saga stores from URLs, for the ``melange saga`` commands and configuration."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from melange._secrets import url_error
from melange._sqlite import path_of_url
from melange.exceptions import ConfigurationError
from melange.saga._memory import InMemorySagaStore
from melange.saga._sqlite import SQLiteSagaStore
from melange.saga._store import SagaStore

__all__ = ["DEFAULT_SAGA_STORE_URL", "default_saga_store_url", "saga_store_from_url"]

#: The embedded broker's own file: sagas and messages side by side.
DEFAULT_SAGA_STORE_URL = "sqlite:///melange.db"


def saga_store_from_url(url: str) -> SagaStore:
    """Build a saga store: ``memory://``, ``sqlite:///path.db``, ``postgresql://…``.

    ``?outbox=true`` on a SQL store writes what instances send to the
    database's ``melange_outbox``, for a relay (``melange.outbox``).

    Raises:
        ConfigurationError: the scheme is not known, or the URL cannot be read.
        SagaStoreError: the store cannot be opened.
        MissingExtraError: psycopg is not installed (``postgresql://``).
    """
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise url_error(url, e) from None
    scheme = parts.scheme.lower()
    options = parse_qs(parts.query)
    given = options.pop("outbox", None)
    outbox = given is not None and given[-1].lower() in ("1", "true", "yes")
    if scheme == "memory":
        return InMemorySagaStore()
    if scheme == "sqlite":
        return SQLiteSagaStore(path_of_url(url), outbox=outbox)
    if scheme in ("postgresql", "postgres"):
        from melange.saga import PostgresSagaStore

        # Rebuilt only to drop ``outbox=``: a password as written stays untouched otherwise.
        plain = url if given is None else urlunsplit(parts._replace(query=urlencode(options, True)))
        store: SagaStore = PostgresSagaStore(plain, outbox=outbox)
        return store
    raise ConfigurationError(
        f"unknown saga store URL scheme {scheme!r} (known: memory://, sqlite:///, postgresql://)"
    )


def default_saga_store_url() -> str:
    """Return ``MELANGE_SAGA_STORE_URL`` if set, else the embedded default."""
    return os.environ.get("MELANGE_SAGA_STORE_URL") or DEFAULT_SAGA_STORE_URL
