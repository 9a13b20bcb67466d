"""The SQL saga stores' queries and logic, written once for every SQL driver.

A store built on ``SQLSagaStore`` gives its placeholder style, its statement
that adds outbox rows unless they exist, a transaction, a read, and how to
tell a uniqueness violation; the queries and what each method does with
them live here.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any, Protocol

from melange.exceptions import SagaConflictError, SagaExistsError, SagaStoreError
from melange.outbox._rows import row_of
from melange.outbox._schema import OUTBOX_COLUMNS, OUTBOX_TABLE
from melange.outgoing import Outgoing
from melange.saga._records import SagaRecord, SagaStatus
from melange.saga._store import SagaStore

__all__ = ["SQLSagaStore", "Writer"]


def _sent_at(outgoing: Outgoing, now: float) -> Outgoing:
    """Return ``outgoing`` with what it waits for in the store folded into its delay."""
    waits = max(0.0, outgoing.due_at - now) if outgoing.due_at else 0.0
    if not waits:
        return outgoing
    return replace(outgoing, delay=outgoing.delay + waits, due_at=0.0)


_COLUMNS = "saga_type, saga_id, key, status, version, updated_at, body"
_FINISHED = (SagaStatus.COMPLETED.value, SagaStatus.FAILED.value)


class Writer(Protocol):
    """Statements inside one transaction of a store's connection."""

    def execute(self, sql: str, parameters: Sequence[object]) -> int:
        """Run one statement; return how many rows it changed."""

    def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """Run one statement for each row of parameters."""


