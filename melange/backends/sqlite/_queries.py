"""What ``SQLiteBackend`` does inside its transactions, and how its rows become messages.

Every function that takes a connection expects it inside a ``BEGIN
IMMEDIATE`` transaction (``SQLiteFile.transaction()``), so no other writer,
in any process, runs between its statements.

Rows may have been written by other programs or be corrupt: ``received``
decodes each claimed row on its own when the batch cannot be read at once,
and a row it cannot read comes back ``undecodable`` (see ``melange.backends.decoding``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from itertools import chain, repeat
from typing import Any, NamedTuple

from melange.backends.decoding import (
    binary_in_json,
    binary_of_json,
    decoded_or_undecodable,
    disowned,
    header_text,
    integer_of,
    original_form,
    text_of,
    undecodable,
)
from melange.exceptions import PublishError, QueueNotFoundError, UndecodableMessageError
from melange.grouping import GROUP_HEADER
from melange.models import Message, unchecked_message

__all__ = [
    "ACKNOWLEDGE_CLAIM",
    "EXTEND",
    "PEEK",
    "QUEUE_AND_NEXT_ID",
    "RELEASE",
    "UNREAD_METADATA",
    "Claimed",
    "Receipt",
    "claim",
    "insert",
    "next_id",
    "received",
]

#: The header that keeps a row's metadata text when it is not a JSON object (the producer's).
UNREAD_METADATA = "x-foreign-metadata"

_INSERT_BODY = "INSERT INTO melange_bodies VALUES (?, ?, ?, ?, ?, ?)"
_DELETE_BODIES = "DELETE FROM melange_bodies WHERE id >= ? AND id < ?"
_INSERT_DELIVERY = (
    "INSERT INTO melange_deliveries (queue, visible_at, id, group_id) VALUES (?, ?, ?, ?)"
)
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
    "SELECT visible_at, id, receive_count, group_id FROM melange_deliveries"
    " WHERE queue = ? AND (visible_at, id) > (?, ?) AND visible_at <= ?"
    " ORDER BY visible_at, id LIMIT ?"
)
# A group's deliveries in the order they were sent (melange_delivery_groups).
_GROUP_OLDEST = (
    "SELECT visible_at, id, receive_count FROM melange_deliveries"
    " WHERE queue = ? AND group_id = ? ORDER BY id LIMIT ?"
)
_GROUP_PAGE = 100  # deliveries looked at per page when some are grouped
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
# Every text field as bytes: a row whose text is not UTF-8 cannot be fetched as str.
_CLAIMED_RAW = (
    "SELECT d.id, d.receive_count, CAST(b.message_id AS BLOB), CAST(b.content AS BLOB),"
    " CAST(b.metadata AS BLOB), CAST(b.serializer_id AS BLOB), CAST(b.manifest AS BLOB)"
    " FROM melange_deliveries AS d JOIN melange_bodies AS b ON b.id = d.id"
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
EXTEND = (
    "UPDATE melange_deliveries SET visible_at = ?"
    " WHERE queue = ? AND visible_at = ? AND id = ? AND claim = ?"
)


def _json_default(value: Any) -> Any:
    """Write a binary header value as ``{"base64": …}``; the encoder calls this only for bytes."""
    if isinstance(value, bytes):
        return binary_in_json(value)
    raise TypeError(f"a header value must be str or bytes, not {type(value).__name__}")


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_json_default).encode
# Escapes lone surrogates (headers read with surrogateescape), which cannot be bound as UTF-8.
_encode_ascii = json.JSONEncoder(separators=(",", ":"), default=_json_default).encode
_decode = json.JSONDecoder().decode
# A JSON string cannot hold a raw newline, so no row can end inside a string.
_SEPARATOR = ",\n"
_STR = {str}
_DICT = {dict}
_STR_OR_NULL = {str, type(None)}
_INT_OR_NULL = {int, type(None)}


class Receipt:
    """Where a received delivery is and the claim that proves this receive owns it.

    ``visible_at`` is part of the delivery's key and ``extend_visibility``
    moves it, so it is read and written only inside a write transaction.
    """

    __slots__ = ("claim", "queue", "row", "visible_at")

    def __init__(self, queue: str, visible_at: float, row: int, claim: bytes) -> None:
        self.queue = queue
        self.visible_at = visible_at
        self.row = row
        self.claim = claim


class Claimed(NamedTuple):
    """The outcome of one receive: the claim's deadline and the claimed rows.

    Each row is ``(id, receive_count, message_id, content, metadata JSON,
    serializer_id, manifest)``; when some text is not UTF-8, every field but
    the first two is bytes.
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
    """Store messages in a queue with the ids ``first, first + 1, …``.

    Text holding surrogates (a dead-letter copy of bytes that were not UTF-8,
    read with ``surrogateescape``) is stored as those bytes, in a BLOB.

    Raises:
        PublishError: a message holds a surrogate that stands for no byte.
    """
    try:
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
    except UnicodeEncodeError:
        # Rare, so the common case pays nothing; the rows before the one that
        # failed are already in.
        db.execute(_DELETE_BODIES, (first, first + len(messages)))
        db.executemany(_INSERT_BODY, [_escaped(first + n, m) for n, m in enumerate(messages)])
    db.executemany(
        _INSERT_DELIVERY,
        [(queue, visible_at, first + n, _group(m)) for n, m in enumerate(messages)],
    )


