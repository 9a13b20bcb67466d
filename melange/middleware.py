"""Middleware: code that wraps the handling and the publishing of messages.

A ``Middleware`` overrides any of four hooks (and, for ``melange.aio``, the
async twins of the first two); each receives the scope and a
``call_next`` that runs the rest of the chain (the next middleware, then
melange's own step) and returns its result. Code before ``call_next()`` runs
before, code after it runs after, in one Python scope. The first middleware
given is the outermost.

- ``handle_message(handling, call_next) -> Outcome``: one received message.
- ``call_consumer(call, call_next) -> CallResult``: one consumer on it.
- ``build_message(publishing, call_next) -> Message``: turning an event into a message.
- ``send_message(publishing, call_next) -> None``: handing that message to the backend.

``hold_publishes()`` lets a middleware keep back what a handler publishes
until its scope ends (see docs/middleware.md).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from melange._bridge import awaited
from melange.models import Message, QueueWrapper, TopicWrapper

if TYPE_CHECKING:
    from melange.consumers import Consumer
    from melange.outcomes import CallResult, Outcome

__all__ = [
    "ConsumerCall",
    "Consuming",
    "Destination",
    "DestinationKind",
    "ExceptionHook",
    "Handling",
    "HeldPublish",
    "HeldPublishes",
    "KeepAlive",
    "Middleware",
    "Publishing",
    "ThreadRunner",
    "async_hooks_of",
    "compose",
    "current_hold",
    "hold_publishes",
    "hooks_of",
    "sync_only_hooks",
]

#: Pushes a message's visibility (and its claims) this many seconds further.
KeepAlive = Callable[[float], None]
#: Told about each exception a handler raised (a consume loop's ``on_exception``).
ExceptionHook = Callable[[BaseException], None]
_S = TypeVar("_S")
_R = TypeVar("_R")


class Middleware:
    """Wraps message scopes; every hook passes through unless overridden."""

    def handle_message(self, handling: Handling, call_next: Callable[[], Outcome]) -> Outcome:
        """Wrap the handling of one received message; return (or replace) its outcome."""
        return call_next()

    def call_consumer(self, call: ConsumerCall, call_next: Callable[[], CallResult]) -> CallResult:
        """Wrap one consumer's handling of a message (all its immediate attempts)."""
        return call_next()

    async def handle_message_async(
        self, handling: Handling, call_next: Callable[[], Awaitable[Outcome]]
    ) -> Outcome:
        """``handle_message`` under ``melange.aio``'s dispatcher, on the event loop.

        Override it next to ``handle_message`` for a middleware that must not
        cost the async dispatcher a thread; one that only overrides the sync
        hook has it run on a worker thread there, ``call_next`` bridged back.
        """
        return await call_next()

    async def call_consumer_async(
        self, call: ConsumerCall, call_next: Callable[[], Awaitable[CallResult]]
    ) -> CallResult:
        """``call_consumer`` under ``melange.aio``'s dispatcher (see ``handle_message_async``)."""
        return await call_next()

    def build_message(self, publishing: Publishing, call_next: Callable[[], Message]) -> Message:
        """Wrap serializing an event; ``publishing.headers`` may be changed before ``call_next``."""
        return call_next()

    def send_message(self, publishing: Publishing, call_next: Callable[[], None]) -> None:
        """Wrap handing ``publishing.message`` to the backend."""
        call_next()


def hooks_of(middleware: Sequence[Middleware], name: str) -> tuple[Callable[..., Any], ...]:
    """Return the bound ``name`` hooks that do something (not the base class's pass-through)."""
    base = getattr(Middleware, name)
    return tuple(getattr(m, name) for m in middleware if getattr(type(m), name) is not base)


#: Runs a blocking call on a worker thread and awaits it (the async loop's ``in_thread``).
ThreadRunner = Callable[..., Awaitable[Any]]


def async_hooks_of(
    middleware: Sequence[Middleware], name: str, in_thread: ThreadRunner
) -> tuple[Callable[..., Any], ...]:
    """Return each middleware's async hook ``name``: its own ``_async`` twin, or its sync one.

    A sync-only hook runs on a worker thread (``in_thread``), its ``call_next``
    bridged back to the event loop.
    """
    sync_only = sync_only_hooks(middleware, name)
    async_base = getattr(Middleware, f"{name}_async")
    hooks: list[Callable[..., Any]] = []
    for m in middleware:
        if getattr(type(m), f"{name}_async") is not async_base:
            hooks.append(getattr(m, f"{name}_async"))
        elif m in sync_only:
            hooks.append(_on_a_thread(getattr(m, name), in_thread))
    return tuple(hooks)


