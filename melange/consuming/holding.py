"""The messages a consume loop holds: kept hidden while held, acknowledged promptly.

A background thread extends the visibility of every held message (and the
leases of those being handled) before it can expire, so a long handler is
never handed to a second worker. Finished messages are acknowledged in small
groups by the loop itself, and by that thread too when the next handler runs
long, so none waits more than about ``_KEEPER_TICK`` seconds.

The keeper thread calls a synchronous backend; under asyncio it calls the
async backend through ``LoopCalls``, on the loop, while the loop itself sends
its acknowledgements with ``take_acks`` and ``acknowledging``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self

from melange.broker_calls import BrokerCall, BrokerSteps, run_calls
from melange.exceptions import MelangeError
from melange.middleware import Handling
from melange.models import Message

__all__ = ["HeldMessages", "KeeperCalls", "LoopCalls", "acknowledging"]

_log = logging.getLogger("melange.dispatcher")

_MIN_EXTEND_INTERVAL = 0.2
# The keeper thread wakes this rarely: each wake-up takes the GIL from the loop.
_KEEPER_TICK = 0.25


class KeeperCalls(Protocol):
    """The two backend calls the keeper thread makes (a ``MessagingBackend`` has both)."""

    def extend_visibility_batch(self, messages: Sequence[Message], seconds: float) -> None: ...

    def acknowledge_batch(self, messages: Sequence[Message]) -> None: ...


class LoopCalls:
    """``KeeperCalls`` on an async backend: each call runs on ``loop``, the thread waits."""

    def __init__(self, backend: Any, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.backend = backend
        self.loop = loop
        self.timeout = timeout

    def extend_visibility_batch(self, messages: Sequence[Message], seconds: float) -> None:
        self._wait(self.backend.extend_visibility_batch(messages, seconds))

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        self._wait(self.backend.acknowledge_batch(messages))

    def _wait(self, call: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(call, self.loop).result(self.timeout)


def acknowledging(messages: Sequence[Message]) -> BrokerSteps[None]:
    """Acknowledge finished messages; a failure is logged (they come back, idempotency skips)."""
    try:
        yield BrokerCall("acknowledge_batch", (messages,))
    except MelangeError as e:
        _log.warning("could not acknowledge %d messages: %s", len(messages), e)


class HeldMessages:
    """Received messages not yet settled, and the acknowledgements waiting to be sent.

    Use as a context manager (``with``, or ``async with`` on an event loop):
    the keeper thread runs inside the block, and leaving it sends the
    acknowledgements still waiting.
    """

    def __init__(
        self, backend: KeeperCalls, visibility_timeout: float, *, ack_delay: float = 0.05
    ) -> None:
        self.backend = backend
        self.visibility_timeout = visibility_timeout
        self.ack_delay = ack_delay
        self._extend_every = max(visibility_timeout / 3, _MIN_EXTEND_INTERVAL)
        self._held: dict[int, Message] = {}
        self._acks: deque[Message] = deque()
        self._oldest_ack = 0.0
        self._handling: dict[int, Handling] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # Held while one message is extended, so that the loop, once it stops
        # holding a message, knows no extension of it is still under way.
        self._extending = threading.Lock()
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- the loop's side ------------------------------------------------------------

    def hold(self, messages: Iterable[Message]) -> None:
        """Start keeping these received messages hidden."""
        for message in messages:
            self._held[id(message)] = message

    def start(self, handling: Handling) -> None:
        """Say that a message is being handled now (its leases are renewed too).

        Acknowledgements older than ``ack_delay`` are sent first. Call
        ``finish`` when it is done; several may be handled at once.
        """
        self._handling[id(handling)] = handling
        if self._acks and time.monotonic() - self._oldest_ack >= self.ack_delay:  # acks_due()
            self.flush()

    def acks_waiting(self) -> bool:
        """Return whether some acknowledgements wait to be sent."""
        return bool(self._acks)

    def acks_due(self) -> bool:
        """Return whether acknowledgements have waited ``ack_delay`` (then ``flush``)."""
        return bool(self._acks) and time.monotonic() - self._oldest_ack >= self.ack_delay

    def handling(self, handling: Handling) -> None:
        """Say that a message is being handled now, sending nothing (the async loop's ``start``)."""
        self._handling[id(handling)] = handling

    def finish(self, handling: Handling) -> None:
        """Say that this message's handling ended (its leases are no longer renewed)."""
        self._handling.pop(id(handling), None)

    def drop(self, message: Message) -> None:
        """Stop holding a message; no extension of it runs after this returns."""
        with self._extending:
            self._held.pop(id(message), None)

    def done(self, message: Message) -> None:
        """Acknowledge a finished message soon."""
        self._held.pop(id(message), None)
        if not self._acks:
            self._oldest_ack = time.monotonic()
        self._acks.append(message)

    def unstarted(self) -> list[Message]:
        """Return and stop holding every message not yet finished."""
        with self._extending:
            messages = list(self._held.copy().values())
            self._held.clear()
        return messages

    def take_acks(self) -> list[Message]:
        """Return (and stop waiting on) the acknowledgements waiting: the caller sends them."""
        return _drain(self._acks)

    def flush(self) -> None:
        """Send the waiting acknowledgements now, on the backend given (from any thread)."""
        acks = _drain(self._acks)
        if acks:
            run_calls(self.backend, acknowledging(acks))

    # -- the keeper thread ------------------------------------------------------------

    def __enter__(self) -> Self:
        self._start_keeper()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    async def __aenter__(self) -> Self:
        self._start_keeper()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # On a thread: the keeper is joined, and the last acknowledgements go through the loop.
        await asyncio.to_thread(self._close)

    def _start_keeper(self) -> None:
        self._thread = threading.Thread(target=self._keep, name="melange-keeper", daemon=True)
        self._thread.start()

    def _close(self) -> None:
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def _keep(self) -> None:
        next_extension = time.monotonic() + self._extend_every
        while True:
            with self._lock:
                if self._closing:
                    return
                # Wake on time for the next extension: a late one lets a message reappear.
                self._wake.wait(max(0.0, min(_KEEPER_TICK, next_extension - time.monotonic())))
                if self._closing:
                    return
                now = time.monotonic()
                stale_acks = bool(self._acks) and now - self._oldest_ack >= _KEEPER_TICK
                in_hand = list(self._handling.copy().values())
                extend: list[Message] = []
                handling: list[Handling] = []
                if now >= next_extension:
                    extend = list(self._held.copy().values())
                    handling = in_hand
                    next_extension = now + self._extend_every
            if stale_acks:
                self.flush()
            if extend or handling:
                self._extend(extend, handling)
            self._renew_leases(in_hand, now)

    def _extend(self, messages: list[Message], handling: list[Handling]) -> None:
        seconds = self.visibility_timeout
        if messages:
            try:
                with self._extending:
                    held = [message for message in messages if id(message) in self._held]
                    if held:
                        self.backend.extend_visibility_batch(held, seconds)
            except Exception as e:  # the keeper must outlive any one backend failure
                _log.warning("could not extend the visibility of held messages: %s", e)
        for one in handling:
            try:
                one.renew(seconds)
            except Exception as e:
                _log.warning("could not renew a lease on %s: %s", one.message.message_id, e)

    def _renew_leases(self, handling: list[Handling], now: float) -> None:
        """Renew the short leases (idempotency claims) of the messages being handled."""
        for one in handling:
            try:
                one.renew_leases(now)
            except Exception as e:  # the keeper must outlive any one store failure
                _log.warning("could not renew a lease on %s: %s", one.message.message_id, e)


def _drain(queue: deque[Message]) -> list[Message]:
    """Pop everything from ``queue``; safe while another thread appends."""
    drained = []
    try:
        while True:
            drained.append(queue.popleft())
    except IndexError:
        return drained
