"""The embedded durable broker: SQS semantics in one SQLite file, shared by processes."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from melange.backends.interfaces import MessagingBackend
from melange.backends.sqlite_store import SQLiteFile, translate_errors
from melange.exceptions import ConfigurationError, QueueNotFoundError, TopicNotFoundError
from melange.models import Message, QueueWrapper, TopicWrapper, _unchecked

__all__ = ["SQLiteBackend"]

_INSERT = (
    "INSERT INTO melange_messages"
    " (queue, message_id, content, metadata, serializer_id, manifest, visible_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_FAN_OUT = (
    "INSERT INTO melange_messages"
    " (queue, message_id, content, metadata, serializer_id, manifest, visible_at)"
    " SELECT queue, ?, ?, ?, ?, ?, ? FROM melange_subscriptions WHERE topic = ?"
)
_CANDIDATES = (
    "SELECT id, receive_count FROM melange_messages WHERE queue = ? AND visible_at <= ?"
    " ORDER BY visible_at, id LIMIT ?"
)
_CLAIM = (
    "UPDATE melange_messages SET visible_at = ?, receive_count = receive_count + 1, claim = ?"
    " WHERE id IN ({ids})"
    " RETURNING id, message_id, content, metadata, serializer_id, manifest, receive_count"
)


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class _Receipt:
    row: int
    claim: str


@dataclass(frozen=True, slots=True)
class _QueueSettings:
    visibility_timeout: float
    max_receive_count: int
    dead_letter_queue: str | None


class SQLiteBackend(MessagingBackend):
    """A broker in one SQLite file: durable, and safe for several processes at once.

    Topics fan out to their subscribed queues in the publishing transaction.
    A receive claims messages atomically (``BEGIN IMMEDIATE``), hides them for
    the queue's visibility timeout and raises their receive count; the claim
    token in each receipt means a late acknowledgement cannot delete a
    message that was handed out again. After ``max_receive_count`` receives a
    message moves to the dead-letter queue when the queue is next read.

    The file is in WAL mode with ``synchronous=FULL`` by default: a publish
    that returned survives ``kill -9`` and power loss (``NORMAL`` keeps it
    across process crashes only, and is much faster). Each thread gets its
    own connection. An empty queue is polled every ``poll_interval`` seconds
    at most (publishes from this process wake waiters at once).

    Raises:
        StorageError: the folder is missing or the file is not a database.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        poll_interval: float = 0.05,
    ) -> None:
        self._file = SQLiteFile(path, synchronous=synchronous, busy_timeout=busy_timeout)
        self.path = self._file.path
        self.poll_interval = poll_interval
        self._settings: dict[str, _QueueSettings] = {}
        self._published = threading.Condition()

    @classmethod
    def from_url(cls, url: str) -> SQLiteBackend:
        """Build from ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.

        Query options: ``synchronous``, ``busy_timeout``, ``poll_interval``.

        Raises:
            ConfigurationError: the URL names no file or an unknown option.
        """
        parts = urlsplit(url)
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if parts.netloc or not path:
            raise ConfigurationError(f"expected sqlite:///path/to.db, got {url!r}")
        options: dict[str, Any] = {}
        for key, values in parse_qs(parts.query).items():
            if key == "synchronous":
                options[key] = values[-1]
            elif key in ("busy_timeout", "poll_interval"):
                options[key] = float(values[-1])
            else:
                raise ConfigurationError(f"unknown sqlite option {key!r}")
        return cls(path, **options)

    # -- topology -------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        with self._file.transaction() as db:
            db.execute("INSERT OR IGNORE INTO melange_topics (name) VALUES (?)", (topic_name,))
        return TopicWrapper(topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        self._queue_settings(queue_name)
        return QueueWrapper(queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float | None = None,
        max_receive_count: int | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        with self._file.transaction() as db:
            if dead_letter_queue_name is not None:
                self._upsert_queue(db, dead_letter_queue_name, None, None, None)
            self._upsert_queue(
                db, queue_name, visibility_timeout, max_receive_count, dead_letter_queue_name
            )
            for topic in topics_to_bind:
                db.execute("INSERT OR IGNORE INTO melange_topics (name) VALUES (?)", (topic.obj,))
                db.execute(
                    "INSERT OR IGNORE INTO melange_subscriptions (topic, queue) VALUES (?, ?)",
                    (topic.obj, queue_name),
                )
        self._settings.pop(queue_name, None)
        dead_letter = QueueWrapper(dead_letter_queue_name) if dead_letter_queue_name else None
        return QueueWrapper(queue_name), dead_letter

    def _upsert_queue(
        self,
        db: Any,
        name: str,
        visibility_timeout: float | None,
        max_receive_count: int | None,
        dead_letter_queue: str | None,
    ) -> None:
        db.execute(
            "INSERT OR IGNORE INTO melange_queues"
            " (name, visibility_timeout, max_receive_count) VALUES (?, ?, ?)",
            (name, self.default_visibility_timeout, self.default_max_receive_count),
        )
        db.execute(
            "UPDATE melange_queues SET"
            " visibility_timeout = coalesce(?, visibility_timeout),"
            " max_receive_count = coalesce(?, max_receive_count),"
            " dead_letter_queue = coalesce(?, dead_letter_queue) WHERE name = ?",
            (visibility_timeout, max_receive_count, dead_letter_queue, name),
        )

    def delete_queue(self, queue: QueueWrapper) -> None:
        with self._file.transaction() as db:
            for table, column in (
                ("melange_messages", "queue"),
                ("melange_subscriptions", "queue"),
                ("melange_queues", "name"),
            ):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (queue.obj,))
        self._settings.pop(queue.obj, None)

    def delete_topic(self, topic: TopicWrapper) -> None:
        with self._file.transaction() as db:
            db.execute("DELETE FROM melange_subscriptions WHERE topic = ?", (topic.obj,))
            db.execute("DELETE FROM melange_topics WHERE name = ?", (topic.obj,))

    # -- publishing ------------------------------------------------------------------

    def publish_to_topic(
        self,
        message: Message,
        topic: TopicWrapper,
        extra_attributes: dict[str, Any] | None = None,
    ) -> None:
        self.publish_batch_to_topic((message,), topic)

    def publish_batch_to_topic(self, messages: Sequence[Message], topic: TopicWrapper) -> None:
        now = time.time()
        with self._file.transaction() as db:
            exists = db.execute("SELECT 1 FROM melange_topics WHERE name = ?", (topic.obj,))
            if exists.fetchone() is None:
                raise TopicNotFoundError(f"topic {topic.obj!r} does not exist")
            db.executemany(_FAN_OUT, [(*_row(m), now, topic.obj) for m in messages])
        self._wake()

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self.publish_batch_to_queue((message,), queue)

    def publish_batch_to_queue(self, messages: Sequence[Message], queue: QueueWrapper) -> None:
        self._insert(messages, queue, time.time())

    def publish_delayed_to_queue(self, message: Message, queue: QueueWrapper, delay: float) -> None:
        self._insert((message,), queue, time.time() + max(delay, 0.0))

    def _insert(self, messages: Sequence[Message], queue: QueueWrapper, visible_at: float) -> None:
        self._queue_settings(queue.obj)
        with self._file.transaction() as db:
            db.executemany(_INSERT, [(queue.obj, *_row(m), visible_at) for m in messages])
        self._wake()

    def _wake(self) -> None:
        with self._published:
            self._published.notify_all()

    # -- receiving ---------------------------------------------------------------------

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        max_messages: int = kwargs.get("max_messages", 10)
        wait_seconds: float = kwargs.get("wait_seconds", 0.0)
        settings = self._queue_settings(queue.obj)
        deadline = time.monotonic() + wait_seconds
        pause = 0.002
        while True:
            messages = self._claim(queue.obj, settings, max_messages)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            with self._published:
                self._published.wait(min(pause, remaining))
            pause = min(pause * 2, self.poll_interval)

    def _claim(self, queue: str, settings: _QueueSettings, limit: int) -> list[Message]:
        db = self._file.connection()
        now = time.time()
        with translate_errors(self.path):
            # A read first, so that idle consumers never take the write lock.
            ready = db.execute(
                "SELECT 1 FROM melange_messages WHERE queue = ? AND visible_at <= ? LIMIT 1",
                (queue, now),
            ).fetchone()
        if ready is None:
            return []
        claim = os.urandom(8).hex()
        with self._file.transaction() as db:
            candidates = db.execute(_CANDIDATES, (queue, now, limit)).fetchall()
            dead_letter = settings.dead_letter_queue
            moved = {
                row
                for row, count in candidates
                if dead_letter is not None and count >= settings.max_receive_count
            }
            if moved:
                # SQS semantics: moved when read after its last allowed receive.
                db.executemany(
                    "UPDATE melange_messages SET queue = ?, receive_count = 0, claim = NULL"
                    " WHERE id = ?",
                    [(dead_letter, row) for row in moved],
                )
            ids = [row for row, _ in candidates if row not in moved]
            if not ids:
                return []
            rows = db.execute(
                _CLAIM.format(ids=",".join("?" * len(ids))),
                (now + settings.visibility_timeout, claim, *ids),
            ).fetchall()
        rows.sort()
        return [
            _unchecked(
                content,
                message_id,
                json.loads(metadata),
                serializer_id,
                manifest,
                receive_count,
                _Receipt(row, claim),
            )
            for row, message_id, content, metadata, serializer_id, manifest, receive_count in rows
        ]

    def acknowledge(self, message: Message) -> None:
        self.acknowledge_batch((message,))

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        receipts = [_receipt(m) for m in messages]
        with self._file.transaction() as db:
            db.executemany(
                "DELETE FROM melange_messages WHERE id = ? AND claim = ?",
                [(r.row, r.claim) for r in receipts],
            )

    def release(self, message: Message, delay: float = 0.0) -> None:
        receipt = _receipt(message)
        with self._file.transaction() as db:
            db.execute(
                "UPDATE melange_messages SET visible_at = ?, claim = NULL"
                " WHERE id = ? AND claim = ?",
                (time.time() + max(delay, 0.0), receipt.row, receipt.claim),
            )
        self._wake()

    # -- helpers ----------------------------------------------------------------------

    def queue_depth(self, queue: QueueWrapper) -> int:
        """Return how many messages the queue holds, visible or not."""
        with translate_errors(self.path):
            row = (
                self._file.connection()
                .execute("SELECT count(*) FROM melange_messages WHERE queue = ?", (queue.obj,))
                .fetchone()
            )
        return int(row[0])

    def integrity_check(self) -> str:
        """Return SQLite's ``PRAGMA integrity_check`` verdict (``"ok"`` when sound)."""
        with translate_errors(self.path):
            return str(self._file.connection().execute("PRAGMA integrity_check").fetchone()[0])

    def _queue_settings(self, name: str) -> _QueueSettings:
        settings = self._settings.get(name)
        if settings is None:
            with translate_errors(self.path):
                row = (
                    self._file.connection()
                    .execute(
                        "SELECT visibility_timeout, max_receive_count, dead_letter_queue"
                        " FROM melange_queues WHERE name = ?",
                        (name,),
                    )
                    .fetchone()
                )
            if row is None:
                raise QueueNotFoundError(f"queue {name!r} does not exist in {self.path}")
            settings = self._settings[name] = _QueueSettings(*row)
        return settings

    def close_connection(self) -> None:
        super().close_connection()
        self._file.close()


def _row(message: Message) -> tuple[Any, ...]:
    return (
        message.message_id,
        message.content,
        _encode(dict(message.metadata)),
        message.serializer_id,
        message.manifest,
    )


def _receipt(message: Message) -> _Receipt:
    receipt = message.receipt
    if not isinstance(receipt, _Receipt):
        raise ValueError("this message was not received from an SQLiteBackend")
    return receipt
