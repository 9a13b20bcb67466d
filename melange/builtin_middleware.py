"""The middleware melange itself runs: the message's scope (context, signals), idempotency."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from melange import signals
from melange.context import _current
from melange.exceptions import IdempotencyError
from melange.idempotency.base import Claim, IdempotencyStore
from melange.middleware import ConsumerCall, Handling, Middleware
from melange.outcomes import CallResult, Outcome, OutcomeKind

__all__ = ["IdempotencyMiddleware", "MessageScopeMiddleware"]

_log = logging.getLogger("melange.idempotency")
_T = TypeVar("_T")


class _Unavailable(enum.Enum):
    UNAVAILABLE = "unavailable"


_UNAVAILABLE = _Unavailable.UNAVAILABLE


_received = signals.message_received
_processed = signals.message_processed
_failed = signals.message_failed
_skipped = signals.message_skipped


class MessageScopeMiddleware(Middleware):
    """Makes the message current while it is handled, and sends the signals of its life.

    While the message is handled, ``melange.context.current_message()`` is
    it, so what its handlers publish carries its correlation. The blinker
    signals of ``melange.signals`` (received, processed, failed, skipped)
    are sent around it. One middleware for both, outermost: each layer
    costs every message a few calls.
    """

    def handle_message(self, handling: Handling, call_next: Callable[[], Outcome]) -> Outcome:
        if _received.receivers:
            _received.send(handling.dispatcher, message=handling.message, queue=handling.queue)
        token = _current.set(handling.message)
        try:
            outcome = call_next()
        finally:
            _current.reset(token)
        return self._after(handling, outcome)

    async def handle_message_async(
        self, handling: Handling, call_next: Callable[[], Awaitable[Outcome]]
    ) -> Outcome:
        if _received.receivers:
            _received.send(handling.dispatcher, message=handling.message, queue=handling.queue)
        token = _current.set(handling.message)
        try:
            outcome = await call_next()
        finally:
            _current.reset(token)
        return self._after(handling, outcome)

    def _after(self, handling: Handling, outcome: Outcome) -> Outcome:
        if handling.unsuccessful:
            self._unsuccessful(handling)
        kind = outcome.kind
        if kind is OutcomeKind.ACK:
            if _processed.receivers:
                _processed.send(
                    handling.dispatcher,
                    message=handling.message,
                    event=handling.event,
                    queue=handling.queue,
                )
        elif kind is OutcomeKind.SKIP and _skipped.receivers:
            _skipped.send(
                handling.dispatcher,
                message=handling.message,
                queue=handling.queue,
                reason=outcome.reason,
            )
        return outcome

    def _unsuccessful(self, handling: Handling) -> None:
        sender, message = handling.dispatcher, handling.message
        for consumer, result in handling.unsuccessful:
            if result.failed and _failed.receivers:
                _failed.send(sender, message=message, consumer=consumer, error=result.error)
            elif result.skipped and _skipped.receivers:
                _skipped.send(sender, message=message, consumer=consumer, reason=result.reason)


class IdempotencyMiddleware(Middleware):
    """Runs each consumer once per message, whatever the redeliveries.

    A claim that finds the message done skips the consumer; one that finds it
    in progress elsewhere defers the message (released, to come again once
    that claim has ended). The claim lasts the message's visibility timeout
    and is renewed with it. A store error is retried in place with backoff,
    for up to ``store_retry_seconds``, while the loop keeps the message
    hidden; then the message is released for later (or, after a success
    that could not be recorded, acknowledged). A store error never counts as
    a handler failure.
    """

    def __init__(self, store: IdempotencyStore, *, store_retry_seconds: float = 60.0) -> None:
        self.store = store
        self.store_retry_seconds = store_retry_seconds

    def call_consumer(self, call: ConsumerCall, call_next: Callable[[], CallResult]) -> CallResult:
        store, handling = self.store, call.handling
        consumer_id, message_id = call.consumer.consumer_id, call.message.message_id
        lease = handling.visibility_timeout
        claim = self._retrying(handling, lambda: store.claim(consumer_id, message_id, lease))
        if claim is _UNAVAILABLE:
            return CallResult.defer(lease, "idempotency store unavailable")
        if claim is Claim.DONE:
            return CallResult.skip("duplicate")
        if claim is Claim.IN_PROGRESS:
            return CallResult.defer(lease, "in progress in another worker")
        stop_renewing = handling.keep_alive(
            lambda seconds: store.renew(consumer_id, message_id, seconds)
        )
        try:
            result = call_next()
        finally:
            stop_renewing()
        if result.succeeded:
            if (
                self._retrying(handling, lambda: store.complete(consumer_id, message_id))
                is _UNAVAILABLE
            ):
                # Handled: acknowledging it is right; releasing it would run it again.
                _log.warning("handled %s but could not record it as done", message_id)
        elif (
            self._retrying(handling, lambda: store.release(consumer_id, message_id)) is _UNAVAILABLE
        ):
            _log.warning("could not release the claim on %s; it ends with its lease", message_id)
        return result

    def _retrying(self, handling: Handling, operation: Callable[[], _T]) -> _T | _Unavailable:
        """Return ``operation()``, retried on store errors; ``_UNAVAILABLE`` if it stayed down."""
        deadline = time.monotonic() + self.store_retry_seconds
        pause = 0.05
        while True:
            try:
                return operation()
            except IdempotencyError as e:
                if time.monotonic() + pause > deadline or handling.stopping():
                    _log.warning("idempotency store unavailable: %s", e)
                    return _UNAVAILABLE
                _log.info("idempotency store error, retrying in %.2fs: %s", pause, e)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
