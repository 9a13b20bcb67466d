"""The idempotency store contract: an atomic claim per consumer and message."""

from __future__ import annotations

import abc
import enum

from melange.exceptions import InvalidArgumentError

__all__ = ["AsyncIdempotencyStore", "Claim", "IdempotencyStore"]


class Claim(enum.Enum):
    """What a claim found. Only ``ACQUIRED`` is truthy: the caller may run the handler."""

    #: This worker holds the claim now: run the handler, then complete or release.
    ACQUIRED = "acquired"
    #: Another worker holds a live claim: try again later (never skip it).
    IN_PROGRESS = "in_progress"
    #: The consumer already handled the message: skip it.
    DONE = "done"

    def __bool__(self) -> bool:
        return self is Claim.ACQUIRED


class IdempotencyStore(abc.ABC):
    """Remembers which consumer is handling, or has handled, which message.

    ``claim`` is atomic: of several workers claiming the same key at once,
    exactly one gets ``Claim.ACQUIRED``; the others learn whether the message
    is in progress elsewhere or done. A claim is a lease of ``lease_seconds``
    (10 s by default; the dispatcher renews it every third of that while the
    handler runs, whatever the visibility timeout), so a crashed worker's
    claim ends within seconds; ``complete`` marks the key done for ``ttl_seconds``;
    ``release`` drops the claim so a retry can run. Only the worker that holds
    a claim can renew, complete or release it.
    """

    def __init__(self, *, ttl_seconds: float = 86_400.0, lease_seconds: float = 10.0) -> None:
        if ttl_seconds <= 0 or lease_seconds <= 0:
            raise InvalidArgumentError("ttl_seconds and lease_seconds must be positive")
        self.ttl_seconds = ttl_seconds
        self.lease_seconds = lease_seconds

    @staticmethod
    def key(consumer_id: str, message_id: str) -> str:
        """Return the key a consumer's claim on a message is stored under."""
        return f"{consumer_id}:{message_id}"

    @abc.abstractmethod
    def claim(self, consumer_id: str, message_id: str, lease_seconds: float | None = None) -> Claim:
        """Try to take the message for this consumer for ``lease_seconds`` (default: the store's).

        Raises:
            IdempotencyError: the store cannot be reached.
        """

    @abc.abstractmethod
    def renew(self, consumer_id: str, message_id: str, lease_seconds: float) -> None:
        """Extend this worker's live claim to end ``lease_seconds`` from now.

        Raises:
            IdempotencyError: the store cannot be reached.
        """

    @abc.abstractmethod
    def complete(self, consumer_id: str, message_id: str) -> None:
        """Mark the message done for this consumer, for ``ttl_seconds``.

        Raises:
            IdempotencyError: the store cannot be reached.
        """

    @abc.abstractmethod
    def release(self, consumer_id: str, message_id: str) -> None:
        """Drop this worker's claim: the handler failed and the message may run again.

        Raises:
            IdempotencyError: the store cannot be reached.
        """

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release the store's resources; safe to call more than once."""


class AsyncIdempotencyStore(abc.ABC):
    """``IdempotencyStore``'s methods as coroutines, with the same meaning."""

    ttl_seconds: float = 86_400.0
    lease_seconds: float = 10.0

    key = staticmethod(IdempotencyStore.key)

    @abc.abstractmethod
    async def claim(
        self, consumer_id: str, message_id: str, lease_seconds: float | None = None
    ) -> Claim:
        """Try to take the message for this consumer (``IdempotencyError`` if unreachable)."""

    @abc.abstractmethod
    async def renew(self, consumer_id: str, message_id: str, lease_seconds: float) -> None:
        """Extend this worker's live claim to end ``lease_seconds`` from now."""

    @abc.abstractmethod
    async def complete(self, consumer_id: str, message_id: str) -> None:
        """Mark the message done for this consumer, for ``ttl_seconds``."""

    @abc.abstractmethod
    async def release(self, consumer_id: str, message_id: str) -> None:
        """Drop this worker's claim so the message may run again."""

    async def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release the store's resources; safe to call more than once."""
