"""Moving a message to its dead-letter queue with the reason in its headers."""

from __future__ import annotations

import enum
import threading
from datetime import UTC, datetime

from melange import signals
from melange.backends.interfaces import MessagingBackend
from melange.exceptions import BackendError
from melange.models import Message, QueueWrapper

__all__ = [
    "ATTEMPTS",
    "DEAD_LETTERED_AT",
    "ERROR_MESSAGE",
    "ERROR_STAGE",
    "ERROR_TYPE",
    "SOURCE_QUEUE",
    "DeadLetterer",
    "Stage",
]

ERROR_TYPE = "error_type"
ERROR_MESSAGE = "error_message"
ERROR_STAGE = "error_stage"
ATTEMPTS = "attempts"
SOURCE_QUEUE = "source_queue"
DEAD_LETTERED_AT = "dead_lettered_at"

_MAX_ERROR_MESSAGE = 1024


class Stage(enum.Enum):
    """Where a message failed."""

    DESERIALIZE = "deserialize"
    HANDLE = "handle"


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

    def send(self, message: Message, error: BaseException, stage: Stage, *, attempts: int) -> bool:
        """Publish a copy with the original content and the error headers.

        Returns whether it was published: ``False`` (reported through the
        ``message_dead_lettered`` signal's absence and a ``message_failed``
        signal) when the dead-letter queue is missing or refuses it, in which
        case the caller must not acknowledge the original.
        """
        headers = dict(message.metadata)
        headers.update(
            {
                ERROR_TYPE: f"{type(error).__module__}.{type(error).__qualname__}",
                ERROR_MESSAGE: str(error)[:_MAX_ERROR_MESSAGE],
                ERROR_STAGE: stage.value,
                ATTEMPTS: str(attempts),
                SOURCE_QUEUE: self.source_queue,
                DEAD_LETTERED_AT: datetime.now(UTC).isoformat(),
            }
        )
        copy = Message(
            content=message.content,
            message_id=message.message_id,
            metadata=headers,
            serializer_id=message.serializer_id,
            manifest=message.manifest,
        )
        try:
            self.backend.publish_to_queue(copy, self._dead_letter_queue())
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
