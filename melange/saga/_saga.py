"""``Saga[State]``: the user's class of a business process: its state, listeners and verbs.

What a subclass declares is the domain: the state's type, the correlation of
each event, the listeners, and what they do through the verbs (``send``,
``publish``, ``request_timeout``, ``compensate``, ``complete``...). The
runtime that loads and saves instances, relays the outbox and retries
conflicts is a ``SagaRunner`` (``saga.runner``), which the dispatcher starts.
"""

from __future__ import annotations

import time
import typing
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from melange.consumers import Consumer, listener
from melange.exceptions import SagaError
from melange.models import Message
from melange.publishers import MessagePublisher
from melange.saga._records import SagaStatus
from melange.saga._runner import REPLY_TO, SAGA_TIMEOUT, STARTS, NotFound, SagaRunner
from melange.saga._scope import InstanceScope, current_scope, outgoing_to
from melange.saga._store import SagaStore

__all__ = ["REPLY_TO", "RESERVED_NAMES", "SAGA_TIMEOUT", "NotFound", "Saga", "starts"]

State = TypeVar("State")
_F = TypeVar("_F", bound=Callable[..., Any])

#: What ``Saga`` itself defines for a subclass to use, never to redefine
#: (``new_state`` and the class settings above are for overriding).
RESERVED_NAMES = frozenset(
    {
        "cancel_timeout",
        "close",
        "compensate",
        "complete",
        "fail",
        "handle",
        "publish",
        "publisher",
        "queue",
        "request_timeout",
        "runner",
        "saga_id",
        "send",
        "send_due",
        "state",
        "stats",
        "status",
        "store",
    }
)


def starts(func: _F) -> _F:
    """Mark a ``Saga`` listener as a starter: with no instance for its key, it creates one."""
    setattr(func, STARTS, True)
    return listener(func)


