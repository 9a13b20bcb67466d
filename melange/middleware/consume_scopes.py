"""The scopes of consuming that middleware wraps: the loop's, one message's, one consumer's."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from melange.models import Message

if TYPE_CHECKING:
    from melange.consumers import Consumer
    from melange.outcomes import CallResult

__all__ = ["ConsumerCall", "Consuming", "ExceptionHook", "Handling", "KeepAlive"]

#: Pushes a message's visibility (and its claims) this many seconds further.
KeepAlive = Callable[[float], None]
#: Told about each exception a handler raised (a consume loop's ``on_exception``).
ExceptionHook = Callable[[BaseException], None]


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
