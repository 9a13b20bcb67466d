"""``Saga[State]``: a consumer whose state is loaded before, and saved after, each event."""

from __future__ import annotations

import enum
import logging
import threading
import time
import typing
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from melange._trace_headers import is_trace_value
from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer, listener
from melange.exceptions import (
    DeferMessage,
    RejectMessage,
    SagaConflictError,
    SagaError,
    SagaExistsError,
    SerializationError,
)
from melange.middleware import DestinationKind, HeldPublish, hold_publishes
from melange.models import SAGA_ID, SAGA_TYPE, Message
from melange.publishers import MessagePublisher
from melange.saga import _signals as signals
from melange.saga._records import PendingMessage, SagaRecord, SagaStatus, Step
from melange.saga._store import SagaStore
from melange.serializers import SerializerRegistry

__all__ = ["REPLY_TO", "SAGA_TIMEOUT", "NotFound", "Saga", "starts"]

State = TypeVar("State")
_F = TypeVar("_F", bound=Callable[..., Any])

#: The header of a timeout message: the token the instance keeps while it is live.
SAGA_TIMEOUT = "saga_timeout"
#: The header of what a saga sends: the queue it consumes, where a reply may go.
REPLY_TO = "reply_to"
_STARTS = "__melange_saga_starts__"
_IDS = uuid.UUID("6d656c61-6e67-6553-6167-614964733031")  # namespace of outgoing ids
_log = logging.getLogger("melange.saga")


def starts(func: _F) -> _F:
    """Mark a ``Saga`` listener as a starter: with no instance for its key, it creates one."""
    setattr(func, _STARTS, True)
    return listener(func)


class NotFound(enum.Enum):
    """What happens to an event for no instance, whose listener does not start one."""

    #: Acknowledge it; log a warning and send ``saga_not_found``.
    DISCARD = "discard"
    #: Dead-letter it with the reason.
    DEAD_LETTER = "dead_letter"
    #: Deliver it again later (it may have overtaken its starter); dead-letter it
    #: after ``not_found_retries`` deliveries.
    RETRY = "retry"


@dataclass
class _Scope:
    """The instance one handler runs on, and what it decided so far."""

    record: SagaRecord
    state: Any
    message: Message
    status: SagaStatus
    outgoing: list[PendingMessage] = field(default_factory=list)
    compensations: list[PendingMessage] = field(default_factory=list)
    timeouts: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    sequence: int = 0

    def note(self, what: str) -> None:
        self.steps.append(Step(time.time(), what))


