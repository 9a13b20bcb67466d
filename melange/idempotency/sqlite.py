"""An idempotency store in a SQLite file, shared safely by processes."""

from __future__ import annotations

import time
from pathlib import Path

from melange.backends.sqlite_store import SQLiteFile, translate_errors
from melange.exceptions import BackendError, IdempotencyError
from melange.idempotency.base import IdempotencyStore

__all__ = ["SQLiteIdempotencyStore"]

# One statement, so one write transaction: of several claimers exactly one
# inserts the key or takes over an expired one; the others change no row.
_CLAIM = (
    "INSERT INTO melange_idempotency (key, expires_at) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at"
    " WHERE melange_idempotency.expires_at <= ?"
)
_COMPLETE = (
    "INSERT INTO melange_idempotency (key, expires_at) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at"
)
_RELEASE = "DELETE FROM melange_idempotency WHERE key = ?"
_SWEEP = "DELETE FROM melange_idempotency WHERE expires_at <= ?"
_SWEEP_EVERY = 1000


class SQLiteIdempotencyStore(IdempotencyStore):
    """Claims in a SQLite file (the broker's own file or another), atomic across processes.

    Each call is one statement in its own write transaction; expiry uses the
    wall clock, which every process on the machine shares. Expired claims
    are swept every thousand claims. Each thread gets its own connection.

    Raises:
        IdempotencyError: the file cannot be used.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        ttl_seconds: float = 86_400.0,
        lease_seconds: float = 300.0,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
    ) -> None:
        super().__init__(ttl_seconds=ttl_seconds, lease_seconds=lease_seconds)
        try:
            self._file = SQLiteFile(path, synchronous=synchronous, busy_timeout=busy_timeout)
        except BackendError as e:
            raise IdempotencyError(str(e)) from e
        self.path = self._file.path
        self._claims = 0

    def claim(self, consumer_id: str, message_id: str) -> bool:
        """Take the message for this consumer; ``False`` if it is taken or done.

        Raises:
            IdempotencyError: the file cannot be used.
        """
        now = time.time()
        won = self._execute(
            _CLAIM, (self.key(consumer_id, message_id), now + self.lease_seconds, now)
        )
        self._claims += 1
        if self._claims % _SWEEP_EVERY == 0:
            self._execute(_SWEEP, (now,))
        return won == 1

    def complete(self, consumer_id: str, message_id: str) -> None:
        """Keep the claim for ``ttl_seconds``.

        Raises:
            IdempotencyError: the file cannot be used.
        """
        key = self.key(consumer_id, message_id)
        self._execute(_COMPLETE, (key, time.time() + self.ttl_seconds))

    def release(self, consumer_id: str, message_id: str) -> None:
        """Drop the claim so the message may run again.

        Raises:
            IdempotencyError: the file cannot be used.
        """
        self._execute(_RELEASE, (self.key(consumer_id, message_id),))

    def _execute(self, sql: str, parameters: tuple[object, ...]) -> int:
        try:
            with translate_errors(self.path):
                return self._file.connection().execute(sql, parameters).rowcount
        except BackendError as e:
            raise IdempotencyError(str(e)) from e

    def close(self) -> None:
        """Close the store's connections; safe to call more than once."""
        self._file.close()
