"""The one place where pika's errors become melange's."""

from __future__ import annotations

import copy

from melange.exceptions import (
    BackendConnectionError,
    BackendError,
    ConfigurationError,
    MelangeError,
    MissingExtraError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
)

try:
    import pika.exceptions as pika_errors
except ImportError as e:  # pragma: no cover - depends on the environment
    raise MissingExtraError("pika", "rabbitmq") from e

__all__ = ["NOT_FOUND", "describe", "detached", "nacked", "returned", "translate"]

NOT_FOUND = 404
_ACCESS_REFUSED = 403
_PRECONDITION_FAILED = 406
_NO_ROUTE = 312


def describe(error: BaseException) -> str:
    """Return what went wrong, in words: pika wraps a refused socket in layers with no text."""
    if isinstance(error, pika_errors.ChannelClosed | pika_errors.ConnectionClosed):
        return f"{error.reply_code} {error.reply_text}"
    for _ in range(10):  # unwrap: connection error -> workflow failure -> connector -> socket
        nested = getattr(error, "exceptions", None)
        inner = getattr(error, "exception", None)
        if nested:
            error = nested[-1]
        elif isinstance(inner, BaseException):
            error = inner
        elif error.args and isinstance(error.args[0], BaseException):
            error = error.args[0]
        else:
            break
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def translate(
    error: BaseException,
    *,
    queue: str | None = None,
    topic: str | None = None,
    publishing: bool = False,
) -> MelangeError:
    """Return the melange error for a pika (or socket) error; the caller raises it ``from``.

    ``queue``/``topic`` name what the failed operation was about, so a 404
    becomes the right not-found error; ``publishing`` turns connection and
    channel failures into ``PublishError``, since the message was not confirmed.
    """
    text = describe(error)
    if isinstance(error, pika_errors.ChannelClosedByBroker):
        code = error.reply_code
        if code == NOT_FOUND and queue is not None:
            return QueueNotFoundError(f"queue {queue!r} does not exist ({text})")
        if code == NOT_FOUND and topic is not None:
            return TopicNotFoundError(f"topic {topic!r} does not exist ({text})")
        if code in (_ACCESS_REFUSED, _PRECONDITION_FAILED) and not publishing:
            # Inequivalent arguments, reserved names, missing permissions:
            # retrying cannot help, the declaration itself must change.
            return ConfigurationError(f"RabbitMQ refused the declaration: {text}")
    if publishing:
        return PublishError(f"message not confirmed by RabbitMQ: {text}")
    if isinstance(error, pika_errors.AMQPConnectionError | OSError):
        return BackendConnectionError(f"cannot reach RabbitMQ: {text}")
    if isinstance(error, pika_errors.ChannelClosed | pika_errors.ChannelWrongStateError):
        return BackendConnectionError(f"RabbitMQ channel closed: {text}")
    return BackendError(f"RabbitMQ error: {text}")


def returned(code: int, text: str, exchange: str, routing_key: str) -> MelangeError:
    """Return the error for a mandatory message the broker returned (``basic.return``)."""
    if exchange == "" and code == _NO_ROUTE:
        return QueueNotFoundError(f"queue {routing_key!r} does not exist")
    return PublishError(f"RabbitMQ returned the message: {code} {text}")


def nacked() -> MelangeError:
    """Return the error for a message the broker refused (``basic.nack``)."""
    return PublishError("RabbitMQ refused the message (basic.nack)")


def detached(error: BaseException) -> BaseException:
    """Return a copy of an error pika keeps (on a closed channel), for a caller to raise.

    Raising pika's own object would tie the caller's frames, and so the
    backend, to whatever still holds that channel (a log record, say).
    """
    copied = copy.copy(error)
    copied.__traceback__ = None
    return copied