_scope: ContextVar[_Scope | None] = ContextVar("melange_saga_scope", default=None)


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
        self.store = store
        self.publisher = publisher
        self.queue = queue
        self.poll_interval = poll_interval
        self.stats: Counter[str] = Counter()
        self._states = SerializerRegistry()
        self._states.register_event_type(self.state_type)
        self._max_delay = _longest_delay(publisher.backend)
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._poller_lock = threading.Lock()

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
        message = self._message(scope, command, headers)
        scope.outgoing.append(self._pending(message, queue, topic))
        scope.note(f"sent {type(command).__name__} to {queue or topic or message.manifest}")
        if compensate_with is not None:
            undo = self._message(scope, compensate_with, headers)
            scope.compensations.append(self._pending(undo, queue, topic))
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
        message = self._message(scope, event, {SAGA_TIMEOUT: token})
        fits = self._max_delay is None or after <= self._max_delay
        due_at = time.time() + (0.0 if fits else after)
        delay = after if fits else 0.0
        scope.outgoing.append(
            PendingMessage(message, DestinationKind.QUEUE, self.queue, delay, due_at)
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
            scope.note(f"compensating: sent {undo.message.manifest} to {undo.destination}")
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

    # -- handling ---------------------------------------------------------------------

    def handle(self, event: Any, message: Message) -> None:
        """Apply one event to its instance, save it with what it sends, then send that.

        Raises:
            DeferMessage: the instance kept changing under us, or it does not
                exist yet (``NotFound.RETRY``).
            RejectMessage: the event cannot be applied (no correlation value,
                an unknown ``saga_id``, a state that no longer validates).
        """
        self._start_polling()
        found = self.handler_for(type(event))
        if found is None:
            raise LookupError(f"{type(self).__qualname__} has no listener for {type(event)!r}")
        starter = bool(getattr(getattr(found[0], "__func__", found[0]), _STARTS, False))
        for _ in range(self.conflict_attempts):
            record = self._locate(event, message, starter)
            if record is None:
                return  # discarded, and reported
            if message.message_id in record.handled:
                self.stats["redelivered"] += 1
                self._after_commit(record.saga_id, None)  # what had not left, leaves now
                return
            if self._ignored(record, message):
                return
            outgoing = self._apply(record, event, message)
            if outgoing is not None:
                self._after_commit(record.saga_id, outgoing)
                return
        self.stats["conflicts_deferred"] += 1
        raise DeferMessage(f"{self.saga_type} kept changing under us", self.retry_later_seconds)

    def _locate(self, event: Any, message: Message, starter: bool) -> SagaRecord | None:
        """Return the event's instance (a new one, version 0, for a starter), or settle it.

        A ``saga_id`` header comes off the wire. It picks the instance it names
        (a reply whose key is not the saga's) unless that instance does not
        exist or the event's correlation key names another one: then the key does.
        """
        saga_id = message.text_header(SAGA_ID)
        if message.metadata.get(SAGA_TYPE) != self.saga_type or not is_trace_value(saga_id):
            saga_id = None
        named = None if saga_id is None else self.store.load(self.saga_type, saga_id)
        if saga_id is not None and not self._correlates(event):
            if named is None:
                self._not_found(event, message, saga_id)
            return named
        key = self._key_of(event)
        if named is not None and named.key == key:
            return named
        record = self.store.find(self.saga_type, key)
        if named is not None and (record is None or record.saga_id == named.saga_id):
            return named
        if saga_id is not None:
            self._mismatched(event, message, saga_id, key)
        if record is not None:
            return record
        if starter:
            now = time.time()
            return SagaRecord(self.saga_type, uuid.uuid4().hex, key, "", created_at=now)
        self._not_found(event, message, key)
        return None

    def _mismatched(self, event: Any, message: Message, saga_id: str, key: str) -> None:
        self.stats["saga_id_mismatch"] += 1
        _log.warning(
            "%s %s names %s instance %r, which is not its instance: found by its key %r instead",
            type(event).__name__,
            message.message_id,
            self.saga_type,
            saga_id[:80],
            key,
        )

    def _correlates(self, event: Any) -> bool:
        """Whether this saga declares a correlation for the event's class."""
        return any(k in self.correlation for k in type(event).__mro__)

    def _key_of(self, event: Any) -> str:
        rule = next(
            (self.correlation[k] for k in type(event).__mro__ if k in self.correlation), None
        )
        name = type(event).__name__
        if rule is None:
            raise RejectMessage(f"{self.saga_type} declares no correlation for {name}")
        value = rule(event) if callable(rule) else getattr(event, rule, None)
        if value is None or value == "":
            raise RejectMessage(f"{name} has no value for the correlation of {self.saga_type}")
        return str(value)

    def _not_found(self, event: Any, message: Message, key: str) -> None:
        what = f"{type(event).__name__} for {self.saga_type} {key!r}: no such instance"
        self.stats["not_found"] += 1
        policy = self.not_found
        if policy is NotFound.RETRY and message.receive_count <= self.not_found_retries:
            raise DeferMessage(f"{what} (yet)", self.retry_later_seconds)
        if policy is NotFound.DISCARD:
            _log.warning("discarded %s", what)
            signals.saga_not_found.send(self, message=message, event=event, key=key)
            return
        raise RejectMessage(what)

    def _ignored(self, record: SagaRecord, message: Message) -> bool:
        """Drop timeouts no longer wanted and events for finished instances (counted)."""
        token = message.text_header(SAGA_TIMEOUT)
        if token is not None and token not in record.timeouts:
            self.stats["timeouts_dropped"] += 1
            _log.info("dropped a cancelled or stale timeout of %s %s", self.saga_type, record.key)
            return True
        if record.status.finished:
            self.stats["ignored_after_finish"] += 1
            _log.info("ignored %s for finished %s %s", message.manifest, self.saga_type, record.key)
            signals.saga_message_ignored.send(self, message=message, record=record)
            return True
        return False

    def _apply(
        self, record: SagaRecord, event: Any, message: Message
    ) -> list[PendingMessage] | None:
        """Run the handler on a fresh copy of the state and save it with what it sends.

        Returns what it sends, or ``None`` when someone else saved the instance first.
        """
        created = record.version == 0
        scope = _Scope(
            record,
            self.new_state(event) if created else self._read_state(record),
            message,
            record.status,
            compensations=list(record.compensations),
            timeouts=dict(record.timeouts),
        )
        token = message.text_header(SAGA_TIMEOUT)
        if token is not None:
            scope.timeouts.pop(token, None)
        scope.note(f"{'started by' if created else 'handled'} {type(event).__name__}")
        entered = _scope.set(scope)
        try:
            with hold_publishes() as held:  # a plain publish in a handler joins the outbox too
                super().handle(event, message)
                scope.outgoing.extend(self._adopted(scope, item) for item in held.held)
        finally:
            _scope.reset(entered)
        saved = self._record_of(scope)
        try:
            if created:
                self.store.create(saved, scope.outgoing)
            else:
                self.store.save(saved, scope.outgoing)
        except (SagaConflictError, SagaExistsError):
            self.stats["conflicts"] += 1
            return None
        if created:
            self.stats["started"] += 1
            signals.saga_started.send(self, record=saved)
        if saved.status.finished and not record.status.finished:
            self.stats[saved.status.value] += 1
            signals.saga_finished.send(self, record=saved)
        return scope.outgoing

    def _record_of(self, scope: _Scope) -> SagaRecord:
        content, manifest, serializer_id = self._states.serialize(scope.state)
        record = scope.record
        handled = (*record.handled, scope.message.message_id)[-self.remember_handled :]
        return record.with_changes(
            state=content,
            state_manifest=manifest,
            state_serializer=serializer_id,
            status=scope.status,
            version=record.version + 1,
            handled=handled,
            compensations=tuple(scope.compensations),
            timeouts=scope.timeouts,
            timeline=(*record.timeline, *scope.steps)[-self.remember_steps :],
            updated_at=time.time(),
        )

    def _read_state(self, record: SagaRecord) -> Any:
        try:
            return self._states.deserialize(
                record.state, record.state_manifest, record.state_serializer
            )
        except SerializationError as e:
            raise RejectMessage(
                f"the stored state of {self.saga_type} {record.key!r} no longer reads: {e}"
            ) from e

    def _current(self) -> _Scope:
        scope = _scope.get()
        if scope is None or scope.record.saga_type != self.saga_type:
            raise SagaError("only a saga's handler, while it runs, can use its state and send")
        return scope

    def _message(self, scope: _Scope, event: Any, headers: Mapping[str, Any] | None) -> Message:
        """Build an outgoing message whose id is the same if this handler runs again."""
        scope.sequence += 1
        stable = uuid.uuid5(
            _IDS, f"{scope.record.saga_id}:{scope.message.message_id}:{scope.sequence}"
        )
        given = {
            REPLY_TO: self.queue,
            **(headers or {}),
            SAGA_ID: scope.record.saga_id,
            SAGA_TYPE: self.saga_type,
        }
        return self.publisher.build_message(event, given).with_changes(message_id=str(stable))

    def _adopted(self, scope: _Scope, held: HeldPublish) -> PendingMessage:
        """Return a publish the handler made directly as an outgoing message of the instance."""
        headers = {
            REPLY_TO: self.queue,
            **held.message.metadata,
            SAGA_ID: scope.record.saga_id,
            SAGA_TYPE: self.saga_type,
        }
        where = held.destination
        scope.note(f"sent {held.message.manifest} to {where.name}")
        return PendingMessage(
            held.message.with_changes(metadata=headers),
            where.kind,
            where.name,
            held.delay,
            due_at=time.time(),
        )

    def _pending(self, message: Message, queue: str | None, topic: str | None) -> PendingMessage:
        if queue is not None:
            return PendingMessage(message, DestinationKind.QUEUE, queue, due_at=time.time())
        return PendingMessage(
            message, DestinationKind.TOPIC, topic or message.manifest or "", due_at=time.time()
        )

    # -- sending what was saved ---------------------------------------------------------

    def _after_commit(self, saga_id: str, outgoing: list[PendingMessage] | None) -> None:
        """Send what is due now (``None``: whatever the store still holds for the instance).

        The event's effect is saved whatever happens here: a send that fails
        is left in the outbox for the poller, and the event is done.
        """
        try:
            now = time.time()
            if outgoing is None:
                outgoing = self.store.pending(self.saga_type, saga_id, due_by=now)
            self._send(saga_id, [item for item in outgoing if item.due_at <= now])
        except Exception:
            self.stats["sends_left_to_poller"] += 1
            _log.warning(
                "%s %s: sending after the save failed; the poller sends it",
                self.saga_type,
                saga_id,
                exc_info=True,
            )

    def _send(self, saga_id: str, pending: list[PendingMessage]) -> None:
        sent: list[str] = []
        try:
            for item in pending:
                if item.kind is DestinationKind.QUEUE:
                    self.publisher.send(item.message, queue=item.destination, delay=item.delay)
                else:
                    self.publisher.send(item.message, topic=item.destination)
                sent.append(item.message.message_id)
        finally:
            if sent:
                self.store.sent(self.saga_type, saga_id, sent)

    def send_due(self, now: float | None = None) -> int:
        """Send outgoing messages of any instance that are due (timeouts, stragglers)."""
        due = self.store.due(self.saga_type, time.time() if now is None else now)
        by_instance: dict[str, list[PendingMessage]] = {}
        for saga_id, item in due:
            by_instance.setdefault(saga_id, []).append(item)
        for saga_id, items in by_instance.items():
            self._send(saga_id, items)
        return len(due)

    def _start_polling(self) -> None:
        if self._poller is not None or self.poll_interval <= 0:
            return
        with self._poller_lock:
            if self._poller is None:
                self._poller = threading.Thread(
                    target=self._poll, name=f"melange-saga-{self.saga_type}", daemon=True
                )
                self._poller.start()

    def _poll(self) -> None:
        purged_at = 0.0
        while not self._stopping.wait(self.poll_interval):
            try:
                # Only what is overdue by a poll: the handler that saved it sends it itself.
                self.send_due(time.time() - self.poll_interval)
                if time.monotonic() - purged_at > 60:
                    purged_at = time.monotonic()
                    self.store.purge(
                        self.saga_type, finished_before=time.time() - self.retention_seconds
                    )
            except Exception:  # a store or broker outage: try again next time
                _log.exception("%s: sending due messages failed; retrying", self.saga_type)

    def close(self) -> None:
        """Stop the poller of due messages (the store and publisher stay open)."""
        self._stopping.set()
        poller = self._poller
        if poller is not None:
            poller.join(timeout=10)


def _longest_delay(backend: MessagingBackend) -> float | None:
    """Return the longest delay the backend delivers itself (``None``: any; 0: none at all)."""
    if type(backend).publish_delayed_to_queue is MessagingBackend.publish_delayed_to_queue:
        return 0.0  # the interface's default refuses delays: timeouts wait in the store
    longest: float | None = getattr(backend, "max_delay_seconds", None)
    return longest
