"""What handling a message comes to: the decision the consume loop applies."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from melange.dead_letters import Stage

__all__ = ["SUCCEEDED", "CallResult", "Outcome", "OutcomeKind"]


class OutcomeKind(enum.Enum):
    """What the consume loop does with a handled message."""

    #: Done: acknowledge it.
    ACK = "ack"
    #: Hand it back to the broker, to come again after ``delay`` seconds.
    RELEASE = "release"
    #: Move it to the dead-letter queue with ``stage`` and ``reason``, then acknowledge it.
    DEAD_LETTER = "dead_letter"
    #: Nothing here handles it (unknown manifest, no listener, duplicate): acknowledge it.
    SKIP = "skip"
    #: Leave it alone: someone else settles it (``AckPolicy.MANUAL``) or its timeout does.
    KEEP = "keep"

    # Members are singletons compared by identity: hash them so too, in C (counted per message).
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class Outcome:
    """The decision about one message; build one with the class methods."""

    kind: OutcomeKind
    reason: str = ""
    delay: float = 0.0
    stage: Stage | None = None
    error: BaseException | None = None
    error_type: str | None = None
    attempts: int = 0

    @classmethod
    def ack(cls) -> Outcome:
        """Return "acknowledge it"."""
        return _ACK

    @classmethod
    def release(cls, delay: float, reason: str, *, error: BaseException | None = None) -> Outcome:
        """Return "deliver it again after ``delay`` seconds"."""
        return cls(OutcomeKind.RELEASE, reason, delay=delay, error=error)

    @classmethod
    def dead_letter(
        cls,
        stage: Stage,
        reason: str,
        *,
        error: BaseException | None = None,
        error_type: str | None = None,
        attempts: int = 0,
    ) -> Outcome:
        """Return "dead-letter it": where it failed, why, and how often it was tried."""
        return cls(
            OutcomeKind.DEAD_LETTER,
            reason,
            stage=stage,
            error=error,
            error_type=error_type,
            attempts=attempts,
        )

    @classmethod
    def skip(cls, reason: str) -> Outcome:
        """Return "nothing here handles it; acknowledge it"."""
        return cls(OutcomeKind.SKIP, reason)

    @classmethod
    def keep(cls, reason: str) -> Outcome:
        """Return "leave it unacknowledged"."""
        return cls(OutcomeKind.KEEP, reason)

    @property
    def settles(self) -> bool:
        """Return whether the loop acknowledges the message (after dead-lettering it, if so)."""
        return self.kind in _SETTLING


_ACK = Outcome(OutcomeKind.ACK)
_SETTLING = frozenset({OutcomeKind.ACK, OutcomeKind.SKIP, OutcomeKind.DEAD_LETTER})


class _CallKind(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    DEFERRED = "deferred"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class CallResult:
    """How one consumer's call on one message went."""

    kind: _CallKind
    error: Exception | None = None
    attempts: int = 0
    reason: str = ""
    delay: float = 0.0

    @classmethod
    def success(cls) -> CallResult:
        """Return "the consumer handled it"."""
        return SUCCEEDED

    @classmethod
    def failure(cls, error: Exception, attempts: int = 1) -> CallResult:
        """Return "the consumer raised ``error`` on each of ``attempts`` tries"."""
        return cls(_CallKind.FAILED, error=error, attempts=attempts, reason=repr(error))

    @classmethod
    def skip(cls, reason: str) -> CallResult:
        """Return "the consumer need not run" (e.g. it already handled this message)."""
        return cls(_CallKind.SKIPPED, reason=reason)

    @classmethod
    def defer(cls, delay: float, reason: str) -> CallResult:
        """Return "not now: deliver the message again after ``delay`` seconds"."""
        return cls(_CallKind.DEFERRED, reason=reason, delay=delay)

    @classmethod
    def reject(cls, reason: str, error: Exception | None = None) -> CallResult:
        """Return "this message can never be handled here: dead-letter it now"."""
        return cls(_CallKind.REJECTED, error=error, reason=reason)

    @property
    def succeeded(self) -> bool:
        """Return whether the consumer handled the message."""
        return self.kind is _CallKind.SUCCEEDED

    @property
    def failed(self) -> bool:
        """Return whether the consumer raised."""
        return self.kind is _CallKind.FAILED

    @property
    def skipped(self) -> bool:
        """Return whether the consumer did not need to run."""
        return self.kind is _CallKind.SKIPPED

    @property
    def deferred(self) -> bool:
        """Return whether the message must come again later for this consumer."""
        return self.kind is _CallKind.DEFERRED

    @property
    def rejected(self) -> bool:
        """Return whether the consumer said the message can never be handled."""
        return self.kind is _CallKind.REJECTED


#: The result of a consumer call that succeeded (one shared value: compare with ``is``).
SUCCEEDED = CallResult(_CallKind.SUCCEEDED)