class Saga(Consumer, Generic[State]):
    """A business process across services, one instance per correlation key.

    Subclass ``Saga[MyState]`` (a pydantic model or a dataclass that can be
    built with no arguments), declare ``correlation`` (event class -> the name
    of its attribute holding the key, or a function of the event), and write
    listeners: ``@starts`` ones may create the instance, ``@listener`` ones
    only find it. In a handler, ``self.state`` is the instance's state; what
    ``send``, ``publish`` and ``request_timeout`` ask for is stored with the
    new state in one write and leaves only after it (a saga outbox).

    A message carrying this saga type's ``saga_id`` header (replies inherit
    it from the command they answer) is routed by it and never starts an
    instance. A redelivered message is not applied twice: what it had sent
    and had not left is sent again, with the same message ids.
    """

    #: The name instances are stored under; the class name by default.
    saga_type: ClassVar[str]
    #: Event class -> attribute name (or function) giving its correlation key.
    correlation: ClassVar[Mapping[type, str | Callable[[Any], object]]] = {}
    not_found: ClassVar[NotFound] = NotFound.RETRY
    #: Seconds before an event for no instance comes again (``NotFound.RETRY``).
    retry_later_seconds: ClassVar[float] = 2.0
    #: Deliveries of an event for no instance before it is dead-lettered.
    not_found_retries: ClassVar[int] = 10
    #: Loads and saves tried when other workers keep saving the same instance.
    conflict_attempts: ClassVar[int] = 5
    #: Ids of handled messages each instance remembers.
    remember_handled: ClassVar[int] = 1000
    #: Timeline steps each instance keeps (the newest).
    remember_steps: ClassVar[int] = 500
    #: Seconds a finished instance is kept for inspection.
    retention_seconds: ClassVar[float] = 7 * 86_400.0
    state_type: ClassVar[type]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        clashes = sorted(RESERVED_NAMES & set(vars(cls)))
        if clashes:
            raise SagaError(
                f"{cls.__qualname__} defines {', '.join(clashes)}: reserved by Saga"
                " (docs/sagas.md, 'Reserved names'); rename it"
            )
        if "saga_type" not in vars(cls):
            cls.saga_type = cls.__name__
        for base in getattr(cls, "__orig_bases__", ()):
            args = typing.get_args(base)
            if typing.get_origin(base) is Saga and args and isinstance(args[0], type):
                cls.state_type = args[0]

    def __init__(
        self,
        store: SagaStore,
        publisher: MessagePublisher,
        *,
        queue: str,
        consumer_id: str | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        super().__init__(consumer_id=consumer_id or f"saga:{self.saga_type}")
        if not hasattr(type(self), "state_type"):
            raise SagaError(f"{type(self).__qualname__} must subclass Saga[State]")
        #: The runtime: store, outbox relay, timeouts, conflict retries.
        self.runner = SagaRunner(self, store, publisher, queue=queue, poll_interval=poll_interval)
        self.runtime = self.runner

    # -- inside a handler ---------------------------------------------------------

    @property
    def state(self) -> State:
        """Return the state of the instance being handled."""
        state: State = self._current().state
        return state

    @property
    def saga_id(self) -> str:
        """Return the id of the instance being handled."""
        return self._current().record.saga_id

    @property
    def status(self) -> SagaStatus:
        """Return the status of the instance being handled."""
        return self._current().status

    def send(
        self,
        command: Any,
        *,
        queue: str | None = None,
        topic: str | None = None,
        headers: Mapping[str, Any] | None = None,
        compensate_with: Any = None,
    ) -> Message:
        """Send a command (or event) once this handler's state is saved; return its message.

        ``compensate_with`` is the command that undoes it: ``compensate()``
        sends the undos, newest first.
        """
        scope = self._current()
        message = self.runner.message(scope, command, headers)
        scope.outgoing.append(outgoing_to(message, queue, topic, due_at=time.time()))
        scope.note(f"sent {type(command).__name__} to {queue or topic or message.manifest}")
        if compensate_with is not None:
            undo = self.runner.message(scope, compensate_with, headers)
            scope.compensations.append(outgoing_to(undo, queue, topic, due_at=time.time()))
        return message

    def publish(self, event: Any, *, topic: str | None = None) -> Message:
        """Publish an event (to its manifest's topic by default) once the state is saved."""
        return self.send(event, topic=topic)

    def request_timeout(self, event: Any, *, after: float) -> str:
        """Deliver ``event`` to this instance in ``after`` seconds; return its token.

        Durable: the backend delays it when it can delay that long, otherwise
        the store keeps it until it is due. A timeout that was cancelled, or
        reaches a finished instance, is dropped (and counted in ``stats``).
        """
        scope = self._current()
        token = uuid.uuid4().hex
        message = self.runner.message(scope, event, {SAGA_TIMEOUT: token})
        longest = self.runner.max_delay
        fits = longest is None or after <= longest
        due_at = time.time() + (0.0 if fits else after)
        delay = after if fits else 0.0
        scope.outgoing.append(
            outgoing_to(message, self.runner.queue, None, delay=delay, due_at=due_at)
        )
        scope.timeouts[token] = type(event).__name__
        scope.note(f"timeout {type(event).__name__} requested in {after:g} s")
        return token

    def cancel_timeout(self, token: str) -> None:
        """Cancel a timeout requested earlier: when it arrives, it is dropped."""
        scope = self._current()
        name = scope.timeouts.pop(token, None)
        if name is not None:
            scope.note(f"timeout {name} cancelled")

    def compensate(self) -> None:
        """Send every recorded undo, newest first, and mark the instance compensating."""
        scope = self._current()
        scope.status = SagaStatus.COMPENSATING
        for undo in reversed(scope.compensations):
            scope.outgoing.append(undo)
            scope.note(f"compensating: sent {undo.built.manifest} to {undo.where.name}")
        scope.compensations.clear()

    def complete(self) -> None:
        """Finish the instance: later events for it are ignored, its timeouts dropped."""
        self._finish(SagaStatus.COMPLETED, "completed")

    def fail(self, reason: str) -> None:
        """Finish the instance as failed, saying why."""
        self._finish(SagaStatus.FAILED, f"failed: {reason}")

    def _finish(self, status: SagaStatus, what: str) -> None:
        scope = self._current()
        scope.status = status
        scope.timeouts.clear()
        scope.note(what)

    def new_state(self, event: Any) -> State:
        """Return the state a starter's new instance begins with (override to use the event)."""
        state: State = self.state_type()
        return state

    def _current(self) -> InstanceScope:
        scope = current_scope()
        if scope is None or scope.record.saga_type != self.saga_type:
            raise SagaError("only a saga's handler, while it runs, can use its state and send")
        return scope

    # -- the runner's, for the dispatcher ---------------------------------------------

    def handle(self, event: Any, message: Message) -> None:
        """Apply one event to its instance (``SagaRunner.handle``)."""
        self.runner.handle(event, message)

    @property
    def store(self) -> SagaStore:
        """Return the runner's store."""
        return self.runner.store

    @property
    def publisher(self) -> MessagePublisher:
        """Return the runner's publisher."""
        return self.runner.publisher

    @property
    def queue(self) -> str:
        """Return the queue the saga consumes, where replies come."""
        return self.runner.queue

    @property
    def stats(self) -> Counter[str]:
        """Return the runner's counts (started, conflicts, redelivered...)."""
        return self.runner.stats

    def send_due(self, now: float | None = None) -> int:
        """Send what is due of any instance (``SagaRunner.send_due``)."""
        return self.runner.send_due(now)

    def close(self) -> None:
        """Stop the runner's poller of due messages (the store and publisher stay open)."""
        self.runner.close()
