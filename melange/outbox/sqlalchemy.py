"""The outbox and inbox tables for SQLAlchemy 2: ``metadata`` for Alembic, and the tables.

Add ``melange.outbox.sqlalchemy.metadata`` to Alembic's ``target_metadata``
(a list takes several) so that autogenerate creates the tables and never
drops them. On PostgreSQL, creating the tables from this metadata also
creates the trigger that wakes the relay (``NOTIFY melange_outbox``).
"""

from __future__ import annotations

from melange.exceptions import MissingExtraError
from melange.outbox._schema import INBOX_TABLE, OUTBOX_TABLE, ddl

try:
    from sqlalchemy import (
        REAL,
        BigInteger,
        Column,
        Connection,
        Double,
        Index,
        Integer,
        MetaData,
        Table,
        Text,
        event,
    )
    from sqlalchemy.types import TypeEngine
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("sqlalchemy", "sqlalchemy") from e

__all__ = ["inbox_table", "metadata", "outbox_table"]

metadata = MetaData()
#: Wall-clock seconds: SQLite's REAL, PostgreSQL's DOUBLE PRECISION (as the DDL says).
_SECONDS: TypeEngine[float] = Double().with_variant(REAL(), "sqlite")

outbox_table = Table(
    OUTBOX_TABLE,
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("message_id", Text, nullable=False, unique=True),
    Column("destination_kind", Text, nullable=False),
    Column("destination", Text, nullable=False),
    Column("manifest", Text),
    Column("serializer_id", Integer),
    Column("content", Text, nullable=False),
    Column("headers", Text, nullable=False),
    Column("delay", _SECONDS, nullable=False, server_default="0"),
    Column("created_at", _SECONDS, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("leased_until", _SECONDS, nullable=False, server_default="0"),
    Column("lease_owner", Text),
    Column("last_error", Text),
    Column("dead_at", _SECONDS),
)

inbox_table = Table(
    INBOX_TABLE,
    metadata,
    Column("consumer_id", Text, primary_key=True),
    Column("message_id", Text, primary_key=True),
    Column("processed_at", _SECONDS, nullable=False),
    Index(f"{INBOX_TABLE}_processed", "processed_at"),
)

_TRIGGER = [statement for statement in ddl("postgresql") if "TRIGGER" in statement.upper()]


@event.listens_for(outbox_table, "after_create")
def _add_trigger(target: Table, connection: Connection, **_: object) -> None:
    """On PostgreSQL, the trigger that wakes the relay (the DDL's last statements)."""
    if connection.dialect.name == "postgresql":
        for statement in _TRIGGER:
            connection.exec_driver_sql(statement)
