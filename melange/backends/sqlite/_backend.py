"""The embedded durable broker: SQS semantics in one SQLite file, shared by processes."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from melange._sqlite import DEFAULT_FILE_MODE, SQLiteFile, path_of_url
from melange.backends.interfaces import (
    MessagingBackend,
    QueueStats,
    checked_filter_events,
    checked_max_messages,
)
from melange.backends.naming import check_plain_name
from melange.backends.routing import report_unrouted
from melange.backends.sqlite import _queries as queries
from melange.backends.sqlite._schema import ensure_broker_schema
from melange.exceptions import (
    ConfigurationError,
    ForeignMessageError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import Message, QueueWrapper, TopicWrapper

__all__ = ["SQLiteBackend"]

_now = time.time
_MAX_IDS = 500  # bound parameters per statement: old SQLite builds allow 999
_MAX_FILTERS = 256  # parsed filter_events lists kept; past that the cache starts over
_SUBSCRIBERS = (
    "SELECT s.queue, s.manifests FROM melange_topics AS t"
    " LEFT JOIN melange_subscriptions AS s ON s.topic = t.name WHERE t.name = ?"
)
_SUBSCRIBE = "INSERT OR IGNORE INTO melange_subscriptions (topic, queue) VALUES (?, ?)"
_SUBSCRIBE_FILTERED = (
    "INSERT INTO melange_subscriptions (topic, queue, manifests) VALUES (?, ?, ?)"
    " ON CONFLICT (topic, queue) DO UPDATE SET manifests = excluded.manifests"
)


def _octal(text: str) -> int:
    return int(text, 8)


_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "synchronous": str,
    "busy_timeout": float,
    "poll_interval": float,
    "file_mode": _octal,
}


class SQLiteBackend(MessagingBackend):
    """A broker in one SQLite file: durable, and safe for several processes at once.

    Topics fan out to their subscribed queues in the publishing transaction,
    each queue taking only the manifests its ``filter_events`` lists, if any;
    a publish that reaches no queue is reported (``message_unrouted``).
    A receive claims messages in one short ``BEGIN IMMEDIATE`` transaction:
    it hides them for the queue's visibility timeout, raises their receive
    count and stamps a fresh random claim, so no two consumers get the same
    message while its visibility lasts and a late acknowledgement cannot
    delete a message that was handed out again. A message received
    ``max_receive_count`` times and not acknowledged moves to the dead-letter
    queue when its queue is next read, as on SQS. A row that cannot be
    decoded (text that is not UTF-8, headers that are not a JSON object…)
    comes back ``undecodable`` and never stops the rest of its queue.

    Durability: WAL with ``synchronous=FULL`` by default, so a publish that
    returned survives ``kill -9`` and a power cut (``NORMAL`` survives process
    crashes only, and is faster). Concurrency: each thread that uses the
    backend gets its own connection; other processes may use the same file at
    the same time; writers wait up to ``busy_timeout`` seconds for the lock.
    Waiting: an empty queue is checked again after 2 ms, doubling up to
    ``poll_interval`` (50 ms), so a message from another process is seen
    within about ``poll_interval``; a publish in this process wakes waiters at
    once. Times are the wall clock, shared by every process on the machine.
    A file it creates is its owner's only (``file_mode`` 0o600, less the
    umask; ``None``: SQLite's default, usually 0o644): it holds messages.

    Raises:
        ConfigurationError: an option is out of range.
        StorageError: the folder is missing or the file is not a database.
    """

    messaging_system = "melange_sqlite"
    max_delay_seconds = None

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        poll_interval: float = 0.05,
        file_mode: int | None = DEFAULT_FILE_MODE,
    ) -> None:
        if not poll_interval > 0:
            raise ConfigurationError(f"poll_interval must be > 0, not {poll_interval!r}")
        self._file = SQLiteFile(
            path, synchronous=synchronous, busy_timeout=busy_timeout, file_mode=file_mode
        )
        ensure_broker_schema(self._file)
        self.path = self._file.path
        self.synchronous = self._file.synchronous
        self.poll_interval = poll_interval
        self._published = threading.Condition()
        self._waiting = 0
        self._busy: set[str] = set()  # queues whose last receive here found messages
        self._filters: dict[str, frozenset[str]] = {}  # a subscription's JSON -> its manifests

    @classmethod
    def from_url(cls, url: str) -> SQLiteBackend:
        """Build from ``sqlite:///relative.db`` or ``sqlite:////absolute.db``.

        Query options: ``synchronous``, ``busy_timeout``, ``poll_interval``,
        ``file_mode`` (octal, for a file it creates; default ``600``), e.g.
        ``sqlite:///broker.db?synchronous=NORMAL&file_mode=640``.

        Raises:
            ConfigurationError: the URL names no file, or an unknown or bad option.
            StorageError: the file cannot be used.
        """
        path = path_of_url(url)
        parts = urlsplit(url)
        options: dict[str, Any] = {}
        for key, values in parse_qs(parts.query, keep_blank_values=True).items():
            convert = _URL_OPTIONS.get(key)
            if convert is None:
                known = ", ".join(_URL_OPTIONS)
                raise ConfigurationError(f"unknown sqlite URL option {key!r} (known: {known})")
            try:
                options[key] = convert(values[-1])
            except ValueError as e:
                raise ConfigurationError(f"bad value for {key}: {values[-1]!r}") from e
        return cls(path, **options)

    # -- topology ---------------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        check_plain_name(topic_name, self.messaging_system)
        with self._file.transaction() as db:
            db.execute("INSERT OR IGNORE INTO melange_topics VALUES (?)", (topic_name,))
        return TopicWrapper(topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        check_plain_name(queue_name, self.messaging_system)
        if not self._file.read("SELECT 1 FROM melange_queues WHERE name = ?", (queue_name,)):
            raise QueueNotFoundError(f"queue {queue_name!r} does not exist in {self.path}")
        return QueueWrapper(queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float | None = None,
        max_receive_count: int | None = None,
        filter_events: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Get or create a queue, subscribe it to topics, and attach a dead-letter queue.

        ``filter_events`` (manifests): from the topics bound in this call, the
        queue gets only messages with one of these manifests (kept with each
        subscription, applied at publish time); declaring again with another
        list replaces it; ``None`` leaves a subscription's filter as it is.

        Raises:
            ConfigurationError: ``filter_events`` is not a non-empty list of manifests.
            InvalidNameError: a name the backend cannot take.
        """
        check_plain_name(queue_name, self.messaging_system)
        if dead_letter_queue_name is not None:
            check_plain_name(dead_letter_queue_name, self.messaging_system)
        manifests = checked_filter_events(filter_events)
        listed = None if manifests is None else json.dumps(sorted(manifests))
        with self._file.transaction() as db:
            if dead_letter_queue_name is not None:
                self._upsert_queue(db, dead_letter_queue_name, None, None, None)
            self._upsert_queue(
                db, queue_name, visibility_timeout, max_receive_count, dead_letter_queue_name
            )
            for topic in topics_to_bind:
                db.execute("INSERT OR IGNORE INTO melange_topics VALUES (?)", (topic.obj,))
                if listed is None:
                    db.execute(_SUBSCRIBE, (topic.obj, queue_name))
                else:
                    db.execute(_SUBSCRIBE_FILTERED, (topic.obj, queue_name, listed))
        dead_letter = QueueWrapper(dead_letter_queue_name) if dead_letter_queue_name else None
        return QueueWrapper(queue_name), dead_letter

    def _upsert_queue(
        self,
        db: sqlite3.Connection,
        name: str,
        visibility_timeout: float | None,
        max_receive_count: int | None,
        dead_letter_queue: str | None,
    ) -> None:
        db.execute(
            "INSERT OR IGNORE INTO melange_queues VALUES (?, ?, ?, NULL)",
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
            db.execute("DELETE FROM melange_deliveries WHERE queue = ?", (queue.obj,))
            db.execute("DELETE FROM melange_subscriptions WHERE queue = ?", (queue.obj,))
            db.execute("DELETE FROM melange_queues WHERE name = ?", (queue.obj,))

    def delete_topic(self, topic: TopicWrapper) -> None:
        with self._file.transaction() as db:
            db.execute("DELETE FROM melange_subscriptions WHERE topic = ?", (topic.obj,))
            db.execute("DELETE FROM melange_topics WHERE name = ?", (topic.obj,))

    # -- publishing -------------------------------------------------------------------

    def publish_to_topic(
        self,
        message: Message,
        topic: TopicWrapper,
        extra_attributes: dict[str, Any] | None = None,
    ) -> None:
        self.publish_batch_to_topic((message,), topic)

    def publish_batch_to_topic(self, messages: Sequence[Message], topic: TopicWrapper) -> None:
        """Publish messages to every queue subscribed to the topic, in one transaction.

        A queue subscribed with ``filter_events`` gets only the messages whose
        manifest it lists. A message no queue takes is reported with
        ``report_unrouted`` (a warning and ``message_unrouted``) and dropped.

        Raises:
            TopicNotFoundError: the topic does not exist.
        """
        everyone = False  # some queue takes every message
        routed: set[int] = set()  # else, the indexes of those some queue took
        with self._file.transaction() as db:
            subscribers = db.execute(_SUBSCRIBERS, (topic.obj,)).fetchall()
            if not subscribers:
                raise TopicNotFoundError(f"topic {topic.obj!r} does not exist in {self.path}")
            if messages and subscribers[0][0] is not None:
                first, now = queries.next_id(db), _now()
                for queue, listed in subscribers:
                    if listed is None:
                        chosen = messages
                        everyone = True
                    else:
                        manifests = self._manifests(listed)
                        kept = [n for n, m in enumerate(messages) if m.manifest in manifests]
                        routed.update(kept)
                        chosen = [messages[n] for n in kept]
                    if chosen:
                        queries.insert(db, chosen, queue, now, first)
                        first += len(chosen)
        if not everyone:
            for n, message in enumerate(messages):
                if n not in routed:
                    report_unrouted(self, message, topic.obj)
        if everyone or routed:
            self._wake()

    def _manifests(self, listed: str) -> frozenset[str]:
        """Return the manifests of a subscription's ``manifests`` JSON, parsed once and cached."""
        manifests = self._filters.get(listed)
        if manifests is None:
            if len(self._filters) >= _MAX_FILTERS:
                self._filters.clear()
            try:
                parsed = json.loads(listed)
            except ValueError:
                parsed = None
            # A value melange did not write lets nothing through rather than everything.
            ok = isinstance(parsed, list) and all(type(m) is str for m in parsed)
            manifests = self._filters[listed] = frozenset(parsed) if ok else frozenset()
        return manifests

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """Publish a message to one queue.

        Raises:
            QueueNotFoundError: the queue does not exist.
            PublishError: the message holds a surrogate that stands for no byte.
        """
        self._publish((message,), queue, 0.0)

    def publish_batch_to_queue(self, messages: Sequence[Message], queue: QueueWrapper) -> None:
        """Publish messages to one queue, in one transaction.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        self._publish(messages, queue, 0.0)

    def publish_delayed_to_queue(self, message: Message, queue: QueueWrapper, delay: float) -> None:
        """Publish a message that stays invisible for ``delay`` seconds.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        self._publish((message,), queue, max(delay, 0.0))

    def _publish(self, messages: Sequence[Message], queue: QueueWrapper, delay: float) -> None:
        if not messages:
            return
        with self._file.transaction() as db:
            exists, first = db.execute(queries.QUEUE_AND_NEXT_ID, (queue.obj,)).fetchone()
            if not exists:
                raise QueueNotFoundError(f"queue {queue.obj!r} does not exist in {self.path}")
            queries.insert(db, messages, queue.obj, _now() + delay, first)
        self._wake()

    def _wake(self) -> None:
        if self._waiting:
            with self._published:
                self._published.notify_all()

    # -- receiving ----------------------------------------------------------------------

    def retrieve_messages(
        self,
        queue: QueueWrapper,
        *,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[Message]:
        """Receive up to ``max_messages`` (10), waiting up to ``wait_seconds`` (0) for one.

        ``visibility_timeout`` (seconds) hides them that long instead of the queue's.

        Raises:
            QueueNotFoundError: the queue does not exist.
            InvalidArgumentError: ``max_messages`` is below 1.
        """
        checked_max_messages(max_messages)
        deadline = time.monotonic() + wait_seconds
        pause = min(0.002, self.poll_interval)
        while True:
            messages = self._receive(queue.obj, max_messages, visibility_timeout)
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0 or self._closed:
                return messages
            with self._published:
                self._waiting += 1
                try:
                    self._published.wait(min(pause, remaining))
                finally:
                    self._waiting -= 1
            pause = min(pause * 2, self.poll_interval)

    def _receive(self, queue: str, limit: int, visibility_timeout: float | None) -> list[Message]:
        # A read first, so that idle consumers never take the write lock.
        if queue not in self._busy and not self._file.read(queries.PEEK, (queue, _now())):
            self.get_queue(queue)  # only to raise QueueNotFoundError
            return []
        messages = self._claim(queue, limit, visibility_timeout)
        if messages:
            self._busy.add(queue)
        else:
            self._busy.discard(queue)
        return messages

    def _claim(self, queue: str, limit: int, visibility_timeout: float | None) -> list[Message]:
        token = os.urandom(8)
        try:
            with self._file.transaction() as db:
                claimed = queries.claim(
                    db, queue, limit, token, _now(), visibility_timeout=visibility_timeout
                )
        except QueueNotFoundError as e:
            raise QueueNotFoundError(f"{e} in {self.path}") from None
        return queries.received(queue, token, claimed)

    def acknowledge(self, message: Message) -> None:
        """Delete a received message, unless it was handed out again since.

        Raises:
            ForeignMessageError: the message was not received from an ``SQLiteBackend``.
        """
        self.acknowledge_batch((message,))

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Delete received messages in one transaction; late acknowledgements do nothing.

        Raises:
            ForeignMessageError: a message was not received from an ``SQLiteBackend``.
        """
        receipts = [_receipt(m) for m in messages]
        if not receipts:
            return
        with self._file.transaction() as db:
            groups: dict[tuple[str, float, bytes], list[int]] = {}
            for receipt in receipts:  # read under the write lock: see extend_visibility
                key = (receipt.queue, receipt.visible_at, receipt.claim)
                groups.setdefault(key, []).append(receipt.row)
            for key, rows in groups.items():
                for first in range(0, len(rows), _MAX_IDS):
                    chunk = rows[first : first + _MAX_IDS]
                    sql = queries.ACKNOWLEDGE_CLAIM.format(ids=",".join("?" * len(chunk)))
                    db.execute(sql, (*key, *chunk))
        self._wake()  # a message group held back behind these may be free now

    def release(self, message: Message, delay: float = 0.0) -> None:
        """Make a received message visible again after ``delay`` seconds (its count is kept).

        Raises:
            ForeignMessageError: the message was not received from an ``SQLiteBackend``.
        """
        r = _receipt(message)
        with self._file.transaction() as db:
            due = _now() + max(delay, 0.0)
            db.execute(queries.RELEASE, (due, r.queue, r.visible_at, r.row, r.claim))
        self._wake()

    def extend_visibility(self, message: Message, seconds: float) -> None:
        """Keep a received message hidden for ``seconds`` from now, in one short transaction.

        Only while this receive's claim holds: a message acknowledged, released
        or handed out again since is left alone. Safe from any thread.

        Raises:
            ForeignMessageError: the message was not received from an ``SQLiteBackend``.
        """
        r = _receipt(message)
        moved_from: float | None = None
        try:
            with self._file.transaction() as db:
                # visible_at is in the delivery's key. Reading and moving it
                # under the write lock, which acknowledge and release also read
                # it under, means no other thread ever uses a stale one.
                hidden_until = _now() + max(seconds, 0.0)
                moved = db.execute(
                    queries.EXTEND, (hidden_until, r.queue, r.visible_at, r.row, r.claim)
                ).rowcount
                if moved:
                    moved_from, r.visible_at = r.visible_at, hidden_until
        except BaseException:
            if moved_from is not None:  # the commit failed: the row did not move
                r.visible_at = moved_from
            raise

    # -- inspection and lifecycle ---------------------------------------------------------

    def queue_depth(self, queue: QueueWrapper) -> int:
        """Return how many messages the queue holds, visible or not (one count, no stats)."""
        [(count,)] = self._file.read(
            "SELECT count(*) FROM melange_deliveries WHERE queue = ?", (queue.obj,)
        )
        return int(count)

    def visibility_timeout_of(self, queue: QueueWrapper) -> float:
        """Return the visibility timeout stored with the queue in the file.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        rows = self._file.read(
            "SELECT visibility_timeout FROM melange_queues WHERE name = ?", (queue.obj,)
        )
        if not rows:
            raise QueueNotFoundError(f"queue {queue.obj!r} does not exist in {self.path}")
        return float(rows[0][0])

    def queue_stats(self, queue: QueueWrapper) -> QueueStats:
        """Return the queue's ready, in-flight (claimed) and delayed counts, in one read.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        self.get_queue(queue.obj)
        [(ready, in_flight, delayed)] = self._file.read(
            "SELECT coalesce(sum(visible_at <= ?1), 0),"
            " coalesce(sum(visible_at > ?1 AND claim IS NOT NULL), 0),"
            " coalesce(sum(visible_at > ?1 AND claim IS NULL), 0)"
            " FROM melange_deliveries WHERE queue = ?2",
            (_now(), queue.obj),
        )
        return QueueStats(int(ready), int(in_flight), int(delayed))

    def integrity_check(self) -> str:
        """Return SQLite's ``PRAGMA integrity_check`` verdict: ``"ok"`` when the file is sound."""
        return "\n".join(str(row[0]) for row in self._file.read("PRAGMA integrity_check"))

    def close_connection(self) -> None:
        """Close this backend's connections; safe to call more than once."""
        super().close_connection()
        self._file.close()


def _receipt(message: Message) -> queries.Receipt:
    receipt = message.receipt
    if not isinstance(receipt, queries.Receipt):
        raise ForeignMessageError("this message was not received from an SQLiteBackend")
    return receipt
