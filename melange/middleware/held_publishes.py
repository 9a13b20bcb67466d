"""Holding publishes back: ``hold_publishes()`` keeps what a scope publishes until it says so."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from melange._bridge import run_on_loop
from melange.exceptions import ConfigurationError
from melange.models import Message
from melange.outgoing import Outgoing

__all__ = ["HeldPublishes", "Send", "current_hold", "hold_publishes"]


class HeldPublishes:
    """Sends kept back by ``hold_publishes``, in the order they were made."""

    def __init__(self) -> None:
        self._sends: list[tuple[Outgoing, Send]] = []

    @property
    def messages(self) -> list[Message]:
        """Return the messages held so far."""
        return [held.built for held, _ in self._sends]

    @property
    def held(self) -> list[Outgoing]:
        """Return the sends held so far, with where each goes: enough to send them later."""
        return [held for held, _ in self._sends]

    def hold(self, outgoing: Outgoing, send: Send) -> None:
        """Keep one send back: ``send()`` sends ``outgoing`` (or returns an awaitable that does)."""
        self._sends.append((outgoing, send))

    def release(self) -> list[Message]:
        """Send every held message now, in order; return them.

        An ``AsyncMessagePublisher``'s publish held here is awaited on the
        async dispatcher's loop when called from its worker thread.

        Raises:
            ConfigurationError: an async publish held, called on an event loop
                (``await release_async()`` there) or with none running.
        """
        sent = []
        while self._sends:
            held, send = self._sends[0]
            pending = send()
            if pending is not None:
                _await_from_thread(pending)  # raises before sending, leaving it held
            self._sends.pop(0)
            sent.append(held.built)
        return sent

    async def release_async(self) -> list[Message]:
        """Send every held message now, in order, awaiting async publishes; return them."""
        sent = []
        while self._sends:
            held, send = self._sends[0]
            pending = send()
            if pending is not None:
                await pending
            self._sends.pop(0)
            sent.append(held.built)
        return sent

    def after_last(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` right after the latest held send goes out; never, if discarded."""
        held, send = self._sends[-1]

        def send_then_call() -> Awaitable[None] | None:
            pending = send()
            if pending is None:
                callback()
                return None
            return _then(pending, callback)

        self._sends[-1] = (held, send_then_call)

    def discard(self) -> list[Message]:
        """Drop every held message unsent; return them."""
        dropped = self.messages
        self._sends.clear()
        return dropped


#: Sends one held publish: returns ``None`` once sent, or an awaitable that sends it.
Send = Callable[[], "Awaitable[None] | None"]


async def _then(pending: Awaitable[None], callback: Callable[[], None]) -> None:
    await pending
    callback()


def _await_from_thread(pending: Awaitable[None]) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        run_on_loop(pending, "a held AsyncMessagePublisher publish")
        return
    if isinstance(pending, Coroutine):
        pending.close()
    raise ConfigurationError("async publishes are held here: await held.release_async()")


_held: ContextVar[HeldPublishes | None] = ContextVar("melange_held_publishes", default=None)


@contextmanager
def hold_publishes() -> Iterator[HeldPublishes]:
    """Keep back every publish made in this context until the caller releases them.

    Whatever is still held when the block ends is discarded: call
    ``release()`` on success. Nested holds each keep their own publishes.
    """
    held = HeldPublishes()
    token = _held.set(held)
    try:
        yield held
    finally:
        _held.reset(token)
        held.discard()


#: Return the innermost active ``hold_publishes``, if any (used by publishers).
current_hold = _held.get
