"""``SagaRunner``: a saga's runtime: its store, outbox relay, timeouts and conflict retries.

The user's ``Saga`` subclass holds the state's type, the listeners and the
verbs; the runner locates each event's instance, runs the listener on it,
saves the new state with what it sends in one write, sends that after the
save, and polls the store for what is due later. The dispatcher that has the
saga attached starts the runner and closes it.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from melange._trace_headers import is_trace_value
from melange.consumers import Consumer
from melange.exceptions import (
    DeferMessage,
    RejectMessage,
    SagaConflictError,
    SagaExistsError,
    SerializationError,
)
from melange.middleware import hold_publishes
from melange.models import SAGA_ID, SAGA_TYPE, Message
from melange.outgoing import Destination, Outgoing
from melange.publishers import MessagePublisher
from melange.saga import _signals as signals
from melange.saga._records import SagaRecord
from melange.saga._scope import InstanceScope, entered_scope
from melange.saga._store import SagaStore
from melange.serializers import SerializerRegistry
from melange.serializers.versions import version_of

if TYPE_CHECKING:
    from melange.outbox import Relay
    from melange.saga._saga import Saga

__all__ = ["REPLY_TO", "SAGA_TIMEOUT", "STARTS", "NotFound", "SagaRunner"]

#: The header of a timeout message: the token the instance keeps while it is live.
SAGA_TIMEOUT = "saga_timeout"
#: The header of what a saga sends: the queue it consumes, where a reply may go.
REPLY_TO = "reply_to"
STARTS = "__melange_saga_starts__"
_IDS = uuid.UUID("6d656c61-6e67-6553-6167-614964733031")  # namespace of outgoing ids
_log = logging.getLogger("melange.saga")


class NotFound(enum.Enum):
    """What happens to an event for no instance, whose listener does not start one."""

    #: Acknowledge it; log a warning and send ``saga_not_found``.
    DISCARD = "discard"
    #: Dead-letter it with the reason.
    DEAD_LETTER = "dead_letter"
    #: Deliver it again later (it may have overtaken its starter); dead-letter it
    #: after ``not_found_retries`` deliveries.
    RETRY = "retry"


class SagaRunner:
    """Runs one saga: events in, state saved with its outgoing messages, those sent after."""

    def __init__(
        self,
        saga: Saga[Any],
        store: SagaStore,
        publisher: MessagePublisher,
        *,
        queue: str,
        poll_interval: float = 1.0,
    ) -> None:
        self.saga = saga
        self.saga_type = saga.saga_type
        self.store = store
        self.publisher = publisher
        self.queue = queue
        self.poll_interval = poll_interval
        #: Counts of what happened: started, conflicts, redelivered, not_found...
        self.stats: Counter[str] = Counter()
        #: The longest delay the backend takes (``None``: any); longer timeouts wait in the store.
        self.max_delay = publisher.backend.max_delay_seconds
        self._states = SerializerRegistry()
        self._states.register_event_type(saga.state_type)
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._poller_lock = threading.Lock()
        self._relay: Relay | None = None

    def handle(self, event: Any, message: Message) -> None:
        """Apply one event to its instance, save it with what it sends, then send that.

        Raises:
            DeferMessage: the instance kept changing under us, or it does not
                exist yet (``NotFound.RETRY``).
            RejectMessage: the event cannot be applied (no correlation value,
                an unknown ``saga_id``, a state that no longer validates).
        """
        self._start_once()
        saga = self.saga
        found = saga.handler_for(type(event))
        if found is None:
            raise LookupError(f"{type(saga).__qualname__} has no listener for {type(event)!r}")
        starter = bool(getattr(getattr(found[0], "__func__", found[0]), STARTS, False))
        for _ in range(saga.conflict_attempts):
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
        raise DeferMessage(f"{self.saga_type} kept changing under us", saga.retry_later_seconds)

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
        correlation = self.saga.correlation
        return any(k in correlation for k in type(event).__mro__)

    def _key_of(self, event: Any) -> str:
        correlation = self.saga.correlation
        rule = next((correlation[k] for k in type(event).__mro__ if k in correlation), None)
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
        saga = self.saga
        policy = saga.not_found
        if policy is NotFound.RETRY and message.receive_count <= saga.not_found_retries:
            raise DeferMessage(f"{what} (yet)", saga.retry_later_seconds)
        if policy is NotFound.DISCARD:
            _log.warning("discarded %s", what)
            signals.saga_not_found.send(self.saga, message=message, event=event, key=key)
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
            signals.saga_message_ignored.send(self.saga, message=message, record=record)
            return True
        return False

    def _apply(self, record: SagaRecord, event: Any, message: Message) -> list[Outgoing] | None:
        """Run the handler on a fresh copy of the state and save it with what it sends.

        Returns what it sends, or ``None`` when someone else saved the instance first.
        """
        created = record.version == 0
        scope = InstanceScope(
            record,
            self.saga.new_state(event) if created else self._read_state(record),
            message,
            record.status,
            compensations=list(record.compensations),
            timeouts=dict(record.timeouts),
        )
        token = message.text_header(SAGA_TIMEOUT)
        if token is not None:
            scope.timeouts.pop(token, None)
        scope.note(f"{'started by' if created else 'handled'} {type(event).__name__}")
        entered = entered_scope.set(scope)
        try:
            with hold_publishes() as held:  # a plain publish in a handler joins the outbox too
                Consumer.handle(self.saga, event, message)
                scope.outgoing.extend(self._adopted(scope, item) for item in held.held)
        finally:
            entered_scope.reset(entered)
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
            signals.saga_started.send(self.saga, record=saved)
        if saved.status.finished and not record.status.finished:
            self.stats[saved.status.value] += 1
            signals.saga_finished.send(self.saga, record=saved)
        return scope.outgoing

    def _record_of(self, scope: InstanceScope) -> SagaRecord:
        content, manifest, serializer_id = self._states.serialize(scope.state)
        record = scope.record
        handled = (*record.handled, scope.message.message_id)[-self.saga.remember_handled :]
        return record.with_changes(
            state=content,
            state_manifest=manifest,
            state_serializer=serializer_id,
            state_version=version_of(type(scope.state)),
            status=scope.status,
            version=record.version + 1,
            handled=handled,
            compensations=tuple(scope.compensations),
            timeouts=scope.timeouts,
            timeline=(*record.timeline, *scope.steps)[-self.saga.remember_steps :],
            updated_at=time.time(),
        )

    def _read_state(self, record: SagaRecord) -> Any:
        try:
            return self._states.deserialize(
                record.state,
                record.state_manifest,
                record.state_serializer,
                str(record.state_version),  # upcast by the registry's upcasters if older
            )
        except SerializationError as e:
            raise RejectMessage(
                f"the stored state of {self.saga_type} {record.key!r} no longer reads: {e}"
            ) from e

    def message(
        self, scope: InstanceScope, event: Any, headers: Mapping[str, Any] | None
    ) -> Message:
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

    def _adopted(self, scope: InstanceScope, held: Outgoing) -> Outgoing:
        """Return a publish the handler made directly as an outgoing message of the instance."""
        message = held.built
        headers = {
            REPLY_TO: self.queue,
            **message.metadata,
            SAGA_ID: scope.record.saga_id,
            SAGA_TYPE: self.saga_type,
        }
        where = held.where
        scope.note(f"sent {message.manifest} to {where.name}")
        return Outgoing(
            destination=Destination(where.kind, where.name),
            delay=held.delay,
            message=message.with_changes(metadata=headers),
            due_at=time.time(),
        )

    # -- sending what was saved ---------------------------------------------------------

    def _after_commit(self, saga_id: str, outgoing: list[Outgoing] | None) -> None:
        """Send what is due now (``None``: whatever the store still holds for the instance).

        The event's effect is saved whatever happens here: a send that fails
        is left in the outbox for the poller, and the event is done. A store
        writing to the service's outbox sends nothing here: its relay does.
        """
        if self.store.outbox_url is not None:
            if self._relay is not None:
                self._relay.wake()  # it sends what this commit added, now
            return
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

    def _send(self, saga_id: str, pending: list[Outgoing]) -> None:
        sent: list[str] = []
        try:
            for item in pending:
                self.publisher.deliver(item)
                sent.append(item.built.message_id)
        finally:
            if sent:
                self.store.sent(self.saga_type, saga_id, sent)

    def send_due(self, now: float | None = None) -> int:
        """Send outgoing messages of any instance that are due (timeouts, stragglers)."""
        due = self.store.due(self.saga_type, time.time() if now is None else now)
        by_instance: dict[str, list[Outgoing]] = {}
        for saga_id, item in due:
            by_instance.setdefault(saga_id, []).append(item)
        for saga_id, items in by_instance.items():
            self._send(saga_id, items)
        return len(due)

    def start(self) -> None:
        """Start polling for due messages (not with ``poll_interval`` 0); again after ``close``.

        With a store writing to the service's outbox, start its ``Relay`` too.
        """
        self._start_relay()
        if self.poll_interval <= 0:
            return
        with self._poller_lock:
            if self._poller is not None and not self._stopping.is_set():
                return  # running
            if self._poller is not None:
                self._poller.join(timeout=10)
            self._stopping.clear()
            self._poller = threading.Thread(
                target=self._poll, name=f"melange-saga-{self.saga_type}", daemon=True
            )
            self._poller.start()

    def _start_relay(self) -> None:
        url = self.store.outbox_url
        if url is None:
            return
        with self._poller_lock:
            if self._relay is None:
                from melange.outbox import Relay

                # Woken after each of this runner's commits (``_after_commit``).
                self._relay = Relay(url, self.publisher.backend)
            self._relay.start()

    def _start_once(self) -> None:
        """Start the poller on the first event, for a saga no dispatcher attached."""
        if self._poller is None or (self.store.outbox_url is not None and self._relay is None):
            self.start()

    def _poll(self) -> None:
        purged_at = 0.0
        while not self._stopping.wait(self.poll_interval):
            try:
                # Only what is overdue by a poll: the handler that saved it sends it itself.
                self.send_due(time.time() - self.poll_interval)
                if time.monotonic() - purged_at > 60:
                    purged_at = time.monotonic()
                    self.store.purge(
                        self.saga_type, finished_before=time.time() - self.saga.retention_seconds
                    )
            except Exception:  # a store or broker outage: try again next time
                _log.exception("%s: sending due messages failed; retrying", self.saga_type)

    def close(self) -> None:
        """Stop the poller of due messages and the relay (the store and publisher stay open)."""
        self._stopping.set()
        poller = self._poller
        if poller is not None:
            poller.join(timeout=10)
        with self._poller_lock:
            relay, self._relay = self._relay, None
        if relay is not None:
            relay.close()
