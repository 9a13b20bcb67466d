"""The relay's outbox in PostgreSQL: rows locked ``FOR UPDATE SKIP LOCKED`` while sent."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

from melange._secrets import check_credentials, scrubbed, url_error
from melange.exceptions import MissingExtraError, OutboxError
from melange.outbox._schema import INBOX_TABLE, NOTIFY_CHANNEL, OUTBOX_TABLE, ddl
from melange.outbox._store import Claim, SQLOutboxStore

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("psycopg", "postgres") from e

__all__ = ["PostgresOutboxStore"]

_log = logging.getLogger("melange.outbox")

_Connection: TypeAlias = psycopg.Connection[tuple[Any, ...]]
# pg_advisory_xact_lock key ("mlob"): one process at a time creates the tables.
_SCHEMA_LOCK = 0x6D6C6F62
_PRESENT = (
    f"SELECT to_regclass('{OUTBOX_TABLE}') IS NOT NULL AND to_regclass('{INBOX_TABLE}') IS NOT NULL"
    f" AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{OUTBOX_TABLE}_notify')"
)
_LISTEN_SLICE = 0.5  # seconds: how often a wait looks at ``stop``


class PostgresOutboxStore(SQLOutboxStore):
    """The outbox of a PostgreSQL database, as one relay sees it.

    A claim is one transaction that locks its rows ``FOR UPDATE SKIP LOCKED``
    until they are settled: relays never hold the same row, and a relay that
    dies (its connection gone) lets go of them at once. A relay claiming its
    next batch while the last is being sent does it on a second connection. It waits for rows
    with ``LISTEN melange_outbox`` (the table's trigger notifies on commit).
    A connection the server dropped is opened again on the next call.

    Raises:
        ConfigurationError: libpq cannot read the URL.
    """

    dialect = "postgresql"

    def __init__(self, conninfo: str, *, owner: str | None = None) -> None:
        check_credentials(conninfo)
        try:
            conninfo_to_dict(conninfo)
        except psycopg.Error as e:  # libpq's message may quote a piece of the password
            raise url_error(conninfo, e) from None
        super().__init__("%s", owner=owner, locking=" FOR UPDATE SKIP LOCKED")
        self._conninfo = conninfo
        self._lock = threading.RLock()
        self._db: _Connection | None = None
        #: Connections for claims, idle; one holding a claim is in its ``handle``.
        self._idle: list[_Connection] = []
        self._listener: _Connection | None = None

    def ensure_tables(self) -> None:
        # Creating an index, even one that exists, locks the table: skip when all is there.
        with self._session() as db:
            if db.execute(_PRESENT).fetchone() == (True,):
                return
        with self._session() as db, db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in ddl("postgresql"):
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
        with self._lock, self._session(claiming=True) as db:
            # Not autocommit: the transaction, and the row locks, last until ``settle``.
            db.autocommit = False

            def read(sql: str, parameters: Sequence[object]) -> list[tuple[Any, ...]]:
                return db.execute(sql, parameters).fetchall()

            try:
                rows, more = self._claimable(read, limit, now, horizon, ahead)
            except BaseException:
                self._done_with(db)
                raise
            if not rows:
                self._done_with(db)
            return Claim(rows, self.owner, more, handle=db if rows else None)

    def settle(self, claim: Claim, *, now: float) -> None:
        db: _Connection | None = claim.handle
        if db is None:
            return
        with self._lock, self._session(db):
            try:
                with db.cursor() as cursor:
                    # No release: the row locks go with the commit.
                    for sql, parameters in self._settling(claim, now, release=False):
                        if len(parameters) == 1:
                            cursor.execute(sql, parameters[0])
                        else:
                            cursor.executemany(sql, parameters)
                db.commit()
            finally:
                self._done_with(db)

    def listen(self) -> None:
        try:
            self._listening()
        except OutboxError as e:  # the database is down: the first wait tries again
            _log.warning("outbox relay: cannot LISTEN yet (%s); polling until it can", e)

    def wait_for_rows(self, timeout: float, wake: threading.Event) -> None:
        try:
            listener = self._listening()
        except OutboxError:
            wake.wait(timeout)  # the database is down: the relay backs off and retries
            return
        remaining = timeout
        while remaining > 0 and not wake.is_set():
            slice_ = min(remaining, _LISTEN_SLICE)
            try:
                # Others queued behind it make a round that finds nothing: cheaper
                # than draining them, which waits out a timeout of its own.
                if any(True for _ in listener.notifies(timeout=slice_, stop_after=1)):
                    return
            except psycopg.Error:
                self._close_listener()
                return
            remaining -= slice_

    def close(self) -> None:
        with self._lock:
            db, self._db = self._db, None
            idle, self._idle = self._idle, []
            for connection in [db, *idle]:
                if connection is not None:
                    connection.close()
        self._close_listener()

    def _read(self, sql: str, parameters: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._lock, self._session() as db:
            return db.execute(sql, parameters).fetchall()

    def _write(self, sql: str, parameters: Sequence[object]) -> int:
        with self._lock, self._session() as db:
            return db.execute(sql, parameters).rowcount

    @contextmanager
    def _session(
        self, db: _Connection | None = None, *, claiming: bool = False
    ) -> Iterator[_Connection]:
        """Yield ``db``, a connection for a claim or the relay's connection for the rest;
        psycopg's errors become ``OutboxError``.
        """
        try:
            if db is not None:
                connection = db
            else:
                connection = self._claim_connection() if claiming else self._connection()
            yield connection
        except psycopg.Error as e:
            if self._db is not None and self._db.closed:
                self._db = None
            raise OutboxError(f"PostgreSQL: {scrubbed(str(e), self._conninfo)}") from e

    def _connection(self) -> _Connection:
        db = self._db
        if db is None or db.closed:
            db = self._db = psycopg.connect(self._conninfo, autocommit=True)
        return db

    def _claim_connection(self) -> _Connection:
        """Return an idle connection for a claim, opened if there is none."""
        try:
            return self._idle.pop()
        except IndexError:
            return psycopg.connect(self._conninfo, autocommit=True)

    def _done_with(self, db: _Connection) -> None:
        """End a claim's transaction and keep its connection, if it is still open."""
        if db.closed:
            return
        try:
            if db.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                db.rollback()
            db.autocommit = True
        except psycopg.Error:
            db.close()
            return
        self._idle.append(db)

    def _listening(self) -> _Connection:
        listener = self._listener
        if listener is None or listener.closed:
            try:
                listener = psycopg.connect(self._conninfo, autocommit=True)
                listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            except psycopg.Error as e:
                raise OutboxError(f"PostgreSQL: {scrubbed(str(e), self._conninfo)}") from e
            self._listener = listener
        return listener

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
