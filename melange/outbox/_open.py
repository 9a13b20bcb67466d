"""``open_outbox``: the relay's store of a database URL."""

from __future__ import annotations

from melange._sqlite import path_of_url
from melange.outbox._schema import dialect_of_url
from melange.outbox._store import SQLOutboxStore

__all__ = ["open_outbox", "plain_url"]


def plain_url(url: str) -> str:
    """Return ``url`` without a SQLAlchemy driver name (``postgresql+psycopg://`` → ``postgresql://``)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.partition('+')[0]}{sep}{rest}" if sep else url


def open_outbox(url: str, *, owner: str | None = None) -> SQLOutboxStore:
    """Return the outbox of the database at ``url``: ``sqlite:///path`` or ``postgresql://…``.

    SQLAlchemy's URLs (``sqlite+pysqlite:///…``, ``postgresql+psycopg://…``) are taken too.

    Raises:
        ConfigurationError: a URL of another database, or one its driver cannot read.
        MissingExtraError: PostgreSQL without the ``postgres`` extra.
        OutboxError: the database cannot be opened.
    """
    plain = plain_url(url)
    if dialect_of_url(plain) == "sqlite":
        from melange.outbox._sqlite_store import SQLiteOutboxStore

        return SQLiteOutboxStore(path_of_url(plain), owner=owner)
    from melange.outbox._postgres_store import PostgresOutboxStore

    return PostgresOutboxStore(plain.replace("postgres://", "postgresql://", 1), owner=owner)
