"""An idempotency store in a SQLite file, shared safely by processes."""

from __future__ import annotations

import time
from pathlib import Path

from melange.backends.sqlite_store import SQLiteFile, translate_errors
from melange.exceptions import BackendError, IdempotencyError
from melange.idempotency.base import IdempotencyStore

__all__ = ["SQLiteIdempotencyStore"]

_CLAIM = (
    "INSERT INTO melange_idempotency (key, expires_at) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at"
    " WHERE melange_idempotency.expires_at <= ?"
)
_SWEEP_EVERY = 1000


class SQLiteIdempotencyStore(IdempotencyStore):
    """Claims in a SQLite file (the broker's file or another): one atomic upsert each.

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
    ) -> None:
        super().__init__(ttl_seconds=ttl_seconds, lease_seconds=lease_seconds)
        try:
            self._file = SQLiteFile(path, synchronous=synchronous)
        except BackendError as e:
            raise IdempotencyError(str(e)) from e
        self._claims = 0

    def claim(self, consumer_id: str, message_id: str) -> bool:
        now = time.time()
        key = self.key(consumer_id, message_id)
        try:
            with translate_errors(self._file.path):
                db = self._file.connection()
                won = db.execute(_CLAIM, (key, now + self.lease_seconds, now)).rowcount == 1
                self._claims += 1
                if self._claims % _SWEEP_EVERY == 0:
                    db.execute("DELETE FROM melange_idempotency WHERE expires_at <= ?", (now,))
        except BackendError as e:
            raise IdempotencyError(str(e)) from e
        return won

    def complete(self, consumer_id: str, message_id: str) -> None:
        self._write(
            "UPDATE melange_idempotency SET expires_at = ? WHERE key = ?",
            (time.time() + self.ttl_seconds, self.key(consumer_id, message_id)),
        )

    def release(self, consumer_id: str, message_id: str) -> None:
        self._write(
            "DELETE FROM melange_idempotency WHERE key = ?", (self.key(consumer_id, message_id),)
        )

    def _write(self, sql: str, parameters: tuple[object, ...]) -> None:
        try:
            with translate_errors(self._file.path):
                self._file.connection().execute(sql, parameters)
        except BackendError as e:
            raise IdempotencyError(str(e)) from e

    def close(self) -> None:
        self._file.close()
