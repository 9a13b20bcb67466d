"""The relay's outbox in a SQLite file: rows held by a lease while they are sent."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from melange._sqlite import immediate
from melange.exceptions import OutboxError
from melange.outbox._schema import INBOX_TABLE, OUTBOX_TABLE, ddl
from melange.outbox._store import Claim, SQLOutboxStore

__all__ = ["SQLiteOutboxStore"]


class SQLiteOutboxStore(SQLOutboxStore):
    """The outbox of a SQLite database, as one relay sees it.

    A claim leases its rows (``leased_until``, ``lease_owner``) in one
    ``BEGIN IMMEDIATE`` transaction, so relays in several processes never
    hold the same row; a relay that dies lets its lease run out and another
    sends the rows again, under their same message ids. The file's journal
    mode is left as the application set it (WAL is recommended); the relay's
    connection commits with ``synchronous=NORMAL``: a power cut may undo its
    last deletes, and those rows are sent again under the same ids.

    Raises:
        OutboxError: the file cannot be opened.
    """

    dialect = "sqlite"

    def __init__(
        self, path: str | Path, *, busy_timeout: float = 30.0, owner: str | None = None
    ) -> None:
        super().__init__("?", owner=owner)
        self.path = str(path)
        if not Path(self.path).absolute().parent.is_dir():
            raise OutboxError(f"{self.path}: the folder does not exist")
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            # The relay's own writes (leases, deletes) need no fsync each: one that a power
            # cut undoes only sends rows again, under their ids. Corruption-safe in any mode.
            self._db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as e:
            raise OutboxError(f"{self.path}: {e}") from e

    def ensure_tables(self) -> None:
        present = self._read(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
            (OUTBOX_TABLE, INBOX_TABLE),
        )
        if present == [(2,)]:
            return
        with self._transaction() as db:
            for statement in ddl("sqlite"):
                db.execute(statement)

    def claim(
        self,
        limit: int,
        *,
        now: float,
        horizon: float,
        lease_seconds: float,
        ahead: Collection[int] = (),
    ) -> Claim:
        # A read first: an idle relay never takes the write lock from the application.
        # (A relay with a full round still being sent expects more.)
        if not ahead and not self._read(self._candidates, (horizon, now, 0, 1)):
            return Claim([], self.owner)
        with self._transaction() as db:

            def read(sql: str, parameters: Sequence[object]) -> list[tuple[Any, ...]]:
                return db.execute(sql, parameters).fetchall()

            rows, more = self._claimable(read, limit, now, horizon, ahead)
            for sql, parameters in self._leasing(rows, now + lease_seconds):
                db.executemany(sql, parameters)
        return Claim(rows, self.owner, more)

    def settle(self, claim: Claim, *, now: float) -> None:
        if not claim.rows:
            return
        with self._transaction() as db:
            for sql, parameters in self._settling(claim, now):
                db.executemany(sql, parameters)

    def wait_for_rows(self, timeout: float, wake: threading.Event) -> None:
        wake.wait(timeout)  # SQLite has no notifications: the relay polls

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _read(self, sql: str, parameters: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._lock, self._errors():
            return self._db.execute(sql, parameters).fetchall()

    def _write(self, sql: str, parameters: Sequence[object]) -> int:
        with self._transaction() as db:
            return db.execute(sql, parameters).rowcount

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(), immediate(self._db) as db:
            yield db

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as e:
            raise OutboxError(f"{self.path}: {e}") from e
