"""Moving a message to its dead-letter queue with the reason in its headers."""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

from melange import signals
from melange.backends.decoding import is_own_header
from melange.backends.interfaces import MessagingBackend
from melange.broker_calls import BrokerCall, BrokerSteps, run_calls
from melange.exceptions import (
    BackendError,
    BatchPublishError,
    ConfigurationError,
    MessageTooLargeError,
    UnsupportedOperationError,
)
from melange.models import Message, QueueWrapper

__all__ = [
    "ATTEMPTS",
    "DEAD_LETTERED_AT",
    "DEAD_LETTER_WAIT_SECONDS",
    "ERROR_HEADERS",
    "ERROR_MESSAGE",
    "ERROR_STAGE",
    "ERROR_TYPE",
    "SOURCE_QUEUE",
    "DeadLetterer",
    "Stage",
    "dead_letter_queue_name",
    "dead_letter_reason",
    "peek",
    "redrive",
    "without_error_headers",
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
#: Room a dead-letter copy needs beyond the content: ids, manifest, the shortest reason.
_COPY_HEADROOM = 1024
#: Messages remembered as left to the broker's own redrive (oldest forgotten first).
_REMEMBERED = 10_000

_log = logging.getLogger("melange.dead_letters")


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
    """Publishes failed messages of one queue to its dead-letter queue.

    ``send`` publishes on ``backend``; a consume loop runs ``sending``'s steps
    on its own backend, sync or async (``backend`` may then be ``None``).
    """

    def __init__(
        self,
        backend: MessagingBackend | None,
        source_queue: str,
        dead_letter_queue_name: str,
        dead_letter_queue: QueueWrapper | None,
    ) -> None:
        self.backend = backend
        self.source_queue = source_queue
        self.dead_letter_queue_name = dead_letter_queue_name
        self._queue = dead_letter_queue
        self._lock = threading.Lock()
        self._left_to_broker: OrderedDict[str, int] = OrderedDict()

    def send(
        self, message: Message, *, stage: Stage, reason: str, error_type: str, attempts: int
    ) -> bool:
        """Publish a copy with the original content and the error headers, on ``backend``.

        See ``sending``; returns whether the copy was published.
        """
        if self.backend is None:
            raise ConfigurationError("this DeadLetterer has no backend: run its sending() steps")
        return run_calls(
            self.backend,
            self.sending(
                message, stage=stage, reason=reason, error_type=error_type, attempts=attempts
            ),
        )

    def sending(
        self, message: Message, *, stage: Stage, reason: str, error_type: str, attempts: int
    ) -> BrokerSteps[bool]:
        """The steps of publishing a copy with the original content and the error headers.

        A copy too large for the broker is sent with shorter error headers; one
        that does not fit even with a single header is logged and remembered
        as left to the broker (see ``returns_of``). Returns whether it was
        published: ``False`` (after a ``message_failed`` signal) when the
        dead-letter queue is missing or refuses it, in which case the caller
        must not acknowledge the original.
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
            if self._queue is None:
                self._queue = yield BrokerCall("get_queue", (self.dead_letter_queue_name,))
            for headers in _shorter_and_shorter(message, error_headers):
                copy = Message(
                    content=message.content,
                    message_id=message.message_id,
                    metadata=headers,
                    serializer_id=message.serializer_id,
                    manifest=message.manifest,
                )
                try:
                    yield BrokerCall("publish_to_queue", (copy, self._queue))
                    break
                except MessageTooLargeError as e:
                    last_error: BackendError = e
            else:
                raise last_error
        except MessageTooLargeError as e:
            self._leave_to_broker(message, e, error_headers[ERROR_MESSAGE])
            signals.message_failed.send(self, message=message, consumer=None, error=e)
            return False
        except BackendError as e:
            signals.message_failed.send(self, message=message, consumer=None, error=e)
            return False
        if signals.message_dead_lettered.receivers:
            signals.message_dead_lettered.send(
                self, message=copy, queue=self.source_queue, reason=error_headers[ERROR_MESSAGE]
            )
        return True

    @property
    def leaves_any_to_broker(self) -> bool:
        """Whether any message is remembered as left to the broker's redrive."""
        return bool(self._left_to_broker)

    def returns_of(self, message: Message) -> int | None:
        """Count one more return of a message left to the broker; ``None`` if it is not one.

        A message whose dead-letter copy cannot fit stays on its queue, and
        the broker's redrive policy moves it whole once its receives pass the
        queue's maximum. Until then each return is to be handed back at once,
        unhandled, so its handler does not run again.
        """
        if not self._left_to_broker:  # the common case, without the lock
            return None
        with self._lock:
            returns = self._left_to_broker.get(message.message_id)
            if returns is None:
                return None
            self._left_to_broker[message.message_id] = returns + 1
            return returns + 1

    def _leave_to_broker(self, message: Message, error: MessageTooLargeError, reason: str) -> None:
        _log.error(
            "dead letter of %s (%s) from %s does not fit on the broker even with one header"
            " (%s): left for the broker to move whole to %s; the reason: %s",
            message.message_id,
            message.manifest,
            self.source_queue,
            error,
            self.dead_letter_queue_name,
            reason,
        )
        with self._lock:
            self._left_to_broker[message.message_id] = 0
            while len(self._left_to_broker) > _REMEMBERED:
                self._left_to_broker.popitem(last=False)


def _shorter_and_shorter(
    message: Message, error_headers: dict[str, str]
) -> Iterator[Mapping[str, str | bytes]]:
    """Yield the copy's headers, each try smaller: the original's plus the reason, then less."""
    # melange's own headers describe this receive, not the copy (the reason does now).
    original = {k: v for k, v in message.metadata.items() if not is_own_header(k)}
    yield {**original, **error_headers}
    short = error_headers | {ERROR_MESSAGE: error_headers[ERROR_MESSAGE][:_SHORT_ERROR_MESSAGE]}
    yield {**original, **short}
    essential = {k: short[k] for k in (ERROR_TYPE, ERROR_STAGE, SOURCE_QUEUE, ERROR_MESSAGE)}
    yield {**original, **essential}
    # The content must survive whole; the original headers go before the reason does.
    yield essential
    yield {ERROR_STAGE: essential[ERROR_STAGE]}


def dead_letter_reason(message: Message, *, max_message_size: int | None = None) -> str:
    """Return why a message is in a dead-letter queue, as its headers (or their absence) say.

    ``max_message_size`` is the broker's limit (``backend.max_message_size``):
    a message without error headers that is too close to it for melange to
    have added them is said to be one melange left to the broker.
    """
    reason, stage = message.text_header(ERROR_MESSAGE), message.text_header(ERROR_STAGE)
    if reason is not None:
        return reason
    if stage is not None:
        return (
            f"failed at stage {stage}; the reason did not fit the broker's"
            f" size limit: the worker logged it with the message id {message.message_id}"
        )
    size = len(message.content.encode())
    if max_message_size is not None and size > max_message_size - _COPY_HEADROOM:
        return (
            f"moved by the broker after its max_receive_count receives: at {size} bytes it is"
            f" too close to the broker's size limit ({max_message_size}) for a copy with"
            f" reasons; the worker logged why with the message id {message.message_id}"
        )
    return (
        "moved by the broker on its own after its max_receive_count receives"
        " (no melange worker dead-lettered it: e.g. a worker crashed on it)"
    )


def without_error_headers(message: Message) -> Message:
    """Return the message as first published: melange's dead-letter and own headers removed."""
    headers = {
        k: v for k, v in message.metadata.items() if k not in ERROR_HEADERS and not is_own_header(k)
    }
    return Message(
        content=message.content,
        message_id=message.message_id,
        metadata=headers,
        serializer_id=message.serializer_id,
        manifest=message.manifest,
    )


# How long a read of a dead-letter queue waits for its first message: one
# that looks empty at once may still be delivering (RabbitMQ pushes to a
# consumer, SQS short polls sample its servers).
DEAD_LETTER_WAIT_SECONDS = 1.0


def peek(
    backend: MessagingBackend,
    queue: str,
    *,
    dead_letter_queue: str | None = None,
    limit: int = 10,
) -> list[Message]:
    """Return up to ``limit`` dead letters of ``queue``, handing each straight back.

    A backend whose returns wear messages away (RabbitMQ's quorum queues
    count them against a delivery limit) reads them with its
    ``browse_messages``, which adds no delivery; the others receive and release.

    Raises:
        QueueNotFoundError: the dead-letter queue does not exist.
    """
    source = backend.get_queue(dead_letter_queue or dead_letter_queue_name(queue))
    with contextlib.suppress(UnsupportedOperationError):
        return backend.browse_messages(source, limit)
    messages = backend.retrieve_messages(
        source, max_messages=limit, wait_seconds=DEAD_LETTER_WAIT_SECONDS
    )
    for message in messages:
        backend.release(message)
    return messages


def redrive(
    backend: MessagingBackend,
    queue: str,
    *,
    dead_letter_queue: str | None = None,
    limit: int | None = None,
) -> int:
    """Move dead letters back to ``queue`` (all, or ``limit``); return how many moved.

    Each batch is published first and acknowledged after, so a crash
    between the two repeats a move (consumers' idempotency absorbs it) but
    never loses one. In a partly failed batch only what was sent is
    acknowledged; the rest stays in the dead-letter queue. Each read waits up
    to ``DEAD_LETTER_WAIT_SECONDS`` for its first message, so the end costs
    that wait once.

    Raises:
        QueueNotFoundError: either queue does not exist.
        BatchPublishError: some messages could not be moved (the others were).
    """
    source = backend.get_queue(dead_letter_queue or dead_letter_queue_name(queue))
    target = backend.get_queue(queue)
    moved = 0
    while limit is None or moved < limit:
        wanted = 10 if limit is None else min(10, limit - moved)
        batch = backend.retrieve_messages(
            source, max_messages=wanted, wait_seconds=DEAD_LETTER_WAIT_SECONDS
        )
        if not batch:
            break
        try:
            backend.publish_batch_to_queue([without_error_headers(m) for m in batch], target)
        except BatchPublishError as e:
            failed = {message.message_id for message, _ in e.failed}
            sent = [m for m in batch if m.message_id not in failed]
            backend.acknowledge_batch(sent)
            raise
        backend.acknowledge_batch(batch)
        moved += len(batch)
    return moved
