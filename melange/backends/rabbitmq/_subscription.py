"""One ``basic_consume`` per queue, with SQS-style visibility on top of RabbitMQ's acks.

Deliveries land in a local buffer (at most ``prefetch`` of them, RabbitMQ's
``basic_qos``). A message handed to a caller is *in flight*: the I/O thread
requeues it (``basic_nack``) when it stays unacknowledged longer than the
queue's visibility timeout, as SQS would make it visible again (its handler
may push that deadline back with ``extend``). Buffered messages nobody took
are handed back without counting as a receive.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from melange.backends.rabbitmq._codec import Delivery, uncounted
from melange.backends.rabbitmq._confirms import OnReturn, Outgoing, PublishBatch
from melange.backends.rabbitmq._connection import ConnectionThread
from melange.backends.rabbitmq._errors import detached
from melange.exceptions import ForeignMessageError, MissingExtraError
from melange.models import Message

try:
    import pika.exceptions as pika_errors
except ImportError as e:  # pragma: no cover - depends on the environment
    raise MissingExtraError("pika", "rabbitmq") from e

__all__ = ["QueueSubscription", "Receipt", "Settlement", "receipt_of"]

log = logging.getLogger("melange.backends.rabbitmq")


class Settlement(enum.Enum):
    """What the broker is told about delivered messages."""

    ACK = "ack"  # done: basic_ack
    REQUEUE = "requeue"  # back to the queue, counted as a delivery: basic_nack(requeue)
    REJECT = "reject"  # to the dead-letter exchange: basic_reject(requeue=False)


ACK, REQUEUE, REJECT = Settlement.ACK, Settlement.REQUEUE, Settlement.REJECT


class Receipt:
    """Where a received message came from: its subscription, channel generation and delivery tag.

    ``deadline`` (``time.monotonic``) is when the I/O thread requeues the
    message; it is read and changed under the subscription's lock only.
    """

    __slots__ = ("deadline", "generation", "subscription", "tag")

    def __init__(
        self, subscription: QueueSubscription, generation: int, tag: int, deadline: float
    ) -> None:
        self.subscription = subscription
        self.generation = generation
        self.tag = tag
        self.deadline = deadline

    def __repr__(self) -> str:
        return f"Receipt({self.subscription.queue!r}, generation={self.generation}, tag={self.tag})"


def receipt_of(message: Message) -> Receipt:
    """Return the receipt of a received message.

    Raises:
        ForeignMessageError: the message was not received from a RabbitMQ backend.
    """
    receipt = message.receipt
    if not isinstance(receipt, Receipt):
        raise ForeignMessageError("expected a message received from a RabbitMQBackend")
    return receipt


class QueueSubscription:
    """The subscription of one queue on a ``ConnectionThread``; thread-safe for callers.

    Attributes set by the backend: ``visibility_timeout`` (seconds),
    ``max_receive_count`` (``None``: unknown), ``dead_letters`` (whether a
    rejected message goes to a dead-letter queue).
    """

    def __init__(
        self,
        io: ConnectionThread,
        queue: str,
        *,
        prefetch: int,
        visibility_timeout: float,
        idle_release: float,
    ) -> None:
        self.io = io
        self.queue = queue
        self.prefetch = prefetch
        self.visibility_timeout = visibility_timeout
        self.idle_release = idle_release
        self.max_receive_count: int | None = None
        self.dead_letters = False
        self.cond = threading.Condition(threading.Lock())
        self.ready: deque[Delivery] = deque()
        self.in_flight: dict[int, Receipt] = {}
        #: No deadline in flight is earlier (it may be earlier than all of them).
        self.next_expiry = math.inf
        self.generation = 0
        self.waiters = 0
        self.active = False
        self.last_used = time.monotonic()
        # The rest is touched on the I/O thread only.
        self._wanted = False
        self._channel: Any = None
        self._consumer_tag: str | None = None
        self._unsettled: dict[int, None] = {}
        self._opening: list[Future[None]] | None = None

    # -- callers ------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        """Make sure the queue is being consumed; wait up to ``timeout`` for it.

        Raises the pika error when the broker refuses (the caller translates it),
        or ``BackendConnectionError`` when the broker cannot be reached in time.
        """
        if self.active:
            return
        future: Future[None] = Future()

        def fail(error: Exception) -> None:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)

        self.io.when_open(lambda: self._open(future), fail)
        self.io.wait(future, timeout)

    def take(
        self, max_messages: int, wait_seconds: float, visibility_timeout: float | None = None
    ) -> list[tuple[Receipt, Delivery]]:
        """Hand out up to ``max_messages`` buffered deliveries, waiting up to ``wait_seconds``.

        They are requeued ``visibility_timeout`` seconds from now unless settled
        (the queue's own when ``None``).
        """
        now = time.monotonic()
        with self.cond:
            self.last_used = now
            ready = self.ready
            if not ready and wait_seconds > 0:
                deadline = now + wait_seconds
                self.waiters += 1
                try:
                    while not ready:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self.cond.wait(remaining)
                finally:
                    self.waiters -= 1
                now = time.monotonic()
            if not ready:
                return []
            generation = self.generation
            hidden_for = (
                self.visibility_timeout if visibility_timeout is None else visibility_timeout
            )
            visible_again = now + hidden_for
            self.next_expiry = min(self.next_expiry, visible_again)
            in_flight = self.in_flight
            taken = []
            for _ in range(min(max_messages, len(ready))):
                delivery = ready.popleft()
                receipt = Receipt(self, generation, delivery[0], visible_again)
                in_flight[delivery[0]] = receipt
                taken.append((receipt, delivery))
            return taken

    def extend(self, receipt: Receipt, seconds: float) -> None:
        """Requeue a message ``seconds`` from now instead; a stale receipt is ignored."""
        deadline = time.monotonic() + seconds
        with self.cond:
            if self.in_flight.get(receipt.tag) is receipt:
                receipt.deadline = deadline
                self.next_expiry = min(self.next_expiry, deadline)

    def settle(self, receipts: Sequence[Receipt], action: Settlement) -> None:
        """Ack, requeue or reject received messages; a stale receipt is ignored.

        A receipt is stale when its message was already requeued: the
        visibility timeout expired, or the channel it came on is gone (the
        broker requeued it then).
        """
        generation, owned = self.claim(receipts)
        if owned:
            self.settle_claimed(generation, owned, action)

    def claim(self, receipts: Sequence[Receipt]) -> tuple[int, list[int]]:
        """Take received messages out of flight; return the generation and the tags now owned."""
        owned = []
        with self.cond:
            in_flight = self.in_flight
            for receipt in receipts:
                if in_flight.get(receipt.tag) is receipt:
                    del in_flight[receipt.tag]
                    owned.append(receipt.tag)
            return self.generation, owned

    def settle_claimed(self, generation: int, tags: list[int], action: Settlement) -> None:
        """Ack, requeue or reject messages taken with ``claim``; a closed backend ignores it."""
        io = self.io
        if io.closed:
            return  # closing the connection hands every unacknowledged message back
        io.call_soon(lambda: self._settle(generation, tags, action))

    # -- I/O thread ----------------------------------------------------------------------

    def _open(self, future: Future[None]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        self._wanted = True
        if self.active:
            future.set_result(None)
        elif self._opening is not None:
            self._opening.append(future)
        else:
            self._begin([future])

    def _begin(self, futures: list[Future[None]]) -> None:
        self._opening = futures
        channel = self._channel
        if channel is not None and channel.is_open:
            # Cancelled while messages were in flight: consume again on the same
            # channel, so that their receipts stay good.
            self._consume(channel)
            return
        connection = self.io.connection
        if connection is None or not connection.is_open:
            return  # on_connection_open carries on
        try:
            connection.channel(on_open_callback=self._on_channel_open)
        except pika_errors.AMQPError as e:
            self._finish_opening(e)

    def _on_channel_open(self, channel: Any) -> None:
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_cancel_callback(lambda _: channel.close())
        with self.cond:
            self.generation += 1
        self._channel = channel
        self._unsettled = {}
        channel.basic_qos(
            prefetch_count=self.prefetch,
            callback=lambda _: self._consume(channel),
        )

    def _consume(self, channel: Any) -> None:
        self._consumer_tag = channel.basic_consume(
            self.queue, self._on_message, callback=lambda _: self._on_consume_ok()
        )

    def _on_consume_ok(self) -> None:
        self.active = True
        self._finish_opening(None)

    def _finish_opening(self, error: BaseException | None) -> None:
        futures, self._opening = self._opening or [], None
        for future in futures:
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(detached(error))

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        tag = method.delivery_tag
        self._unsettled[tag] = None
        with self.cond:
            self.ready.append(
                (tag, method.redelivered, method.exchange, method.routing_key, properties, body)
            )
            if self.waiters:
                self.cond.notify()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self._channel:
            return
        self._forget_channel()
        if isinstance(reason, pika_errors.ChannelClosedByBroker):
            # The queue is gone or the broker refused: fail the waiting starts;
            # the next retrieve tries again and reports what the broker says.
            self._wanted = False
            self._finish_opening(reason)
            log.warning("RabbitMQ closed the subscription of %r: %s", self.queue, reason)

    def _forget_channel(self) -> None:
        self._channel = None
        self._consumer_tag = None
        self._unsettled = {}
        self.active = False
        with self.cond:
            self.generation += 1
            self.ready.clear()
            self.in_flight.clear()

    def on_connection_open(self) -> None:
        """Resume consuming after a reconnect, if anyone wanted this queue."""
        if self._channel is None and (self._wanted or self._opening is not None):
            self._begin(self._opening or [])

    def on_connection_lost(self) -> None:
        """Forget every delivery: the broker requeued all of them."""
        if self._channel is not None:
            self._forget_channel()

    def _settle(self, generation: int, tags: list[int], action: Settlement) -> None:
        channel = self._channel
        if channel is None or generation != self.generation:
            return  # that channel is gone, and with it the deliveries: already requeued
        unsettled = self._unsettled
        for tag in tags:
            unsettled.pop(tag, None)
        try:
            if action == ACK:
                tags.sort()
                lowest = next(iter(unsettled), None)
                covered = len(tags) if lowest is None else bisect_left(tags, lowest)
                if covered:
                    channel.basic_ack(tags[covered - 1], multiple=covered > 1)
                for tag in tags[covered:]:
                    channel.basic_ack(tag)
            elif action == REQUEUE:
                for tag in tags:
                    channel.basic_nack(tag, requeue=True)
            else:
                for tag in tags:
                    channel.basic_reject(tag, requeue=False)
        except pika_errors.ChannelWrongStateError:
            log.debug("channel of %r closing; the broker requeues its deliveries", self.queue)

    def tick(self, now: float) -> None:
        """Requeue messages past their visibility timeout; release an idle buffer."""
        if self._channel is None:
            return
        if self.in_flight and now >= self.next_expiry:
            # Deadlines are not in delivery order (extend moves them): scan them all,
            # but only when the earliest one is due.
            expired = []
            earliest = math.inf
            with self.cond:
                for tag, receipt in self.in_flight.items():
                    if receipt.deadline <= now:
                        expired.append(tag)
                    elif receipt.deadline < earliest:
                        earliest = receipt.deadline
                for tag in expired:
                    del self.in_flight[tag]
                self.next_expiry = earliest
            if expired:
                self._settle(self.generation, expired, REQUEUE)
        if (
            self.active
            and self.ready
            and not self.waiters
            and not self.in_flight
            and now - self.last_used > self.idle_release
        ):
            self.stop_gracefully(lambda: None)

    def stop_gracefully(self, done: Callable[[], None]) -> None:
        """Cancel the subscription; put buffered messages back uncounted; then call ``done``."""
        self._wanted = False
        channel, consumer_tag = self._channel, self._consumer_tag
        if channel is None or consumer_tag is None or not self.active:
            done()
            return
        self.active = False
        generation = self.generation

        def cancelled(_: Any) -> None:
            with self.cond:
                buffered = list(self.ready)
                self.ready.clear()
            if not buffered:
                finish()
                return
            items: list[Outgoing] = [
                ("", self.queue, d[5], uncounted(d, self.queue), OnReturn.FAIL) for d in buffered
            ]

            def republished(batch: PublishBatch) -> None:
                tags = [d[0] for i, d in enumerate(buffered) if i not in batch.failures]
                self._settle(generation, tags, ACK)
                finish()

            self.io.publish(items, PublishBatch(len(items), republished))

        def finish() -> None:
            if not self.in_flight and self._channel is channel and channel.is_open:
                channel.close()  # nothing left to acknowledge on it
            done()

        try:
            channel.basic_cancel(consumer_tag, callback=cancelled)
        except pika_errors.ChannelWrongStateError:
            done()

    def discard(self) -> None:
        """Stop consuming for good (the queue is being deleted); nothing is handed back."""
        self._wanted = False
        channel = self._channel
        if channel is not None and channel.is_open:
            channel.close()