def _group(message: Message) -> str | None:
    """Return the message group a delivery is kept in order within (``message_group_id``)."""
    group = message.metadata.get(GROUP_HEADER)
    return group if type(group) is str and group else None


def claim(
    db: sqlite3.Connection,
    queue: str,
    limit: int,
    token: bytes,
    now: float,
    *,
    visibility_timeout: float | None = None,
) -> Claimed:
    """Claim up to ``limit`` visible messages of a queue, dead-lettering the spent ones.

    They stay hidden for ``visibility_timeout`` seconds, or the queue's when ``None``.

    Raises:
        QueueNotFoundError: the queue does not exist.
    """
    settings = db.execute(_SETTINGS, (queue,)).fetchone()
    if settings is None:
        raise QueueNotFoundError(f"queue {queue!r} does not exist")
    queue_visibility, max_receive_count, dead_letter = settings
    deadline = now + (queue_visibility if visibility_timeout is None else visibility_timeout)
    claimed = 0
    one_by_one: list[tuple[Any, ...]] = []
    after: tuple[float, int] = (-1.0, 0)
    while claimed < limit:
        wanted = limit - claimed
        candidates = db.execute(_CANDIDATES, (queue, *after, now, wanted)).fetchall()
        if any(c[3] is not None for c in candidates):
            spent = _Spent(queue, now, max_receive_count, dead_letter)
            kept = _in_group_order(db, spent, wanted, after)
            one_by_one.extend((deadline, token, queue, *k) for k in kept)
            claimed += len(kept)
            break
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
    try:
        rows = db.execute(_CLAIMED, (queue, deadline, token)).fetchall()
    except sqlite3.OperationalError:
        # Raised on fetching text that is not UTF-8; any other failure
        # happens again below and is reported from there.
        rows = db.execute(_CLAIMED_RAW, (queue, deadline, token)).fetchall()
    return Claimed(deadline, rows)


class _Spent(NamedTuple):
    """What a claim needs to dead-letter the deliveries that were received too often."""

    queue: str
    now: float
    max_receive_count: int
    dead_letter: str | None

    def moved(self, db: sqlite3.Connection, visible_at: float, row: int, count: int) -> bool:
        """Move the delivery to the dead-letter queue if it is spent; return whether it was."""
        if self.dead_letter is None or count < self.max_receive_count:
            return False
        db.execute(_TO_DEAD_LETTERS, (self.dead_letter, self.now, self.queue, visible_at, row))
        return True


def _in_group_order(
    db: sqlite3.Connection, spent: _Spent, wanted: int, after: tuple[float, int]
) -> list[tuple[float, int]]:
    """Return the keys of up to ``wanted`` visible deliveries to claim, keeping groups in order.

    A group hands out only its oldest deliveries (by id), and none while one
    of them is hidden (received and not settled, or retried later): as an
    SQS FIFO queue does. Pages go on past the groups held back, so they
    never hold up the rest of the queue.
    """
    queue, now = spent.queue, spent.now
    kept: list[tuple[float, int]] = []
    seen: set[str] = set()
    size = max(wanted, _GROUP_PAGE)
    while len(kept) < wanted:
        page = db.execute(_CANDIDATES, (queue, *after, now, size)).fetchall()
        for visible_at, row, count, group in page:
            if len(kept) >= wanted:
                break
            if group is None:
                if not spent.moved(db, visible_at, row, count):
                    kept.append((visible_at, row))
            elif group not in seen:
                seen.add(group)
                oldest = db.execute(_GROUP_OLDEST, (queue, group, wanted - len(kept) + 1))
                for g_visible_at, g_row, g_count in oldest.fetchall():
                    if g_visible_at > now or len(kept) >= wanted:
                        break
                    if not spent.moved(db, g_visible_at, g_row, g_count):
                        kept.append((g_visible_at, g_row))
        if len(page) < size:
            break
        after = page[-1][:2]
    return kept


def received(queue: str, token: bytes, claimed: Claimed) -> list[Message]:
    """Return the claimed rows as messages; a row that cannot be read comes back ``undecodable``.

    Non-string header values (numbers, ``null``, nested JSON) become their JSON text.
    """
    deadline, rows = claimed
    if not rows:
        return []
    ids, counts, message_ids, contents, texts, serializer_ids, manifests = zip(*rows, strict=True)
    metadata = _batch_headers(texts)
    if metadata is not None and _plain(message_ids, contents, serializer_ids, manifests):
        return [
            unchecked_message(
                content,
                message_id,
                disowned(meta),
                serializer_id,
                manifest,
                count,
                Receipt(queue, deadline, row, token),
            )
            for row, count, message_id, content, meta, serializer_id, manifest in zip(
                ids, counts, message_ids, contents, metadata, serializer_ids, manifests, strict=True
            )
        ]
    return [_total(row, Receipt(queue, deadline, row[0], token)) for row in rows]


