"""Every error melange raises.

::

    MelangeError
    ├── ConfigurationError
    │   ├── ListenerDefinitionError      a @listener that cannot be routed
    │   ├── MissingExtraError            (also ImportError) a driver extra is not installed
    │   ├── InvalidArgumentError         (also ValueError) a value out of its range
    │   │   └── InvalidNameError         a queue or topic name the backend cannot take
    │   └── UnexpectedOptionError        (also TypeError) an option nobody takes
    ├── SerializationError
    │   ├── UnknownSerializerError       no serializer has the message's id
    │   ├── UnknownManifestError         no class is known for the manifest
    │   ├── DeserializationError         content cannot be read (malformed)
    │   │   ├── UndecodableMessageError  the backend could not decode it off the wire
    │   │   ├── MessageValidationError   content read but the event is invalid
    │   │   ├── EventTypeMismatchError   the manifest's class, but content read as another type
    │   │   └── UnsafePayloadError       a signed payload whose signature fails
    │   └── NoSerializerError            no serializer is bound to an object's class
    ├── BackendError
    │   ├── BackendConnectionError       the broker cannot be reached
    │   ├── QueueNotFoundError
    │   ├── TopicNotFoundError
    │   ├── MessageTooLargeError         refused before sending
    │   ├── PublishError                 the broker did not take (or confirm) a message
    │   │   └── BatchPublishError        some messages of a batch failed
    │   ├── UnsupportedOperationError    the backend cannot do what was asked
    │   ├── ForeignMessageError          (also ValueError) not received from this backend
    │   └── StorageError                 the embedded store is unusable
    ├── IdempotencyError                 the idempotency store cannot be used
    ├── OutboxError                      the outbox or inbox table cannot be used
    ├── SagaError
    │   ├── SagaConflictError            a saga instance changed since it was loaded
    │   ├── SagaExistsError              an instance with that correlation key exists
    │   └── SagaStoreError               the saga store cannot be used
    └── HandlingDecision                 raised by a handler to settle its message
        ├── DeferMessage                 not now: deliver it again after a delay
        └── RejectMessage                never: dead-letter it now, with the reason
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "BackendConnectionError",
    "BackendError",
    "BatchPublishError",
    "ConfigurationError",
    "DeferMessage",
    "DeserializationError",
    "EventTypeMismatchError",
    "ForeignMessageError",
    "HandlingDecision",
    "IdempotencyError",
    "InvalidArgumentError",
    "InvalidNameError",
    "ListenerDefinitionError",
    "MelangeError",
    "MessageTooLargeError",
    "MessageValidationError",
    "MissingExtraError",
    "NoSerializerError",
    "OutboxError",
    "PublishError",
    "QueueNotFoundError",
    "RejectMessage",
    "SagaConflictError",
    "SagaError",
    "SagaExistsError",
    "SagaStoreError",
    "SerializationError",
    "StorageError",
    "TopicNotFoundError",
    "UndecodableMessageError",
    "UnexpectedOptionError",
    "UnknownManifestError",
    "UnknownSerializerError",
    "UnsafePayloadError",
    "UnsupportedOperationError",
]


class MelangeError(Exception):
    """Base of every error melange raises."""


class ConfigurationError(MelangeError):
    """melange was set up in a way that cannot work."""


class ListenerDefinitionError(ConfigurationError):
    """A @listener cannot be routed: no annotation, or a type claimed twice."""


class MissingExtraError(ConfigurationError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is not installed: pip install 'melange[{extra}]'")
        self.package = package
        self.extra = extra


class InvalidArgumentError(ConfigurationError, ValueError):
    """An argument or setting is out of its range, such as a negative timeout."""


class InvalidNameError(InvalidArgumentError):
    """A queue or topic name the backend cannot take; the message names its rule.

    ``name`` is the name as given, ``backend`` the backend's ``messaging_system``
    (``aws_sqs``…), ``rule`` the limit it breaks.
    """

    def __init__(self, name: str, backend: str, rule: str, suggestion: str | None = None) -> None:
        shown = name if len(name) <= 100 else f"{name[:100]}… ({len(name)} characters)"
        text = f"{backend}: invalid name {shown!r}: {rule}"
        if suggestion is not None:
            text += f"; try {suggestion!r}"
        super().__init__(text)
        self.name = name
        self.backend = backend
        self.rule = rule
        self.suggestion = suggestion


class UnexpectedOptionError(ConfigurationError, TypeError):
    """An option was given that the receiving call does not take."""


class SerializationError(MelangeError):
    """An event could not be turned into a message, or back."""


class UnknownSerializerError(SerializationError):
    """No registered serializer has this identifier or name."""


class UnknownManifestError(SerializationError):
    """No event class is known for a manifest."""


class DeserializationError(SerializationError):
    """A message's content cannot be read."""


class MessageValidationError(DeserializationError):
    """The content was read, but it does not make a valid event."""


class UndecodableMessageError(DeserializationError):
    """The backend could not decode a received message (a header, its text encoding…)."""


class EventTypeMismatchError(DeserializationError):
    """The manifest names a registered event class, but the content does not read as one."""


class UnsafePayloadError(DeserializationError):
    """A signed payload failed its signature check and was not loaded."""


class NoSerializerError(SerializationError):
    """No serializer is bound to an object's class and there is no default."""


class BackendError(MelangeError):
    """The broker failed or refused an operation."""


class BackendConnectionError(BackendError):
    """The broker cannot be reached."""


class QueueNotFoundError(BackendError):
    """The queue does not exist."""


class TopicNotFoundError(BackendError):
    """The topic does not exist."""


class MessageTooLargeError(BackendError):
    """A message is larger than the destination accepts; nothing was sent."""

    def __init__(self, size: int, limit: int, destination: str = "") -> None:
        where = f" for {destination}" if destination else ""
        super().__init__(f"message is {size} bytes, over the limit of {limit} bytes{where}")
        self.size = size
        self.limit = limit


class PublishError(BackendError):
    """The broker did not take or did not confirm a message."""


class BatchPublishError(PublishError):
    """Some messages of a batch were not published.

    ``failed`` pairs each message that was not sent with the reason.
    """

    def __init__(self, failed: Sequence[tuple[Any, str]]) -> None:
        super().__init__(f"{len(failed)} message(s) of the batch were not published")
        self.failed = list(failed)


class UnsupportedOperationError(BackendError):
    """The backend cannot do what was asked."""


class ForeignMessageError(BackendError, ValueError):
    """A message handed to a backend was not received from that backend."""


class StorageError(BackendError):
    """The embedded broker's storage is missing, unreadable or not a database."""


class IdempotencyError(MelangeError):
    """The idempotency store cannot be used."""


class OutboxError(MelangeError):
    """The outbox or inbox table cannot be read or written (the database failed)."""


class SagaError(MelangeError):
    """A saga cannot go on as asked."""


class SagaConflictError(SagaError):
    """The saga instance was saved by someone else since it was loaded."""


class SagaExistsError(SagaError):
    """An instance of this saga type already has that correlation key."""


class SagaStoreError(SagaError):
    """The saga store cannot be used."""


class HandlingDecision(MelangeError):
    """Raised by a handler (or a consumer's own code) to decide what happens to its message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeferMessage(HandlingDecision):
    """Not now: hand the message back, to be delivered again after ``delay`` seconds.

    Not counted as a failure: no retry is used up, and it never dead-letters
    the message by itself.
    """

    def __init__(self, reason: str, delay: float = 1.0) -> None:
        super().__init__(reason)
        self.delay = delay


class RejectMessage(HandlingDecision):
    """Never: this message cannot be handled; dead-letter it now, with the reason."""
