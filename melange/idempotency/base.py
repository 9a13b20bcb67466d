"""The idempotency store contract: an atomic claim per consumer and message."""

from __future__ import annotations

import abc

__all__ = ["IdempotencyStore"]


class IdempotencyStore(abc.ABC):
    """Remembers which consumer has handled which message.

    ``claim`` is atomic: of several workers claiming the same key at once,
    exactly one gets ``True``. A claim is a lease of ``lease_seconds`` while
    the handler runs (so a crashed worker's claim expires and the redelivery
    runs); ``complete`` keeps it for ``ttl_seconds``; ``release`` drops it so a
    retry can run.
    """

    def __init__(self, *, ttl_seconds: float = 86_400.0, lease_seconds: float = 300.0) -> None:
        if ttl_seconds <= 0 or lease_seconds <= 0:
            raise ValueError("ttl_seconds and lease_seconds must be positive")
        self.ttl_seconds = ttl_seconds
        self.lease_seconds = lease_seconds

    @staticmethod
    def key(consumer_id: str, message_id: str) -> str:
        """Return the key a consumer's claim on a message is stored under."""
        return f"{consumer_id}:{message_id}"

    @abc.abstractmethod
    def claim(self, consumer_id: str, message_id: str) -> bool:
        """Take the message for this consumer; ``False`` if it is taken or done.

        Raises:
            IdempotencyError: the store cannot be reached.
        """

    @abc.abstractmethod
    def complete(self, consumer_id: str, message_id: str) -> None:
        """Keep the claim for ``ttl_seconds``: the message was handled."""

    @abc.abstractmethod
    def release(self, consumer_id: str, message_id: str) -> None:
        """Drop the claim: the handler failed and the message may run again."""

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release the store's resources; safe to call more than once."""
