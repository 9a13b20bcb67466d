"""Settling a decided message: acknowledge, release for later, dead-letter, or leave it.

The ``Settler`` turns an ``Outcome`` into broker calls (see
``melange.broker_calls``); the consume loop runs them on its backend. A
success needs none: its acknowledgement waits in ``HeldMessages`` and goes
out with others.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from melange.broker_calls import BrokerCall, BrokerSteps
from melange.consuming.holding import HeldMessages
from melange.consuming.queues import QueueBinding
from melange.exceptions import BackendError
from melange.models import Message
from melange.outcomes import Outcome, OutcomeKind
from melange.policies import AckPolicy, RetryPolicy

__all__ = ["OutcomeCounts", "Settler"]

_log = logging.getLogger("melange.dispatcher")


class OutcomeCounts:
    """Handled messages per outcome (acknowledged, retried, dead-lettered...); thread-safe."""

    def __init__(self) -> None:
        self._counts: Counter[OutcomeKind] = Counter()
        self._lock = threading.Lock()

    def add(self, kind: OutcomeKind) -> None:
        """Count one message that came to ``kind``."""
        with self._lock:
            self._counts[kind] += 1

    def __getitem__(self, kind: OutcomeKind) -> int:
        with self._lock:
            return self._counts[kind]

    def summary(self) -> str:
        """Return e.g. ``8 succeeded, 1 retried, 1 dead-lettered, 0 skipped``."""
        with self._lock:
            counts = dict(self._counts)
        parts = [
            (counts.get(OutcomeKind.ACK, 0), "succeeded"),
            (counts.get(OutcomeKind.RELEASE, 0), "retried"),
            (counts.get(OutcomeKind.DEAD_LETTER, 0), "dead-lettered"),
            (counts.get(OutcomeKind.SKIP, 0), "skipped"),
        ]
        kept = counts.get(OutcomeKind.KEEP, 0)
        if kept:
            parts.append((kept, "left to the handler"))
        return ", ".join(f"{n} {what}" for n, what in parts)


class Settler:
    """Applies outcomes to the broker for one dispatcher; counts them in ``outcomes``.

    ``redrive_limit`` is how many returns the broker's redrive policy takes
    to move a message it was left (twice the backend's max receive count).
    """

    def __init__(self, ack_policy: AckPolicy, retry: RetryPolicy, *, redrive_limit: int) -> None:
        self.ack_policy = ack_policy
        self.retry = retry
        self.redrive_limit = redrive_limit
        self.outcomes = OutcomeCounts()
        #: Acknowledged as received (``AckPolicy.BEFORE_HANDLE``): nothing is left to settle.
        self.acks_on_receipt = ack_policy is AckPolicy.BEFORE_HANDLE

    def settled_at_once(self, outcome: Outcome, message: Message, held: HeldMessages) -> bool:
        """Settle a success with no broker call (its ack waits in ``held``); else return False.

        Counts the outcome when it returns True; ``settling`` counts the others.
        """
        if outcome.kind is OutcomeKind.ACK and not self.acks_on_receipt:
            held.done(message)
            self.outcomes.add(OutcomeKind.ACK)
            return True
        return False

    def settling(
        self, outcome: Outcome, message: Message, queue: QueueBinding, held: HeldMessages
    ) -> BrokerSteps[None]:
        """The broker calls that apply ``outcome`` to a message received from ``queue``."""
        self.outcomes.add(outcome.kind)
        kind = outcome.kind
        if kind is OutcomeKind.DEAD_LETTER:
            _log.error(
                "dead-lettered %s (%s) from %s at stage %s: %s",
                message.message_id,
                message.manifest,
                queue.name,
                outcome.stage.value if outcome.stage else "?",
                outcome.reason,
            )
            assert outcome.stage is not None  # a dead-letter outcome names its stage
            sent = yield from queue.dead_letters.sending(
                message,
                stage=outcome.stage,
                reason=outcome.reason,
                error_type=outcome.error_type or _type_name(outcome.error),
                attempts=outcome.attempts,
            )
            if not sent and not self.acks_on_receipt:
                # Nowhere to put it: keep it on the queue rather than lose it.
                held.drop(message)
                left = queue.dead_letters.returns_of(message) is not None
                yield from self.releasing(message, 0.0 if left else self.retry.max_backoff_seconds)
                return
        if self.acks_on_receipt:
            return
        if outcome.settles:
            held.done(message)
        elif kind is OutcomeKind.RELEASE:
            held.drop(message)
            if outcome.error is not None:
                _log.warning(
                    "retrying %s (%s) from %s in %.1f s: %s",
                    message.message_id,
                    message.manifest,
                    queue.name,
                    outcome.delay,
                    outcome.reason,
                )
            yield from self.releasing(message, outcome.delay)
        else:
            held.drop(message)

    def handing_back(
        self, message: Message, queue: QueueBinding, held: HeldMessages
    ) -> BrokerSteps[bool]:
        """Release, unhandled, a message left to the broker's redrive; return whether it was one."""
        returns = queue.dead_letters.returns_of(message)
        if returns is None:
            return False
        held.drop(message)
        # At once while the broker can still move it; slowly if its queue has no redrive policy.
        if returns == self.redrive_limit + 1:
            _log.error(
                "%s came back to %s %d times without the broker moving it to %s:"
                " has the queue a redrive policy? releasing it every %.0f s",
                message.message_id,
                queue.name,
                returns,
                queue.dead_letters.dead_letter_queue_name,
                self.retry.max_backoff_seconds,
            )
        slow = returns > self.redrive_limit
        yield from self.releasing(message, self.retry.max_backoff_seconds if slow else 0.0)
        self.outcomes.add(OutcomeKind.RELEASE)
        return True

    def giving_way(self, message: Message, held: HeldMessages) -> BrokerSteps[None]:
        """Hand back, unhandled, a message whose group is being retried ahead of it."""
        held.drop(message)
        yield from self.releasing(message, 0.0)
        self.outcomes.add(OutcomeKind.RELEASE)

    def releasing_unstarted(self, held: HeldMessages) -> BrokerSteps[None]:
        """Hand back at once every held message whose handling never started."""
        for message in held.unstarted():
            yield from self.releasing(message, 0.0)

    def releasing(self, message: Message, delay: float) -> BrokerSteps[None]:
        """Hand one message back, to come again after ``delay`` seconds."""
        try:
            yield BrokerCall("release", (message, delay))
        except BackendError as e:
            # It comes back when its visibility timeout ends.
            _log.warning("could not release %s: %s", message.message_id, e)


def _type_name(error: BaseException | None) -> str:
    if error is None:
        return "melange.Unknown"
    return f"{type(error).__module__}.{type(error).__qualname__}"
