"""The relay's side of an outbox table: claim rows, settle them, report depth.

``SQLOutboxStore`` holds the queries, written once; the SQLite and
PostgreSQL stores give a connection, a placeholder and how rows are held
while they are sent (a lease on SQLite, row locks on PostgreSQL).
"""

from __future__ import annotations

import abc
import os
import socket
import threading
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from melange.outbox._rows import READ_COLUMNS, Lane, Settlement, StoredMessage, publishable
from melange.outbox._schema import OUTBOX_TABLE

__all__ = ["Claim", "DeadRow", "OutboxDepth", "SQLOutboxStore", "new_owner"]

_T = OUTBOX_TABLE
#: Rows are ready once their delay is within the horizon (now + the longest delay sent).
_ALL = 2**62  # a LIMIT that takes every row
_PAGES = 4  # reads of rows past held lanes, at most, to fill one claim
_CHUNK = 500  # seqs in one ``IN (…)``: under every driver's limit on parameters

Statement = tuple[str, list[tuple[object, ...]]]
"""One SQL statement, and the rows of parameters it runs with (``executemany``)."""
_READY = "dead_at IS NULL AND created_at + delay <= ?"


def new_owner() -> str:
    """Return a name for one relay, unique among those running at once."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class Claim:
    """Rows one relay holds while it sends them, and what became of each."""

    rows: list[StoredMessage]
    owner: str
    #: Whether more rows were ready than the claim read: another round follows at once.
    more: bool = False
    settlement: Settlement = field(default_factory=Settlement)
    #: The store's own handle on the claim (the open transaction on PostgreSQL).
    handle: Any = None


@dataclass(frozen=True, slots=True)
class OutboxDepth:
    """How far behind the relay is: rows waiting, the oldest one's age, rows kept dead."""

    pending: int
    oldest_age: float | None
    dead: int

    def as_dict(self) -> dict[str, Any]:
        return {"pending": self.pending, "oldest_age": self.oldest_age, "dead": self.dead}


@dataclass(frozen=True, slots=True)
class DeadRow:
    """An outbox row that will never be sent, kept with the reason."""

    seq: int
    message_id: str
    destination_kind: str
    destination: str
    manifest: str | None
    attempts: int
    reason: str
    created_at: float
    dead_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "message_id": self.message_id,
            "destination": f"{self.destination_kind}:{self.destination}",
            "manifest": self.manifest,
            "attempts": self.attempts,
            "reason": self.reason,
            "created_at": self.created_at,
            "dead_at": self.dead_at,
        }


