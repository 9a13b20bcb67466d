"""The instance one saga handler runs on: what the verbs change and the runner saves."""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from melange.models import Message
from melange.outgoing import Destination, DestinationKind, Outgoing
from melange.saga._records import SagaRecord, SagaStatus, Step

__all__ = ["InstanceScope", "current_scope", "entered_scope", "outgoing_to"]


@dataclass
class InstanceScope:
    """The instance one handler runs on, and what it decided so far."""

    record: SagaRecord
    state: Any
    message: Message
    status: SagaStatus
    outgoing: list[Outgoing] = field(default_factory=list)
    compensations: list[Outgoing] = field(default_factory=list)
    timeouts: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    sequence: int = 0

    def note(self, what: str) -> None:
        """Add a line to the instance's timeline."""
        self.steps.append(Step(time.time(), what))


#: The scope of the saga handler running in this context, if any.
entered_scope: ContextVar[InstanceScope | None] = ContextVar("melange_saga_scope", default=None)
current_scope = entered_scope.get


def outgoing_to(
    message: Message, queue: str | None, topic: str | None, *, delay: float = 0.0, due_at: float
) -> Outgoing:
    """Return a saga's outgoing message to a queue, or a topic (its manifest's by default)."""
    if queue is not None:
        where = Destination(DestinationKind.QUEUE, queue)
    else:
        where = Destination(DestinationKind.TOPIC, topic or message.manifest or "")
    return Outgoing(destination=where, delay=delay, message=message, due_at=due_at)
