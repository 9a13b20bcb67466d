"""The message being handled, so that what it causes carries its correlation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from melange.models import Message

__all__ = ["CURRENT_MESSAGE", "current_message", "handling"]

#: The message being handled in this context (set by the dispatcher's scope middleware).
CURRENT_MESSAGE: ContextVar[Message | None] = ContextVar("melange_current_message", default=None)
_current = CURRENT_MESSAGE


def current_message() -> Message | None:
    """Return the message whose handler is running in this context, if any."""
    return _current.get()


@contextmanager
def handling(message: Message) -> Iterator[None]:
    """Mark ``message`` as the one being handled for the duration of the block."""
    token = _current.set(message)
    try:
        yield
    finally:
        _current.reset(token)
