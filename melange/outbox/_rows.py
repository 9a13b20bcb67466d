"""What the outbox stores and decides, apart from any database.

A row of ``melange_outbox`` is one built message and where it goes. The
relay reads rows as ``StoredMessage``, keeps those that may leave without
overtaking an earlier message to the same destination (``publishable``),
and records per row what became of it in a ``Settlement`` that the store
applies in one transaction.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from melange.exceptions import (
    BackendConnectionError,
    ConfigurationError,
    MessageTooLargeError,
    QueueNotFoundError,
    TopicNotFoundError,
    UnsupportedOperationError,
)
from melange.models import unchecked_message
from melange.outgoing import (
    Destination,
    DestinationKind,
    Outgoing,
    headers_in_json,
    headers_of_json,
)

__all__ = [
    "READ_COLUMNS",
    "FailureKind",
    "Lane",
    "Settlement",
    "StoredMessage",
    "UnreadableRowError",
    "failure_kind",
    "publishable",
    "row_of",
]

#: The columns the relay reads, in the order ``StoredMessage.of_row`` takes them.
READ_COLUMNS = (
    "seq, message_id, destination_kind, destination, manifest, serializer_id,"
    " content, headers, delay, created_at, attempts"
)

Lane = tuple[str, str]
"""Messages that keep their order: ``(destination_kind, destination)``."""


class UnreadableRowError(ValueError):
    """An outbox row that does not make a message (edited by hand, or by another program)."""


def row_of(outgoing: Outgoing, now: float) -> tuple[object, ...]:
    """Return the row of a built outgoing message, in the order of ``OUTBOX_COLUMNS``."""
    message, where = outgoing.built, outgoing.where
    return (
        message.message_id,
        where.kind.value,
        where.name,
        message.manifest,
        message.serializer_id,
        message.content,
        json.dumps(headers_in_json(message.metadata), ensure_ascii=False),
        float(outgoing.delay),
        now,
    )


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One pending row of the outbox, as the relay reads it."""

    seq: int
    message_id: str
    destination_kind: str
    destination: str
    manifest: str | None
    serializer_id: int | None
    content: str
    headers: str
    delay: float
    created_at: float
    attempts: int

    @classmethod
    def of_row(cls, row: Sequence[Any]) -> StoredMessage:
        """Read a row selected as ``READ_COLUMNS``."""
        seq, message_id, kind, destination, manifest, serializer_id, content = row[:7]
        headers, delay, created_at, attempts = row[7:11]
        return cls(
            int(seq),
            str(message_id),
            str(kind),
            str(destination),
            None if manifest is None else str(manifest),
            None if serializer_id is None else int(serializer_id),
            str(content),
            str(headers),
            float(delay),
            float(created_at),
            int(attempts),
        )

    @property
    def lane(self) -> Lane:
        return (self.destination_kind, self.destination)

    def outgoing(self, now: float) -> Outgoing:
        """Return the message to send now, with what remains of its delay.

        Raises:
            UnreadableRowError: the row does not make a message.
        """
        try:
            kind = DestinationKind(self.destination_kind)
            headers = json.loads(self.headers)
            if type(headers) is not dict:
                raise TypeError(f"headers are a {type(headers).__name__}, not an object")
            if not self.message_id:
                raise ValueError("no message id")
            message = unchecked_message(  # the fields are typed by of_row already
                self.content,
                self.message_id,
                headers_of_json(headers),
                self.serializer_id,
                self.manifest,
            )
        except (ValueError, TypeError) as e:
            raise UnreadableRowError(f"outbox row {self.seq} is not a message: {e}") from e
        remaining = max(0.0, self.created_at + self.delay - now) if self.delay > 0 else 0.0
        return Outgoing(
            destination=Destination(kind, self.destination), delay=remaining, message=message
        )


def publishable(
    claimed: Sequence[StoredMessage],
    pending: Iterable[tuple[int, Lane]],
    ahead: Collection[int] = (),
) -> list[StoredMessage]:
    """Return the claimed rows that may leave now, oldest first.

    ``pending`` is every row waiting to leave up to the last claimed one
    (``(seq, lane)``), claimed or not. A claimed row may leave only if every
    earlier row of its lane is claimed too, or ``ahead`` (this relay's, sent
    before this claim): a row another relay holds blocks its lane, so two
    relays never interleave one destination's messages.
    """
    mine = {row.seq: row for row in claimed}
    going = frozenset(ahead)
    blocked: set[Lane] = set()
    kept: list[StoredMessage] = []
    for seq, lane in sorted(pending):
        if lane in blocked or seq in going:
            continue
        row = mine.get(seq)
        if row is None:
            blocked.add(lane)
        else:
            kept.append(row)
    return kept


class FailureKind(enum.Enum):
    """What a failed send of an outbox row means for it."""

    #: The broker cannot be reached: back off, and count no attempt against the row.
    OUTAGE = "outage"
    #: The broker refused this one: try again later, and count the attempt.
    RETRY = "retry"
    #: It can never be sent (too large, nowhere to go): keep it aside, dead.
    DEAD = "dead"


_NEVER_SENT = (
    MessageTooLargeError,
    QueueNotFoundError,
    TopicNotFoundError,
    UnsupportedOperationError,
    ConfigurationError,
)


def failure_kind(error: Exception) -> FailureKind:
    """Return what an error raised by sending one row means for that row."""
    if isinstance(error, BackendConnectionError):
        return FailureKind.OUTAGE
    if isinstance(error, _NEVER_SENT):
        return FailureKind.DEAD
    return FailureKind.RETRY


@dataclass(slots=True)
class Settlement:
    """What became of the rows of one claim; the store applies it in one transaction.

    ``sent`` rows are deleted; ``retried`` rows ``(seq, reason, retry_at)``
    count one more attempt and wait until ``retry_at``; ``dead`` rows are
    kept aside with their reason. A claimed row in none of them is released
    as it was.
    """

    sent: list[int] = field(default_factory=list)
    retried: list[tuple[int, str, float]] = field(default_factory=list)
    dead: list[tuple[int, str]] = field(default_factory=list)
