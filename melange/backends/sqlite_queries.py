"""What ``SQLiteBackend`` does inside its transactions: the statements on the schema.

Every function takes a connection that is already inside a ``BEGIN
IMMEDIATE`` transaction (``SQLiteFile.transaction()``), so no other writer,
in any process, runs between its statements.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any, NamedTuple

from melange.exceptions import QueueNotFoundError
from melange.models import Message

__all__ = [
    "ACKNOWLEDGE_CLAIM",
    "PEEK",
    "QUEUE_AND_NEXT_ID",
    "RELEASE",
    "Claimed",
    "claim",
    "insert",
    "next_id",
]

_INSERT_BODY = "INSERT INTO melange_bodies VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_DELIVERY = "INSERT INTO melange_deliveries (queue, visible_at, id) VALUES (?, ?, ?)"
_NEXT_ID = "SELECT coalesce(max(id), 0) + 1 FROM melange_bodies"
QUEUE_AND_NEXT_ID = (
    "SELECT (SELECT 1 FROM melange_queues WHERE name = ?),"
    " (SELECT coalesce(max(id), 0) + 1 FROM melange_bodies)"
)
_SETTINGS = (
    "SELECT q.visibility_timeout, q.max_receive_count, d.name FROM melange_queues AS q"
    " LEFT JOIN melange_queues AS d ON d.name = q.dead_letter_queue WHERE q.name = ?"
)
PEEK = "SELECT 1 FROM melange_deliveries WHERE queue = ? AND visible_at <= ? LIMIT 1"
# Keyset paging: a second page (after dead-letter moves) starts past the first.
_CANDIDATES = (
    "SELECT visible_at, id, receive_count FROM melange_deliveries"
    " WHERE queue = ? AND (visible_at, id) > (?, ?) AND visible_at <= ?"
    " ORDER BY visible_at, id LIMIT ?"
)
_CLAIM = (
    "UPDATE melange_deliveries SET visible_at = ?, receive_count = receive_count + 1, claim = ?"
    " WHERE queue = ? AND visible_at = ? AND id = ?"
)
# The candidates of one page are consecutive in the primary key and no other
# writer can add rows among them, so when none is dead-lettered one range
# update claims them all.
_CLAIM_RANGE = (
    "UPDATE melange_deliveries SET visible_at = ?, receive_count = receive_count + 1, claim = ?"
    " WHERE queue = ? AND (visible_at, id) >= (?, ?) AND (visible_at, id) <= (?, ?)"
)
_TO_DEAD_LETTERS = (
    "UPDATE melange_deliveries SET queue = ?, visible_at = ?, receive_count = 0, claim = NULL"
    " WHERE queue = ? AND visible_at = ? AND id = ?"
)
_CLAIMED = (
    "SELECT d.id, d.receive_count, b.message_id, b.content, b.metadata, b.serializer_id,"
    " b.manifest FROM melange_deliveries AS d JOIN melange_bodies AS b ON b.id = d.id"
    " WHERE d.queue = ? AND d.visible_at = ? AND d.claim = ? ORDER BY d.id"
)
# Formatted with one "?" per id: the deliveries of one receive share its claim.
# The bodies go with their deliveries (a trigger), so this is the whole ack.
ACKNOWLEDGE_CLAIM = (
    "DELETE FROM melange_deliveries WHERE queue = ? AND visible_at = ? AND claim = ?"
    " AND id IN ({ids})"
)
RELEASE = (
    "UPDATE melange_deliveries SET visible_at = ?, claim = NULL"
    " WHERE queue = ? AND visible_at = ? AND id = ? AND claim = ?"
)

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class Claimed(NamedTuple):
    """The outcome of one receive: the claim's deadline and the claimed rows.

    Each row is ``(id, receive_count, message_id, content, metadata JSON,
    serializer_id, manifest)``.
    """

    deadline: float
    rows: list[tuple[Any, ...]]


def next_id(db: sqlite3.Connection) -> int:
    """Return the first free body id (allocated under the write lock)."""
    first: int = db.execute(_NEXT_ID).fetchone()[0]
    return first


def insert(
    db: sqlite3.Connection,
    messages: Sequence[Message],
    queue: str,
    visible_at: float,
    first: int,
) -> None:
    """Store messages in a queue with the ids ``first, first + 1, …``."""
    db.executemany(
        _INSERT_BODY,
        [
            (
                first + n,
                m.message_id,
                m.content,
                _encode(m.metadata if type(m.metadata) is dict else dict(m.metadata)),
                m.serializer_id,
                m.manifest,
            )
            for n, m in enumerate(messages)
        ],
    )
    db.executemany(_INSERT_DELIVERY, [(queue, visible_at, first + n) for n in range(len(messages))])


def claim(db: sqlite3.Connection, queue: str, limit: int, token: bytes, now: float) -> Claimed:
    """Claim up to ``limit`` visible messages of a queue, dead-lettering the spent ones.

    Raises:
        QueueNotFoundError: the queue does not exist.
    """
    settings = db.execute(_SETTINGS, (queue,)).fetchone()
    if settings is None:
        raise QueueNotFoundError(f"queue {queue!r} does not exist")
    visibility_timeout, max_receive_count, dead_letter = settings
    deadline = now + visibility_timeout
    claimed = 0
    one_by_one: list[tuple[Any, ...]] = []
    after: tuple[float, int] = (-1.0, 0)
    while claimed < limit:
        wanted = limit - claimed
        candidates = db.execute(_CANDIDATES, (queue, *after, now, wanted)).fetchall()
        moved = [c for c in candidates if dead_letter is not None and c[2] >= max_receive_count]
        if not moved:
            if candidates:
                first, last = candidates[0][:2], candidates[-1][:2]
                db.execute(_CLAIM_RANGE, (deadline, token, queue, *first, *last))
                claimed += len(candidates)
            break
        db.executemany(_TO_DEAD_LETTERS, [(dead_letter, now, queue, *c[:2]) for c in moved])
        kept = [(deadline, token, queue, *c[:2]) for c in candidates if c[2] < max_receive_count]
        one_by_one.extend(kept)
        claimed += len(kept)
        if len(candidates) < wanted:
            break
        after = candidates[-1][:2]
    if not claimed:
        return Claimed(deadline, [])
    # Claimed after paging, so that a later page cannot see them again (with
    # a visibility timeout of 0 their new time is still "now").
    db.executemany(_CLAIM, one_by_one)
    return Claimed(deadline, db.execute(_CLAIMED, (queue, deadline, token)).fetchall())