class SQLOutboxStore(abc.ABC):
    """The queries of the relay, for a driver whose parameter marker is ``placeholder``.

    ``locking`` ends the query that claims rows (``FOR UPDATE SKIP LOCKED``).
    """

    dialect: str

    def __init__(self, placeholder: str, *, owner: str | None = None, locking: str = "") -> None:
        def sql(text: str) -> str:
            return text.replace("?", placeholder)

        #: This relay's name in ``lease_owner``.
        self.owner = owner or new_owner()
        self._candidates = sql(
            f"SELECT {READ_COLUMNS} FROM {_T} WHERE {_READY} AND leased_until <= ? AND seq > ?"
            f" ORDER BY seq LIMIT ?{locking}"
        )
        self._pending = sql(
            f"SELECT seq, destination_kind, destination FROM {_T}"
            f" WHERE {_READY} AND seq > ? AND seq <= ?"
        )
        self._mark = placeholder
        self._lease = sql(f"UPDATE {_T} SET leased_until = ?, lease_owner = ? WHERE seq IN ")
        self._delete = f"DELETE FROM {_T} WHERE seq IN "
        self._retry = sql(
            f"UPDATE {_T} SET attempts = attempts + 1, last_error = ?, leased_until = ?,"
            " lease_owner = NULL WHERE seq = ?"
        )
        self._dead = sql(
            f"UPDATE {_T} SET attempts = attempts + 1, last_error = ?, dead_at = ?,"
            " leased_until = 0, lease_owner = NULL WHERE seq = ?"
        )
        self._release = sql(
            f"UPDATE {_T} SET leased_until = 0, lease_owner = NULL"
            " WHERE lease_owner = ? AND seq IN "
        )
        self._depth = sql(f"SELECT count(*), min(created_at) FROM {_T} WHERE dead_at IS NULL")
        self._dead_count = f"SELECT count(*) FROM {_T} WHERE dead_at IS NOT NULL"
        self._dead_rows = sql(
            "SELECT seq, message_id, destination_kind, destination, manifest, attempts,"
            f" last_error, created_at, dead_at FROM {_T} WHERE dead_at IS NOT NULL"
            " ORDER BY seq LIMIT ?"
        )
        self._redrive = sql(
            f"UPDATE {_T} SET dead_at = NULL, attempts = 0, leased_until = 0, lease_owner = NULL"
            f" WHERE seq IN (SELECT seq FROM {_T} WHERE dead_at IS NOT NULL ORDER BY seq LIMIT ?)"
        )

    # -- what each store provides --------------------------------------------------

    @abc.abstractmethod
    def claim(
        self,
        limit: int,
        *,
        now: float,
        horizon: float,
        lease_seconds: float,
        ahead: Collection[int] = (),
    ) -> Claim:
        """Hold up to ``limit`` rows that may leave now; ``settle`` must follow.

        ``ahead`` are rows of an earlier claim of this relay's, still being
        sent: they do not hold back the rows behind them.

        Raises:
            OutboxError: the database cannot be used.
        """

    @abc.abstractmethod
    def settle(self, claim: Claim, *, now: float) -> None:
        """Apply what became of a claim's rows and let go of the rest.

        Raises:
            OutboxError: the database cannot be used (the rows are sent again later).
        """

    @abc.abstractmethod
    def _read(self, sql: str, parameters: Sequence[object]) -> list[tuple[Any, ...]]:
        """Return the rows of one query outside a claim.

        Raises:
            OutboxError: the database cannot be used.
        """

    @abc.abstractmethod
    def _write(self, sql: str, parameters: Sequence[object]) -> int:
        """Run one statement in a transaction of its own; return how many rows it changed.

        Raises:
            OutboxError: the database cannot be used.
        """

    @abc.abstractmethod
    def ensure_tables(self) -> None:
        """Create the outbox and inbox tables unless they exist."""

    def listen(self) -> None:  # noqa: B027 - a store with no notifications only polls
        """Start listening for commits that add rows, if the database notifies them."""

    @abc.abstractmethod
    def wait_for_rows(self, timeout: float, wake: threading.Event) -> None:
        """Wait up to ``timeout`` seconds for a commit that added rows, or for ``wake``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the store's connections; safe to call more than once."""

    # -- the shared steps -----------------------------------------------------------

    def _claimable(
        self, read: Any, limit: int, now: float, horizon: float, ahead: Collection[int]
    ) -> tuple[list[StoredMessage], bool]:
        """Return the rows to claim, given ``read(sql, parameters)`` inside the claim, and
        whether more rows are ready than were read.

        Rows behind a lane's refused or held head cannot go: the rows after
        them are read too, a few pages, so that other lanes still fill a batch.
        A page asks only for the rows still missing: none is read (and, on
        PostgreSQL, locked) that the batch has no room for.
        """
        rows: list[StoredMessage] = []
        pending: list[tuple[int, Lane]] = []
        kept: list[StoredMessage] = []
        more = False
        for _ in range(_PAGES):
            after, wanted = (rows[-1].seq if rows else 0), limit - len(kept)
            page = [
                StoredMessage.of_row(r)
                for r in read(self._candidates, (horizon, now, after, wanted))
            ]
            if not page:
                break
            rows += page
            pending += [
                (int(seq), (str(kind), str(dest)))
                for seq, kind, dest in read(self._pending, (horizon, after, rows[-1].seq))
            ]
            kept = publishable(rows, pending, ahead)
            more = len(page) == wanted
            if len(kept) >= limit or not more:
                break
        return kept, more and bool(kept)

    def _for_each(self, head: str, first: tuple[object, ...], seqs: list[int]) -> list[Statement]:
        """Return ``head`` + ``(seq, seq…)`` per chunk of ``seqs``: a statement, not one a row."""
        return [
            (
                head + "(" + ", ".join([self._mark] * len(chunk)) + ")",
                [(*first, *chunk)],
            )
            for chunk in (seqs[i : i + _CHUNK] for i in range(0, len(seqs), _CHUNK))
        ]

    def _leasing(self, rows: list[StoredMessage], until: float) -> list[Statement]:
        """Return the statements that lease ``rows`` to this relay until ``until``."""
        return self._for_each(self._lease, (until, self.owner), [row.seq for row in rows])

    def _settling(self, claim: Claim, now: float, *, release: bool = True) -> list[Statement]:
        """Return the statements that apply a claim's settlement (and release the rest)."""
        done = claim.settlement
        settled = set(done.sent) | {seq for seq, *_ in done.retried} | {s for s, _ in done.dead}
        statements = self._for_each(self._delete, (), done.sent)
        if done.retried:
            statements.append(
                (self._retry, [(reason, at, seq) for seq, reason, at in done.retried])
            )
        if done.dead:
            statements.append((self._dead, [(reason, now, seq) for seq, reason in done.dead]))
        if release:
            rest = [row.seq for row in claim.rows if row.seq not in settled]
            statements += self._for_each(self._release, (claim.owner,), rest)
        return statements

    def depth(self, now: float) -> OutboxDepth:
        """Return how many rows wait, how old the oldest is, and how many are dead."""
        [(pending, oldest)] = self._read(self._depth, ())
        [(dead,)] = self._read(self._dead_count, ())
        age = None if oldest is None else max(0.0, now - float(oldest))
        return OutboxDepth(int(pending), age, int(dead))

    def redrive(self, limit: int | None = None) -> int:
        """Give the first ``limit`` dead rows (all: ``None``) back to the relay; return how many.

        Their attempts start again from 0; their last error stays until they are sent.
        """
        return self._write(self._redrive, (_ALL if limit is None else limit,))

    def dead_rows(self, limit: int = 10) -> list[DeadRow]:
        """Return the first ``limit`` rows kept dead, oldest first."""
        return [
            DeadRow(
                int(seq),
                str(message_id),
                str(kind),
                str(dest),
                None if manifest is None else str(manifest),
                int(attempts),
                str(reason or ""),
                float(created_at),
                float(dead_at),
            )
            for seq, message_id, kind, dest, manifest, attempts, reason, created_at, dead_at in (
                self._read(self._dead_rows, (limit,))
            )
        ]
