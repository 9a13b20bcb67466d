"""``PublishRecorder``: capture what a publisher sent, to assert on in tests."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from melange.middleware.base import Middleware
from melange.middleware.held_publishes import current_hold
from melange.middleware.publish_scopes import Publishing
from melange.models import Message
from melange.outgoing import Destination, DestinationKind

__all__ = ["PublishRecorder", "RecordedPublish"]

_E = TypeVar("_E")


@dataclass(frozen=True, slots=True)
class RecordedPublish:
    """One message a publisher handed to its backend."""

    event: Any
    message: Message
    destination: Destination
    delay: float = 0.0

    @property
    def headers(self) -> dict[str, str | bytes]:
        """Return the message's headers."""
        return dict(self.message.metadata)


class PublishRecorder(Middleware):
    """A publisher middleware that records every message once the backend took it.

    Messages still held by ``hold_publishes`` are recorded when released, and
    never if discarded; a publish the backend refused is not recorded. The
    messages really go to the backend, so consumers see them as they would
    in production::

        recorder = PublishRecorder()
        publisher = MessagePublisher(backend, middleware=[recorder])
        ...
        [event] = recorder.published(OrderCreated)
    """

    def __init__(self) -> None:
        self._records: list[RecordedPublish] = []
        self._lock = threading.Lock()

    def send_message(self, publishing: Publishing, call_next: Callable[[], None]) -> None:
        """Send, then record (once released, when inside ``hold_publishes``)."""
        call_next()
        self._sent(publishing)

    async def send_message_async(
        self, publishing: Publishing, call_next: Callable[[], Awaitable[None]]
    ) -> None:
        """``send_message`` under ``AsyncMessagePublisher``."""
        await call_next()
        self._sent(publishing)

    def _sent(self, publishing: Publishing) -> None:
        where = publishing.where
        record = RecordedPublish(publishing.event, publishing.built, where, publishing.delay)
        held = current_hold()
        if held is None:
            self._add(record)
        else:
            held.after_last(lambda: self._add(record))

    def _add(self, record: RecordedPublish) -> None:
        with self._lock:
            self._records.append(record)

    @property
    def records(self) -> list[RecordedPublish]:
        """Return every recorded publish, oldest first."""
        with self._lock:
            return list(self._records)

    def published(
        self,
        event_type: type[_E] | None = None,
        *,
        topic: str | None = None,
        queue: str | None = None,
    ) -> list[_E]:
        """Return the events sent, oldest first: of a type (subclasses too), to a topic or queue."""
        return [record.event for record in self.matching(event_type, topic=topic, queue=queue)]

    def matching(
        self,
        event_type: type[Any] | None = None,
        *,
        topic: str | None = None,
        queue: str | None = None,
    ) -> list[RecordedPublish]:
        """Return the records of events of a type (subclasses too), to a topic or queue."""
        return [
            record
            for record in self.records
            if (event_type is None or isinstance(record.event, event_type))
            and _goes_to(record.destination, DestinationKind.TOPIC, topic)
            and _goes_to(record.destination, DestinationKind.QUEUE, queue)
        ]

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._records.clear()


def _goes_to(destination: Destination, kind: DestinationKind, name: str | None) -> bool:
    return name is None or (destination.kind is kind and destination.name == name)