def sync_only_hooks(middleware: Sequence[Middleware], name: str) -> list[Middleware]:
    """Return the middleware that override hook ``name`` but not its ``_async`` twin."""
    sync_base = getattr(Middleware, name)
    async_base = getattr(Middleware, f"{name}_async")
    return [
        m
        for m in middleware
        if getattr(type(m), name) is not sync_base
        and getattr(type(m), f"{name}_async") is async_base
    ]


def _on_a_thread(
    hook: Callable[[Any, Callable[[], Any]], Any], in_thread: ThreadRunner
) -> Callable[..., Awaitable[Any]]:
    async def run(scope: Any, call_next: Callable[[], Awaitable[Any]]) -> Any:
        loop = asyncio.get_running_loop()

        def call_next_from_thread() -> Any:
            return asyncio.run_coroutine_threadsafe(awaited(call_next()), loop).result()

        return await in_thread(hook, scope, call_next_from_thread)

    return run


def compose(hooks: tuple[Callable[..., Any], ...], core: Callable[[_S], _R]) -> Callable[[_S], _R]:
    """Return ``core`` wrapped by ``hooks``, the first outermost; built once, run per scope."""
    wrapped = core
    for hook in reversed(hooks):
        wrapped = _wrap(hook, wrapped)
    return wrapped


def _wrap(hook: Callable[..., Any], inner: Callable[[_S], _R]) -> Callable[[_S], _R]:
    def run(scope: _S) -> _R:
        result: _R = hook(scope, partial(inner, scope))
        return result

    return run


@dataclass(frozen=True, slots=True)
class Consuming:
    """What every message of one consume loop shares: its queue and its settings.

    ``dispatcher`` is the dispatcher running the loop (the sender of
    ``melange.signals``); ``messaging_system`` names its broker as
    OpenTelemetry's ``messaging.system`` does.
    """

    queue: str
    dispatcher: object = None
    visibility_timeout: float = 30.0
    on_exception: ExceptionHook | None = None
    stopping: Callable[[], bool] = lambda: False
    messaging_system: str = "melange"


class Handling:
    """The scope of one received message, as middleware sees it.

    ``event`` is set once the message is deserialized; ``unsuccessful``
    lists the consumer calls that failed, were skipped or deferred. ``state``
    is for middleware to share data across hooks of one message.
    """

    __slots__ = (
        "_keep_alives",
        "_leases",
        "_state",
        "consuming",
        "event",
        "message",
        "unsuccessful",
    )

    def __init__(self, message: Message, consuming: Consuming) -> None:
        self.message = message
        self.consuming = consuming
        self.event: Any = None
        #: (consumer, result) of each consumer call that did not succeed, in order.
        self.unsuccessful: tuple[tuple[Consumer, CallResult], ...] = ()
        self._state: dict[str, Any] | None = None
        self._keep_alives: list[KeepAlive] | None = None
        self._leases: list[_Lease] | None = None

    @property
    def queue(self) -> str:
        """Return the name of the queue the message came from."""
        return self.consuming.queue

    @property
    def dispatcher(self) -> object:
        """Return the dispatcher handling it."""
        return self.consuming.dispatcher

    @property
    def visibility_timeout(self) -> float:
        """Return the visibility timeout (seconds) the loop keeps the message hidden for."""
        return self.consuming.visibility_timeout

    def stopping(self) -> bool:
        """Return whether the loop was told to stop (long waits should end early)."""
        return self.consuming.stopping()

    @property
    def state(self) -> dict[str, Any]:
        """Return a dict middleware may use to share data across the hooks of this message."""
        if self._state is None:
            self._state = {}
        return self._state

    def report(self, error: BaseException) -> None:
        """Tell the loop's ``on_exception`` hook about an error a handler raised."""
        hook = self.consuming.on_exception
        if hook is not None:
            hook(error)

    def keep_alive(self, renew: KeepAlive, *, lease: float | None = None) -> Callable[[], None]:
        """Have ``renew(seconds)`` called while the message is handled; return its remover.

        For leases that must last as long as the handler runs (an idempotency
        claim, a saga lock). Without ``lease`` it is called with each
        visibility extension; with one, on its own schedule, every third of
        ``lease``, as ``renew(lease)``: a short lease, so that a worker that
        dies leaves it for seconds, not for a visibility timeout.
        """
        if lease is not None:
            if self._leases is None:
                self._leases = []
            leases, entry = self._leases, _Lease(renew, lease)
            leases.append(entry)
            return lambda: leases.remove(entry)
        if self._keep_alives is None:
            self._keep_alives = []
        renewals = self._keep_alives
        renewals.append(renew)
        return lambda: renewals.remove(renew)

    def renew(self, seconds: float) -> None:
        """Call every registered ``keep_alive`` renewal (the consume loop does this)."""
        for renew in tuple(self._keep_alives or ()):
            renew(seconds)

    def renew_leases(self, now: float) -> None:
        """Renew the leases due at ``now`` (``time.monotonic()``); the keeper calls it each tick."""
        for lease in tuple(self._leases or ()):
            if now >= lease.due:
                lease.due = now + lease.seconds / 3
                lease.renew(lease.seconds)


