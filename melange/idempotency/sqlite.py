"""An idempotency store in a SQLite file, shared safely by processes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from melange._sqlite import Schema, SQLiteFile, translate_errors
from melange.exceptions import BackendError, IdempotencyError
from melange.idempotency.base import Claim, IdempotencyStore

__all__ = ["SQLiteIdempotencyStore"]

_SCHEMA = Schema(
    "idempotency",
    1,
    (
        """CREATE TABLE IF NOT EXISTS melange_idempotency_claims (
            key TEXT PRIMARY KEY,
            done INTEGER NOT NULL,
            token BLOB,
            expires_at REAL NOT NULL
        ) WITHOUT ROWID""",
    ),
)
# One statement, so one write transaction: of several claimers exactly one
# inserts the key or takes over an expired one; the others change no row.
_CLAIM = (
    "INSERT INTO melange_idempotency_claims (key, done, token, expires_at) VALUES (?, 0, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET done = 0, token = excluded.token,"
    " expires_at = excluded.expires_at WHERE melange_idempotency_claims.expires_at <= ?"
)
_STATE = "SELECT done FROM melange_idempotency_claims WHERE key = ? AND expires_at > ?"
_RENEW = (
    "UPDATE melange_idempotency_claims SET expires_at = ? WHERE key = ? AND token = ? AND done = 0"
)
_COMPLETE = (
    "INSERT INTO melange_idempotency_claims (key, done, token, expires_at) VALUES (?, 1, NULL, ?)"
    " ON CONFLICT (key) DO UPDATE SET done = 1, token = NULL, expires_at = excluded.expires_at"
)
_RELEASE = "DELETE FROM melange_idempotency_claims WHERE key = ? AND token = ? AND done = 0"
_SWEEP = "DELETE FROM melange_idempotency_claims WHERE expires_at <= ?"
_SWEEP_EVERY = 1000


class SQLiteIdempotencyStore(IdempotencyStore):
    """Claims in a SQLite file (the broker's own file or another), atomic across processes.

    The store owns the table ``melange_idempotency_claims``. Each call is one
    statement in its own write transaction; expiry uses the wall clock, which
    every process on the machine shares. Each claim carries a random token so
    that only its holder renews, completes or releases it. Expired claims are
    swept every thousand claims. Each thread gets its own connection.

    Raises:
        IdempotencyError: the file cannot be used.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        ttl_seconds: float = 86_400.0,
        lease_seconds: float = 10.0,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
    ) -> None:
        super().__init__(ttl_seconds=ttl_seconds, lease_seconds=lease_seconds)
        try:
            self._file = SQLiteFile(path, synchronous=synchronous, busy_timeout=busy_timeout)
            self._file.ensure(_SCHEMA)
        except BackendError as e:
            raise IdempotencyError(str(e)) from e
        self.path = self._file.path
        self._claims = 0
        self._tokens: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def claim(self, consumer_id: str, message_id: str, lease_seconds: float | None = None) -> Claim:
        """Try to take the message for this consumer.

        Raises:
            IdempotencyError: the file cannot be used.
        """
        key = self.key(consumer_id, message_id)
        token = os.urandom(8)
        now = time.time()
        lease = lease_seconds or self.lease_seconds
        won = self._execute(_CLAIM, (key, token, now + lease, now))
        self._claims += 1
        if self._claims % _SWEEP_EVERY == 0:
            self._execute(_SWEEP, (now,))
        if won == 1:
            with self._lock:
                self._tokens[key] = token
            return Claim.ACQUIRED
        rows = self._read(_STATE, (key, now))
        # Gone since the insert lost (it expired): someone may take it; say "try later".
        return Claim.DONE if rows and rows[0][0] else Claim.IN_PROGRESS

    def renew(self, consumer_id: str, message_id: str, lease_seconds: float) -> None:
        """Extend this worker's claim.

        Raises:
            IdempotencyError: the file cannot be used.
        """
        key = self.key(consumer_id, message_id)
        token = self._token(key)
        if token is not None:
            self._execute(_RENEW, (time.time() + lease_seconds, key, token))

    def complete(self, consumer_id: str, message_id: str) -> None:
        """Mark the message done for ``ttl_seconds``.

        Raises:
            IdempotencyError: the file cannot be used.
        """
        key = self.key(consumer_id, message_id)
        self._execute(_COMPLETE, (key, time.time() + self.ttl_seconds))
        with self._lock:
            self._tokens.pop(key, None)

    def release(self, consumer_id: str, message_id: str) -> None:
        """Drop this worker's claim so the message may run again.

        Raises:
            IdempotencyError: the file cannot be used.
        """
        key = self.key(consumer_id, message_id)
        token = self._token(key)
        if token is not None:
            self._execute(_RELEASE, (key, token))
            with self._lock:
                self._tokens.pop(key, None)

    def _token(self, key: str) -> bytes | None:
        with self._lock:
            return self._tokens.get(key)

    def _execute(self, sql: str, parameters: tuple[object, ...]) -> int:
        try:
            with translate_errors(self.path):
                return self._file.connection().execute(sql, parameters).rowcount
        except BackendError as e:
            raise IdempotencyError(str(e)) from e

    def _read(self, sql: str, parameters: tuple[object, ...]) -> list[tuple[object, ...]]:
        try:
            return self._file.read(sql, parameters)
        except BackendError as e:
            raise IdempotencyError(str(e)) from e

    def close(self) -> None:
        """Close the store's connections; safe to call more than once."""
        self._file.close()
