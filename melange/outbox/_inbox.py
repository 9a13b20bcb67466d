"""``Inbox``: handle a message exactly once in effect, in one transaction with its record.

Each attempt of a handler runs in one transaction of the service's
database: the inbox checks that the consumer has not handled the message
yet, the handler writes its effect through ``transaction()``, what it
publishes becomes outbox rows, and the inbox records the message, all in
one commit. Only then does the dispatcher acknowledge it. A redelivery
(the worker died before the ack, or a visibility timeout ran out) finds
the record and is acknowledged without running the handler again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from melange.consumers import Consumer
from melange.exceptions import ConfigurationError
from melange.middleware import ConsumerCall, Middleware, hold_publishes
from melange.models import Message
from melange.outbox._inbox_databases import database_of
from melange.outbox._rows import row_of
from melange.outcomes import CallResult
from melange.outgoing import Outgoing

__all__ = ["Inbox", "transaction"]

_log = logging.getLogger("melange.outbox")
_current: ContextVar[Any] = ContextVar("melange_inbox_transaction", default=None)
_HANDLED_BEFORE = "handled before (inbox)"
_PURGE_EVERY = 60.0  # seconds between two purges of expired inbox rows


def transaction() -> Any:
    """Return what the handler being run by an ``Inbox`` writes through.

    A SQLAlchemy ``Session`` (or ``AsyncSession``), or the ``sqlite3`` or
    psycopg connection, in the transaction that records the message. Do not
    commit or roll it back: the inbox does, after the handler returns.

    Raises:
        ConfigurationError: no inbox is running a handler here.
    """
    handle = _current.get()
    if handle is None:
        raise ConfigurationError("transaction() is for handlers run by an Inbox middleware")
    return handle


class Inbox(Middleware):
    """Runs each consumer call in a transaction with the record of the message handled.

    ``database`` is a URL (``sqlite:///orders.db``, ``postgresql://…``), a
    SQLAlchemy ``Engine`` or ``sessionmaker``, or, for ``async def``
    listeners under ``melange.aio``, an ``AsyncEngine`` or
    ``async_sessionmaker``. Given a URL, plain listeners write through a
    ``sqlite3`` or psycopg connection and ``async def`` listeners under
    ``melange.aio`` through an aiosqlite or psycopg ``AsyncConnection``.
    Records are kept ``retention_seconds`` (7 days): a redelivery later than
    that runs the handler again.

        dispatcher = MessageDispatcher(backend, [Billing()], middleware=[Inbox(engine)])

    Publishes the handler makes (``MessagePublisher.publish``, or an
    ``OutboxPublisher`` on ``transaction()``) become outbox rows in the same
    transaction, sent by a ``Relay`` after the commit.
    """

    def __init__(
        self,
        database: object,
        *,
        retention_seconds: float = 7 * 24 * 3600.0,
        create_tables: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        #: Where plain listeners' transactions open (``None``: an async engine was given).
        self.database, self.async_database = database_of(database)
        self.retention_seconds = retention_seconds
        self._clock = clock
        self._purged_at = 0.0
        self._purge_lock = threading.Lock()
        self._tables_checked = not create_tables
        self._tables_lock: asyncio.Lock | None = None
        if create_tables and self.database is not None:
            self.database.ensure_tables()
            self._tables_checked = True

    # -- the hooks ---------------------------------------------------------------------

    def call_consumer(self, call: ConsumerCall, call_next: Callable[[], CallResult]) -> CallResult:
        inboxed = _InTransaction(call.consumer, self)
        call.consumer = inboxed
        try:
            return inboxed.result_of(call_next())
        finally:
            call.consumer = inboxed.consumer

    async def call_consumer_async(
        self, call: ConsumerCall, call_next: Callable[[], Awaitable[CallResult]]
    ) -> CallResult:
        if not self._tables_checked and self.async_database is not None:
            if self._tables_lock is None:
                self._tables_lock = asyncio.Lock()
            async with self._tables_lock:  # the first messages arrive together
                if not self._tables_checked:
                    await self.async_database.ensure_tables()
                    self._tables_checked = True
        inboxed = _InTransaction(call.consumer, self)
        call.consumer = inboxed
        try:
            return inboxed.result_of(await call_next())
        finally:
            call.consumer = inboxed.consumer

    # -- one attempt -----------------------------------------------------------------

    def run(self, consumer: Consumer, event: Any, message: Message) -> bool:
        """Run one attempt of ``consumer`` on ``message`` in a transaction of its own.

        Returns whether it was not run: the consumer had handled the message before.
        """
        database = self.database
        if database is None:
            raise ConfigurationError(
                f"{type(consumer).__qualname__} has a plain listener: an Inbox on an async"
                " database runs async def listeners only (give it a sync Engine or URL)"
            )
        consumer_id, message_id = consumer.consumer_id, message.message_id
        with database.transaction() as tx:
            if tx.processed(consumer_id, message_id):
                return True
            token = _current.set(tx.handle)
            try:
                with hold_publishes() as held:
                    consumer.handle(event, message)
                    published = held.held
            finally:
                _current.reset(token)
            now = self._clock()
            if published:
                database.write_rows(tx, _rows(published, now))
            if not tx.record(consumer_id, message_id, now):
                raise _Raced
            if self._purge_due(now):
                tx.purge(now - self.retention_seconds)
        return False

    async def run_async(
        self,
        listener: Callable[..., Any],
        takes_message: bool,
        consumer_id: str,
        event: Any,
        message: Message,
    ) -> bool:
        """``run`` for an ``async def`` listener: one attempt, in a transaction of its own."""
        database = self.async_database
        assert database is not None
        message_id = message.message_id
        async with database.transaction() as tx:
            if await tx.processed(consumer_id, message_id):
                return True
            token = _current.set(tx.handle)
            try:
                with hold_publishes() as held:
                    result = listener(event, message) if takes_message else listener(event)
                    if inspect.isawaitable(result):
                        await result
                    published = held.held
            finally:
                _current.reset(token)
            now = self._clock()
            if published:
                await database.write_rows(tx, _rows(published, now))
            if not await tx.record(consumer_id, message_id, now):
                raise _Raced
            if self._purge_due(now):
                await tx.purge(now - self.retention_seconds)
        return False

    def _purge_due(self, now: float) -> bool:
        with self._purge_lock:
            if now - self._purged_at < _PURGE_EVERY:
                return False
            self._purged_at = now
            return True

    def close(self) -> None:
        """Close the sync connections the inbox opened (not an engine or factory given)."""
        if self.database is not None:
            self.database.close()

    async def aclose(self) -> None:
        """Close every connection the inbox opened, the event loop's too."""
        self.close()
        if self.async_database is not None:
            await self.async_database.aclose()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Inbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Raced(Exception):
    """Another delivery of the message recorded it first: this attempt's effect is rolled back."""


def _rows(published: list[Outgoing], now: float) -> list[tuple[object, ...]]:
    return [row_of(outgoing, now) for outgoing in published]


class _InTransaction(Consumer):
    """The consumer as the pipeline calls it under an ``Inbox``: each attempt, a transaction.

    It stands in ``ConsumerCall.consumer`` for the call only; ``result_of``
    turns the call's result into a skip when the inbox found the message
    handled before (or by a delivery racing this one).
    """

    def __init__(self, consumer: Consumer, inbox: Inbox) -> None:
        super().__init__(consumer_id=consumer.consumer_id)
        self.consumer = consumer
        self._inbox = inbox
        self._not_run: str | None = None

    def result_of(self, result: CallResult) -> CallResult:
        if self._not_run is not None and result.succeeded:
            _log.info("%s: %s", self.consumer_id, self._not_run)
            return CallResult.skip(self._not_run)
        return result

    def handle(self, event: Any, message: Message) -> None:
        try:
            if self._inbox.run(self.consumer, event, message):
                self._not_run = f"{message.message_id} {_HANDLED_BEFORE}"
        except _Raced:
            self._not_run = f"{message.message_id} handled by another delivery at the same time"

    def awaitable_listener(self, event_type: type) -> tuple[Callable[..., Any], bool] | None:
        if self._inbox.async_database is None:
            return None  # handle() runs on a worker thread, in a sync transaction
        found = self.consumer.awaitable_listener(event_type)
        if found is None:
            return None
        listener, takes_message = found

        async def in_transaction(event: Any, message: Message) -> None:
            try:
                if await self._inbox.run_async(
                    listener, takes_message, self.consumer_id, event, message
                ):
                    self._not_run = f"{message.message_id} {_HANDLED_BEFORE}"
            except _Raced:
                self._not_run = f"{message.message_id} handled by another delivery at the same time"

        return in_transaction, True
