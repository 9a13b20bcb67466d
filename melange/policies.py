"""How the dispatcher acknowledges and retries."""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from melange.exceptions import InvalidArgumentError

__all__ = ["AckPolicy", "RetryPolicy"]


class AckPolicy(enum.Enum):
    """When the dispatcher acknowledges a message."""

    #: After every accepting consumer succeeded; failures are retried, then dead-lettered.
    AFTER_SUCCESS = "after_success"
    #: After handling, whatever the outcome; a failure is dead-lettered, not redelivered.
    AFTER_HANDLE = "after_handle"
    #: On receipt, before handling (at most once); a failure is dead-lettered.
    BEFORE_HANDLE = "before_handle"
    #: Never by the dispatcher: the handler acknowledges through the backend.
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of a failing handler: immediate attempts, then delayed redeliveries.

    Each delivery tries a failing consumer up to ``immediate_attempts`` times
    in a row. If it still fails, the message is handed back to the broker to
    come again after an exponential backoff with jitter, until it has been
    delivered ``max_deliveries`` times; then it goes to the dead-letter queue.
    A handler that always fails thus runs ``immediate_attempts * max_deliveries``
    times in all.
    """

    immediate_attempts: int = 3
    max_deliveries: int = 3
    backoff_seconds: float = 1.0
    backoff_multiplier: float = 2.0
    max_backoff_seconds: float = 300.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.immediate_attempts < 1 or self.max_deliveries < 1:
            raise InvalidArgumentError("immediate_attempts and max_deliveries must be at least 1")
        if self.backoff_seconds < 0 or not 0 <= self.jitter <= 1:
            raise InvalidArgumentError("backoff_seconds must be >= 0 and jitter within [0, 1]")

    @classmethod
    def none(cls) -> RetryPolicy:
        """Return a policy that never retries: one attempt, then the dead-letter queue."""
        return cls(immediate_attempts=1, max_deliveries=1)

    @property
    def max_attempts(self) -> int:
        """Return how many times a handler that always fails runs in all."""
        return self.immediate_attempts * self.max_deliveries

    def delay_for(self, delivery: int) -> float:
        """Return the seconds to wait before delivery number ``delivery + 1``."""
        base = self.backoff_seconds * self.backoff_multiplier ** max(delivery - 1, 0)
        base = min(base, self.max_backoff_seconds)
        spread = base * self.jitter
        return max(0.0, base + random.uniform(-spread, spread))
