"""The transactional outbox: publish in the same commit as the business write.

``OutboxPublisher(session).publish(OrderCreated(...))`` writes the message
into the ``melange_outbox`` table through the application's own connection
or session, inside its transaction: nothing leaves until it commits, and a
rollback leaves nothing. ``Relay`` (``melange relay --outbox URL``) sends
committed rows to the broker, in order per destination, and deletes each
once the broker confirmed it. ``Inbox`` (a consume middleware) runs each
handler in one transaction with the record of the message handled, so a
redelivery does nothing twice. The tables: ``create_tables(connection)``,
``ddl(dialect)``, or ``melange.outbox.sqlalchemy.metadata`` for Alembic.
See docs/outbox.md.
"""

from __future__ import annotations

from melange.exceptions import OutboxError
from melange.outbox._connections import async_create_tables, create_tables
from melange.outbox._gauges import OutboxGauges
from melange.outbox._inbox import Inbox, transaction
from melange.outbox._open import open_outbox
from melange.outbox._publisher import AsyncOutboxPublisher, OutboxPublisher
from melange.outbox._relay import Relay
from melange.outbox._schema import INBOX_TABLE, NOTIFY_CHANNEL, OUTBOX_TABLE, ddl
from melange.outbox._store import DeadRow, OutboxDepth, SQLOutboxStore

__all__ = [
    "INBOX_TABLE",
    "NOTIFY_CHANNEL",
    "OUTBOX_TABLE",
    "AsyncOutboxPublisher",
    "DeadRow",
    "Inbox",
    "OutboxDepth",
    "OutboxError",
    "OutboxGauges",
    "OutboxPublisher",
    "Relay",
    "SQLOutboxStore",
    "async_create_tables",
    "create_tables",
    "ddl",
    "open_outbox",
    "transaction",
]
