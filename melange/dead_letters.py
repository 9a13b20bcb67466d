"""Moving a message to its dead-letter queue with the reason in its headers."""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

from melange import signals
from melange.backends.interfaces import MessagingBackend
from melange.exceptions import BackendError, MessageTooLargeError
from melange.models import Message, QueueWrapper

__all__ = [
    "ATTEMPTS",
    "DEAD_LETTERED_AT",
    "ERROR_HEADERS",
    "ERROR_MESSAGE",
    "ERROR_STAGE",
    "ERROR_TYPE",
    "SOURCE_QUEUE",
    "DeadLetterer",
    "Stage",
    "dead_letter_queue_name",
]

ERROR_TYPE = "error_type"
ERROR_MESSAGE = "error_message"
ERROR_STAGE = "error_stage"
ATTEMPTS = "attempts"
SOURCE_QUEUE = "source_queue"
DEAD_LETTERED_AT = "dead_lettered_at"
#: Every header melange adds to a dead-letter copy.
ERROR_HEADERS = (ERROR_TYPE, ERROR_MESSAGE, ERROR_STAGE, ATTEMPTS, SOURCE_QUEUE, DEAD_LETTERED_AT)

_MAX_ERROR_MESSAGE = 1024
_SHORT_ERROR_MESSAGE = 64


class Stage(enum.Enum):
    """Where a message failed."""

    #: The backend could not read it off the wire (headers, encoding).
    DECODE = "decode"
    #: No serializer could turn its content into an event.
    DESERIALIZE = "deserialize"
    #: Its consumers kept failing.
    HANDLE = "handle"


def dead_letter_queue_name(queue: str) -> str:
    """Return the name of ``queue``'s dead-letter queue."""
    return f"{queue}-dlq"


class DeadLetterer:
    """Publishes failed messages of one queue to its dead-letter queue."""

    def __init__(
        self,
        backend: MessagingBackend,
        source_queue: str,
        dead_letter_queue_name: str,
        dead_letter_queue: QueueWrapper | None,
    ) -> None:
        self.backend = backend
        self.source_queue = source_queue
        self.dead_letter_queue_name = dead_letter_queue_name
        self._queue = dead_letter_queue
        self._lock = threading.Lock()

    def send(
        self, message: Message, *, stage: Stage, reason: str, error_type: str, attempts: int
    ) -> bool:
        """Publish a copy with the original content and the error headers.

        A copy too large for the broker is sent with shorter error headers.
        Returns whether it was published: ``False`` (after a ``message_failed``
        signal) when the dead-letter queue is missing or refuses it, in which
        case the caller must not acknowledge the original.
        """
        error_headers = {
            ERROR_TYPE: error_type,
            ERROR_MESSAGE: reason[:_MAX_ERROR_MESSAGE],
            ERROR_STAGE: stage.value,
            ATTEMPTS: str(attempts),
            SOURCE_QUEUE: self.source_queue,
            DEAD_LETTERED_AT: datetime.now(UTC).isoformat(),
        }
        try:
            queue = self._dead_letter_queue()
            for headers in _shorter_and_shorter(message, error_headers):
                copy = Message(
                    content=message.content,
                    message_id=message.message_id,
                    metadata=headers,
                    serializer_id=message.serializer_id,
                    manifest=message.manifest,
                )
                try:
                    self.backend.publish_to_queue(copy, queue)
                    break
                except MessageTooLargeError as e:
                    last_error: BackendError = e
            else:
                raise last_error
        except BackendError as e:
            signals.message_failed.send(self, message=message, consumer=None, error=e)
            return False
        if signals.message_dead_lettered.receivers:
            signals.message_dead_lettered.send(
                self, message=copy, queue=self.source_queue, reason=headers[ERROR_MESSAGE]
            )
        return True

    def _dead_letter_queue(self) -> QueueWrapper:
        if self._queue is None:
            queue = self.backend.get_queue(self.dead_letter_queue_name)
            with self._lock:
                self._queue = queue
        return self._queue


def _shorter_and_shorter(
    message: Message, error_headers: dict[str, str]
) -> Iterator[dict[str, str]]:
    """Yield the copy's headers, each try smaller: the original's plus the reason, then less."""
    original = dict(message.metadata)
    yield original | error_headers
    short = error_headers | {ERROR_MESSAGE: error_headers[ERROR_MESSAGE][:_SHORT_ERROR_MESSAGE]}
    yield original | short
    essential = {k: short[k] for k in (ERROR_TYPE, ERROR_STAGE, SOURCE_QUEUE, ERROR_MESSAGE)}
    yield original | essential
    # The content must survive whole; the original headers go before the reason does.
    yield essential
    yield {ERROR_STAGE: essential[ERROR_STAGE]}
