"""``IdempotencyMiddleware``: each consumer once per message, with claims in a store.

The claim rules and the store-outage retries here are shared with the async
twin (``melange.middleware.idempotency_async``).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from melange.exceptions import IdempotencyError
from melange.idempotency.base import Claim, IdempotencyStore
from melange.middleware.base import Middleware
from melange.middleware.consume_scopes import ConsumerCall, Handling
from melange.outcomes import CallResult

__all__ = [
    "UNAVAILABLE",
    "IdempotencyMiddleware",
    "StoreRetry",
    "claim_refusal",
    "report_settling",
]

_log = logging.getLogger("melange.idempotency")
_T = TypeVar("_T")


class _Unavailable(enum.Enum):
    UNAVAILABLE = "unavailable"


_UNAVAILABLE = _Unavailable.UNAVAILABLE
#: What a store operation that stayed down returns instead of its result.
UNAVAILABLE = _UNAVAILABLE


class IdempotencyMiddleware(Middleware):
    """Runs each consumer once per message, whatever the redeliveries.

    A claim that finds the message done skips the consumer; one that finds it
    in progress elsewhere defers the message for the claim's lease (released,
    to come again once that claim has ended). The lease is the store's
    ``lease_seconds`` (10 s by default) or the visibility timeout if that is
    shorter, renewed every third of it by the loop's keeper while the handler
    runs: a worker killed mid-handler holds its message up for seconds, not
    for a long visibility timeout, and its claim never outlasts the message's
    return. A store error is retried in place with backoff,
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
        # Never longer than the visibility: a dead worker's claim must not outlast its
        # message's return, or each retry would spend a receive towards the DLQ.
        lease = min(store.lease_seconds, handling.visibility_timeout)
        claim = self._retrying(handling, lambda: store.claim(consumer_id, message_id, lease))
        refused = claim_refusal(claim, lease)
        if refused is not None:
            return refused
        stop_renewing = handling.keep_alive(
            lambda seconds: store.renew(consumer_id, message_id, seconds), lease=lease
        )
        try:
            result = call_next()
        finally:
            stop_renewing()
        if result.succeeded:
            done = self._retrying(handling, lambda: store.complete(consumer_id, message_id))
        else:
            done = self._retrying(handling, lambda: store.release(consumer_id, message_id))
        report_settling(result, done, message_id)
        return result

    def _retrying(self, handling: Handling, operation: Callable[[], _T]) -> _T | _Unavailable:
        """Return ``operation()``, retried on store errors; ``_UNAVAILABLE`` if it stayed down."""
        schedule = StoreRetry(self.store_retry_seconds)
        while True:
            try:
                return operation()
            except IdempotencyError as e:
                if schedule.gives_up(handling, e):
                    return _UNAVAILABLE
            time.sleep(schedule.next_pause())


def claim_refusal(claim: object, lease: float) -> CallResult | None:
    """Return the result of a consumer call its claim forbids, or ``None`` to run it."""
    if claim is _UNAVAILABLE:
        return CallResult.defer(lease, "idempotency store unavailable")
    if claim is Claim.DONE:
        return CallResult.skip("duplicate")
    if claim is Claim.IN_PROGRESS:
        return CallResult.defer(lease, "in progress in another worker")
    return None


def report_settling(result: CallResult, settled: object, message_id: str) -> None:
    """Log a claim that could not be completed or released (the store stayed down)."""
    if settled is not _UNAVAILABLE:
        return
    if result.succeeded:
        # Handled: acknowledging it is right; releasing it would run it again.
        _log.warning("handled %s but could not record it as done", message_id)
    else:
        _log.warning("could not release the claim on %s; it ends with its lease", message_id)


class StoreRetry:
    """When to try a failing store again: doubling pauses, for up to ``seconds`` in all."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.pause = 0.05

    def gives_up(self, handling: Handling, error: IdempotencyError) -> bool:
        """Return whether to stop trying (out of time, or the loop is stopping); log it."""
        if time.monotonic() + self.pause > self.deadline or handling.stopping():
            _log.warning("idempotency store unavailable: %s", error)
            return True
        _log.info("idempotency store error, retrying in %.2fs: %s", self.pause, error)
        return False

    def next_pause(self) -> float:
        """Return the pause before the next try (and double the one after)."""
        pause, self.pause = self.pause, min(self.pause * 2, 2.0)
        return pause