class SQLSagaStore(SagaStore):
    """Saga instances in the tables ``melange_sagas`` and ``melange_saga_outbox``.

    ``placeholder`` is the driver's parameter marker (``?``, ``%s``);
    ``insert_outgoing`` adds an outbox row unless one with its message id exists.
    """

    def __init__(self, placeholder: str, insert_outgoing: str) -> None:
        def sql(text: str) -> str:
            return text.replace("?", placeholder)

        self._insert_outbox = sql(
            f"INSERT INTO {OUTBOX_TABLE} ({', '.join(OUTBOX_COLUMNS)})"
            f" VALUES ({', '.join('?' * len(OUTBOX_COLUMNS))}) ON CONFLICT DO NOTHING"
        )

        self._insert = sql(
            "INSERT INTO melange_sagas"
            " (saga_type, saga_id, key, status, version, created_at, updated_at, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._update = sql(
            "UPDATE melange_sagas SET status = ?, version = ?, updated_at = ?, body = ?"
            " WHERE saga_type = ? AND saga_id = ? AND version = ?"
        )
        self._insert_outgoing = sql(insert_outgoing)
        select = f"SELECT {_COLUMNS} FROM melange_sagas WHERE saga_type = ?"
        self._by_id = sql(f"{select} AND saga_id = ?")
        self._by_key = sql(f"{select} AND key = ?")
        self._pending = sql(
            "SELECT body FROM melange_saga_outbox WHERE saga_type = ? AND saga_id = ?"
            " AND due_at <= ? ORDER BY seq"
        )
        self._sent = sql(
            "DELETE FROM melange_saga_outbox WHERE saga_type = ? AND saga_id = ? AND message_id = ?"
        )
        self._due = sql(
            "SELECT saga_id, body FROM melange_saga_outbox WHERE saga_type = ? AND due_at <= ?"
            " ORDER BY due_at, seq LIMIT ?"
        )
        self._instances = sql(f"{select} ORDER BY created_at DESC LIMIT ?")
        self._instances_of = sql(f"{select} AND status = ? ORDER BY created_at DESC LIMIT ?")
        self._purge_outbox = sql(
            "DELETE FROM melange_saga_outbox WHERE saga_type = ? AND saga_id IN"
            " (SELECT saga_id FROM melange_sagas WHERE saga_type = ?"
            " AND status IN (?, ?) AND updated_at < ?)"
        )
        self._purge = sql(
            "DELETE FROM melange_sagas WHERE saga_type = ? AND status IN (?, ?) AND updated_at < ?"
        )

    # -- what each store provides --------------------------------------------------

    @abc.abstractmethod
    def _transaction(self) -> AbstractContextManager[Writer]:
        """Return one transaction, committed on leaving; errors raise ``SagaStoreError``."""

    @abc.abstractmethod
    def _read(self, sql: str, parameters: Sequence[object]) -> list[tuple[Any, ...]]:
        """Return the rows of one query; errors raise ``SagaStoreError``."""

    @abc.abstractmethod
    def _is_duplicate(self, error: SagaStoreError) -> bool:
        """Return whether ``error`` comes from a uniqueness violation."""

    # -- the interface -------------------------------------------------------------

    def create(self, record: SagaRecord, outgoing: Sequence[Outgoing] = ()) -> None:
        """Store a new instance with its outgoing messages, in one transaction.

        Raises:
            SagaExistsError: the saga type already has an instance with that key or id.
            SagaStoreError: the store cannot be used.
        """
        try:
            with self._transaction() as db:
                db.execute(self._insert, record.insert_row())
                self._add(db, record, outgoing)
        except SagaStoreError as e:
            if self._is_duplicate(e):
                raise SagaExistsError(f"{record.saga_type} {record.key!r} exists already") from e
            raise

    def save(self, record: SagaRecord, outgoing: Sequence[Outgoing] = ()) -> None:
        """Replace the instance saved at ``record.version - 1``, in one transaction.

        Raises:
            SagaConflictError: the stored version is another one (or the instance is gone).
            SagaStoreError: the store cannot be used.
        """
        with self._transaction() as db:
            if db.execute(self._update, record.update_row()) != 1:
                raise SagaConflictError(
                    f"{record.saga_type} {record.saga_id} is not at version {record.version - 1}"
                )
            self._add(db, record, outgoing)

    def _add(self, db: Writer, record: SagaRecord, outgoing: Sequence[Outgoing]) -> None:
        if not outgoing:
            return
        if self.outbox_url is not None:  # the relay sends them
            now = time.time()
            db.execute_many(self._insert_outbox, [row_of(_sent_at(o, now), now) for o in outgoing])
        else:
            db.execute_many(self._insert_outgoing, record.outbox_rows(outgoing))

    def load(self, saga_type: str, saga_id: str) -> SagaRecord | None:
        """Return the instance with this id, or ``None``."""
        rows = self._read(self._by_id, (saga_type, saga_id))
        return SagaRecord.from_row(rows[0]) if rows else None

    def find(self, saga_type: str, key: str) -> SagaRecord | None:
        """Return the instance with this correlation key, or ``None``."""
        rows = self._read(self._by_key, (saga_type, key))
        return SagaRecord.from_row(rows[0]) if rows else None

    def pending(self, saga_type: str, saga_id: str, *, due_by: float) -> list[Outgoing]:
        """Return the instance's outgoing messages due by ``due_by``, oldest first."""
        if self.outbox_url is not None:  # the relay sends them
            return []
        rows = self._read(self._pending, (saga_type, saga_id, due_by))
        return [Outgoing.from_json(str(body)) for (body,) in rows]

    def sent(self, saga_type: str, saga_id: str, message_ids: Iterable[str]) -> None:
        """Forget outgoing messages that have left."""
        rows = [(saga_type, saga_id, message_id) for message_id in message_ids]
        if rows:
            with self._transaction() as db:
                db.execute_many(self._sent, rows)

    def due(self, saga_type: str, now: float, limit: int = 100) -> list[tuple[str, Outgoing]]:
        """Return ``(saga_id, message)`` for outgoing messages of any instance due by ``now``."""
        if self.outbox_url is not None:  # the relay sends them
            return []
        rows = self._read(self._due, (saga_type, now, limit))
        return [(str(saga_id), Outgoing.from_json(str(body))) for saga_id, body in rows]

    def instances(
        self, saga_type: str, *, status: SagaStatus | None = None, limit: int = 1000
    ) -> list[SagaRecord]:
        """Return instances of a saga type (of one status, if given), newest first."""
        if status is None:
            rows = self._read(self._instances, (saga_type, limit))
        else:
            rows = self._read(self._instances_of, (saga_type, status.value, limit))
        return [SagaRecord.from_row(row) for row in rows]

    def purge(self, saga_type: str, *, finished_before: float) -> int:
        """Delete instances that finished before ``finished_before`` and their outbox."""
        with self._transaction() as db:
            db.execute(self._purge_outbox, (saga_type, saga_type, *_FINISHED, finished_before))
            return db.execute(self._purge, (saga_type, *_FINISHED, finished_before))
