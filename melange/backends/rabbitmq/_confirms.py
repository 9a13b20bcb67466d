"""Publisher confirms: every message published on the confirm channel is settled exactly once.

A ``PublishBatch`` is what a caller waits on; ``Confirms`` (I/O thread only)
maps the channel's delivery tags to batches and settles them from the
broker's ``basic.ack``/``basic.nack`` (one at a time or ``multiple``), from
``basic.return`` (a mandatory message no queue took), or from the channel
or connection going away before the confirm came. Every publish is mandatory;
``OnReturn`` says whether a return fails it (a queue publish) or only marks it
unrouted (a topic publish nobody subscribes to).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Sequence
from typing import Any

from melange.backends.rabbitmq._errors import nacked, returned, translate
from melange.exceptions import MissingExtraError, PublishError

try:
    import pika.exceptions as pika_errors
    from pika.spec import Basic
except ImportError as e:  # pragma: no cover - depends on the environment
    raise MissingExtraError("pika", "rabbitmq") from e

__all__ = ["Confirms", "OnReturn", "Outgoing", "PublishBatch"]

_NO_ROUTE = 312


class OnReturn(enum.Enum):
    """What a ``basic.return`` (no queue took the message) means for a publish."""

    #: The publish fails (a queue publish: the queue is missing).
    FAIL = "fail"
    #: The publish succeeds and is listed in ``PublishBatch.unrouted`` (a topic publish).
    REPORT = "report"


#: What one publish sends: exchange, routing key, body, properties, what a return means.
Outgoing = tuple[str, str, bytes, Any, OnReturn]


class _Status(enum.Enum):
    PENDING = 0
    CONFIRMED = 1
    FAILED = 2


_PENDING, _CONFIRMED, _FAILED = _Status.PENDING, _Status.CONFIRMED, _Status.FAILED


class PublishBatch:
    """Messages published together, settled one by one as their outcomes come."""

    __slots__ = ("_lock", "_on_done", "_status", "done", "failures", "remaining", "unrouted")

    def __init__(self, size: int, on_done: Callable[[PublishBatch], None] | None = None) -> None:
        self.remaining = size
        self.failures: dict[int, Exception] = {}
        #: Indexes of confirmed messages that no queue took (``OnReturn.REPORT``).
        self.unrouted: list[int] = []
        self.done = threading.Event()
        self._status = [_PENDING] * size
        self._on_done = on_done
        self._lock = threading.Lock()

    def settle(self, index: int, failure: Exception | None, *, unrouted: bool = False) -> None:
        """Record the outcome of message ``index``; the first outcome wins."""
        with self._lock:
            if self._status[index] != _PENDING or self.done.is_set():
                return
            if failure is None:
                self._status[index] = _CONFIRMED
                if unrouted:
                    self.unrouted.append(index)
            else:
                self._status[index] = _FAILED
                self.failures[index] = failure
            self.remaining -= 1
            if self.remaining:
                return
            self.done.set()
        if self._on_done is not None:
            self._on_done(self)

    def fail_unsettled(self, failure: Exception) -> None:
        """Fail every message not settled yet (no confirm can come for them any more)."""
        for index in range(len(self._status)):
            self.settle(index, failure)

    def wait(self, timeout: float) -> dict[int, Exception]:
        """Wait for every outcome; return index -> failure (empty when all were confirmed).

        A message still unconfirmed after ``timeout`` seconds counts as failed,
        and one not sent yet by then is never sent.
        """
        if not self.done.wait(timeout):
            late = PublishError(f"no confirm from RabbitMQ within {timeout:g} s")
            with self._lock:
                if not self.done.is_set():
                    for index, status in enumerate(self._status):
                        if status == _PENDING:
                            self._status[index] = _FAILED
                            self.failures[index] = late
                    self.remaining = 0
                    self.done.set()
        return self.failures


class _Pending:
    __slots__ = ("batch", "failure", "index", "item", "returned")

    def __init__(self, batch: PublishBatch, index: int, item: Outgoing) -> None:
        self.batch = batch
        self.index = index
        self.item = item
        self.returned = False
        self.failure: Exception | None = None


class Confirms:
    """The publishing channel in confirm mode and the messages awaiting a confirm (I/O thread)."""

    def __init__(self) -> None:
        self.channel: Any = None
        self._next_tag = 1
        self._pending: dict[int, _Pending] = {}
        self._on_nack: Callable[[Any], None] = lambda channel: None

    def attach(
        self,
        channel: Any,
        ready: Callable[[], None],
        on_nack: Callable[[Any], None] = lambda channel: None,
    ) -> None:
        """Put a freshly opened channel in confirm mode; call ``ready`` once it is.

        ``on_nack(channel)`` is called after the broker refused a message on it.
        """
        channel.add_on_return_callback(self._on_return)

        def selected(_: Any) -> None:
            self.channel = channel
            self._next_tag = 1
            self._on_nack = on_nack
            ready()

        channel.confirm_delivery(self._on_confirm, callback=selected)

    def publish(self, items: Sequence[Outgoing], batch: PublishBatch) -> None:
        """Publish on the attached channel; each message settles ``batch`` later."""
        pending = self._pending
        publish = self.channel.basic_publish
        tag = self._next_tag
        for index, item in enumerate(items):
            exchange, routing_key, body, properties, _ = item
            pending[tag] = _Pending(batch, index, item)
            try:
                publish(exchange, routing_key, body, properties, True)
            except (pika_errors.AMQPError, ValueError, TypeError) as e:
                del pending[tag]  # nothing was sent, so the tag was not used
                batch.settle(index, translate(e, publishing=True))
                continue
            tag += 1
        self._next_tag = tag

    def _on_return(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        # A return carries no delivery tag but comes before the confirm of its message,
        # and returns come in publishing order: mark the oldest unreturned match. Only
        # messages identical in destination, id and body can be confused, which no
        # caller can tell apart.
        for pending in self._pending.values():
            if pending.returned:
                continue
            exchange, routing_key, sent, sent_properties, on_return = pending.item
            if (
                routing_key == method.routing_key
                and exchange == method.exchange
                and sent_properties.message_id == properties.message_id
                and sent == body
            ):
                pending.returned = True
                if on_return is OnReturn.FAIL or method.reply_code != _NO_ROUTE:
                    pending.failure = returned(
                        method.reply_code, method.reply_text, exchange, routing_key
                    )
                return

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        acked = isinstance(method, Basic.Ack)
        tag = method.delivery_tag
        pending = self._pending
        if method.multiple:
            tags = []
            for t in pending:
                if t > tag:
                    break
                tags.append(t)
        else:
            tags = [tag]
        for t in tags:
            entry = pending.pop(t, None)
            if entry is None:
                continue
            failure = entry.failure
            if failure is None and not acked:
                failure = nacked()
            entry.batch.settle(entry.index, failure, unrouted=entry.returned)
        if not acked:
            self._on_nack(self.channel)

    def detach(self, reason: BaseException) -> None:
        """The channel is gone: fail every message still awaiting its confirm."""
        self.channel = None
        pending, self._pending = self._pending, {}
        text = str(reason)
        for entry in pending.values():
            exchange = entry.item[0]
            if entry.failure is not None:
                failure: Exception = entry.failure
            elif exchange and f"'{exchange}'" in text:
                failure = translate(reason, topic=exchange)  # "no exchange 'x'"
            else:
                failure = translate(reason, publishing=True)
            entry.batch.settle(entry.index, failure)