def _total(row: tuple[Any, ...], receipt: Receipt) -> Message:
    """Return ``_decoded(row)``, or the row marked undecodable if even that fails."""
    return decoded_or_undecodable(lambda: _decoded(row, receipt), lambda: _fallback(row, receipt))


def _fallback(row: tuple[Any, ...], receipt: Receipt) -> tuple[str, str | None, Receipt]:
    content, message_id = row[3], row[2]
    if isinstance(content, bytes):
        content = text_of(content)[0]
    if isinstance(message_id, bytes):
        message_id = text_of(message_id)[0]
    return header_text(content), header_text(message_id) if message_id else None, receipt


def _batch_headers(texts: Sequence[Any]) -> list[dict[str, str]] | None:
    """Return every row's headers from one parse, or ``None`` if a row must be read alone."""
    try:
        metadata: list[dict[str, str]] = _decode("[" + _SEPARATOR.join(texts) + "]")
    except (TypeError, ValueError, RecursionError):  # a BLOB, or a row that is not JSON
        return None
    # A row ending in "}" with only strings inside cannot end inside a nested
    # value either, so each row is exactly one of the objects parsed.
    if (
        len(metadata) != len(texts)
        or not all(map(str.endswith, texts, repeat("}")))
        or set(map(type, metadata)) != _DICT
        or not set(map(type, chain.from_iterable(map(dict.values, metadata)))) <= _STR
    ):
        return None
    return metadata


def _plain(
    message_ids: Sequence[Any],
    contents: Sequence[Any],
    serializer_ids: Sequence[Any],
    manifests: Sequence[Any],
) -> bool:
    """Whether every field of the batch is of the type melange writes."""
    return (
        set(map(type, contents)) == _STR
        and set(map(type, message_ids)) == _STR
        and "" not in message_ids
        and set(map(type, serializer_ids)) <= _INT_OR_NULL
        and set(map(type, manifests)) <= _STR_OR_NULL
    )


def _decoded(row: tuple[Any, ...], receipt: Receipt) -> Message:
    """Return one claimed row as a message, ``undecodable`` if a field cannot be read."""
    _, count, raw_id, raw_content, raw_metadata, raw_serializer, raw_manifest = row
    problems: list[str] = []
    content = _text(raw_content, "content", problems)
    message_id = _text(raw_id, "message_id", problems)
    if not message_id:
        problems.append("message_id is empty")
    manifest = None if raw_manifest is None else _text(raw_manifest, "manifest", problems)
    headers = disowned(_headers(raw_metadata, problems))
    serializer_id = None
    if raw_serializer is not None:
        try:
            serializer_id = integer_of(raw_serializer, "serializer_id")
        except UndecodableMessageError as e:
            problems.append(str(e))
    if not problems:
        return unchecked_message(
            content, message_id, headers, serializer_id, manifest, count, receipt
        )
    return undecodable(content, message_id, headers, "; ".join(problems), count, receipt, manifest)


def _text(value: Any, what: str, problems: list[str]) -> str:
    if type(value) is str:
        return value
    if isinstance(value, bytes):
        text, problem = text_of(value)
        if problem is not None:
            problems.append(f"{what} is {problem}")
        return text
    return header_text(value)


def _headers(value: Any, problems: list[str]) -> dict[str, str | bytes]:
    text = _text(value, "metadata", problems)
    try:
        parsed = _decode(text)
    except (ValueError, RecursionError) as e:
        problems.append(f"metadata is not JSON: {e}")
        return {UNREAD_METADATA: text}
    if type(parsed) is not dict:
        problems.append(f"metadata is not a JSON object: {text[:80]!r}")
        return {UNREAD_METADATA: text}
    return {key: v if type(v) is str else _binary_or_text(v) for key, v in parsed.items()}


def _binary_or_text(value: Any) -> str | bytes:
    """Return a JSON header value that is not a string: bytes if melange wrote it, else its text."""
    binary = binary_of_json(value)
    return _encode(value) if binary is None else binary


def _escaped(row: int, m: Message) -> tuple[Any, ...]:
    """Return a body row whose text holding surrogates is stored as bytes.

    Raises:
        PublishError: a surrogate stands for no byte (it was not read with ``surrogateescape``).
    """
    try:
        return (
            row,
            original_form(m.message_id),
            original_form(m.content),
            _encode_ascii(m.metadata if type(m.metadata) is dict else dict(m.metadata)),
            m.serializer_id,
            None if m.manifest is None else original_form(m.manifest),
        )
    except UnicodeEncodeError as e:
        raise PublishError(f"message {m.message_id!r} cannot be stored: {e}") from e
