"""Saga instances in this process's memory: for tests and single-process services."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

from melange.exceptions import SagaConflictError, SagaExistsError
from melange.outgoing import Outgoing
from melange.saga._records import SagaRecord, SagaStatus
from melange.saga._store import SagaStore

__all__ = ["InMemorySagaStore"]


class InMemorySagaStore(SagaStore):
    """A thread-safe saga store in dictionaries; everything is gone with the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], SagaRecord] = {}
        self._keys: dict[tuple[str, str], str] = {}  # (type, key) -> saga id
        self._outbox: dict[tuple[str, str], dict[str, Outgoing]] = {}

    def create(self, record: SagaRecord, outgoing: Sequence[Outgoing] = ()) -> None:
        """Store a new instance with its outgoing messages.

        Raises:
            SagaExistsError: the saga type already has an instance with that key or id.
        """
        ident, key = (record.saga_type, record.saga_id), (record.saga_type, record.key)
        with self._lock:
            if ident in self._records or key in self._keys:
                raise SagaExistsError(f"{record.saga_type} {record.key!r} exists already")
            self._records[ident] = record
            self._keys[key] = record.saga_id
            self._add(ident, outgoing)

    def save(self, record: SagaRecord, outgoing: Sequence[Outgoing] = ()) -> None:
        """Replace the instance saved at ``record.version - 1``.

        Raises:
            SagaConflictError: the stored version is another one.
        """
        ident = (record.saga_type, record.saga_id)
        with self._lock:
            stored = self._records.get(ident)
            if stored is None or stored.version != record.version - 1:
                raise SagaConflictError(
                    f"{record.saga_type} {record.saga_id} is not at version {record.version - 1}"
                )
            self._records[ident] = record
            self._add(ident, outgoing)

    def _add(self, ident: tuple[str, str], outgoing: Sequence[Outgoing]) -> None:
        box = self._outbox.setdefault(ident, {})
        for pending in outgoing:
            box[pending.built.message_id] = pending

    def load(self, saga_type: str, saga_id: str) -> SagaRecord | None:
        """Return the instance with this id, or ``None``."""
        with self._lock:
            return self._records.get((saga_type, saga_id))

    def find(self, saga_type: str, key: str) -> SagaRecord | None:
        """Return the instance with this correlation key, or ``None``."""
        with self._lock:
            saga_id = self._keys.get((saga_type, key))
            return None if saga_id is None else self._records.get((saga_type, saga_id))

    def pending(self, saga_type: str, saga_id: str, *, due_by: float) -> list[Outgoing]:
        """Return the instance's outgoing messages due by ``due_by``, oldest first."""
        with self._lock:
            box = self._outbox.get((saga_type, saga_id), {})
            return [p for p in box.values() if p.due_at <= due_by]

    def sent(self, saga_type: str, saga_id: str, message_ids: Iterable[str]) -> None:
        """Forget outgoing messages that have left."""
        with self._lock:
            box = self._outbox.get((saga_type, saga_id), {})
            for message_id in message_ids:
                box.pop(message_id, None)

    def due(self, saga_type: str, now: float, limit: int = 100) -> list[tuple[str, Outgoing]]:
        """Return ``(saga_id, message)`` for outgoing messages of any instance due by ``now``."""
        with self._lock:
            found = [
                (saga_id, pending)
                for (kind, saga_id), box in self._outbox.items()
                if kind == saga_type
                for pending in box.values()
                if pending.due_at <= now
            ]
        return sorted(found, key=lambda item: item[1].due_at)[:limit]

    def instances(
        self, saga_type: str, *, status: SagaStatus | None = None, limit: int = 1000
    ) -> list[SagaRecord]:
        """Return instances of a saga type (of one status, if given), newest first."""
        with self._lock:
            found = [
                r
                for (kind, _), r in self._records.items()
                if kind == saga_type and (status is None or r.status is status)
            ]
        return sorted(found, key=lambda r: r.created_at, reverse=True)[:limit]

    def purge(self, saga_type: str, *, finished_before: float) -> int:
        """Delete instances that finished before ``finished_before``; return how many."""
        with self._lock:
            gone = [
                ident
                for ident, r in self._records.items()
                if ident[0] == saga_type and r.status.finished and r.updated_at < finished_before
            ]
            for ident in gone:
                record = self._records.pop(ident)
                self._keys.pop((saga_type, record.key), None)
                self._outbox.pop(ident, None)
        return len(gone)