class _Lease:
    """A ``keep_alive`` renewal on its own schedule."""

    __slots__ = ("due", "renew", "seconds")

    def __init__(self, renew: KeepAlive, seconds: float) -> None:
        self.renew = renew
        self.seconds = seconds
        self.due = time.monotonic() + seconds / 3


class ConsumerCall:
    """The scope of one consumer handling one message."""

    __slots__ = ("consumer", "handling")

    def __init__(self, handling: Handling, consumer: Consumer) -> None:
        self.handling = handling
        self.consumer = consumer

    @property
    def message(self) -> Message:
        """Return the message being handled."""
        return self.handling.message

    @property
    def event(self) -> Any:
        """Return the deserialized event."""
        return self.handling.event


class DestinationKind(enum.Enum):
    """Where a publish goes."""

    TOPIC = "topic"
    QUEUE = "queue"


@dataclass(frozen=True, slots=True)
class Destination:
    """A topic or a queue, chosen by the publisher's caller."""

    kind: DestinationKind
    name: str
    wrapper: QueueWrapper | TopicWrapper | None = None


@dataclass(slots=True)
class Publishing:
    """The scope of publishing one event.

    ``headers`` are the caller's extra headers (a middleware may add some in
    ``build_message``); ``message`` is set once built.
    """

    event: Any
    headers: dict[str, str | bytes]
    destination: Destination | None
    delay: float = 0.0
    publisher: Any = None
    message: Message | None = None


@dataclass(frozen=True, slots=True)
class HeldPublish:
    """One send kept back: the message, where it goes (by name) and its delay."""

    message: Message
    destination: Destination
    delay: float = 0.0


class HeldPublishes:
    """Sends kept back by ``hold_publishes``, in the order they were made."""

    def __init__(self) -> None:
        self._sends: list[tuple[HeldPublish, Callable[[], None]]] = []

    @property
    def messages(self) -> list[Message]:
        """Return the messages held so far."""
        return [held.message for held, _ in self._sends]

    @property
    def held(self) -> list[HeldPublish]:
        """Return the sends held so far, with where each goes: enough to send them later."""
        return [held for held, _ in self._sends]

    def hold(
        self,
        message: Message,
        send: Callable[[], None],
        destination: Destination | None = None,
        delay: float = 0.0,
    ) -> None:
        """Keep one send back (``destination``: by default, the topic of its manifest)."""
        where = destination or Destination(DestinationKind.TOPIC, message.manifest or "")
        self._sends.append((HeldPublish(message, where, delay), send))

    def release(self) -> list[Message]:
        """Send every held message now, in order; return them."""
        sent = []
        while self._sends:
            held, send = self._sends.pop(0)
            send()
            sent.append(held.message)
        return sent

    def after_last(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` right after the latest held send goes out; never, if discarded."""
        held, send = self._sends[-1]

        def send_then_call() -> None:
            send()
            callback()

        self._sends[-1] = (held, send_then_call)

    def discard(self) -> list[Message]:
        """Drop every held message unsent; return them."""
        dropped = self.messages
        self._sends.clear()
        return dropped


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
