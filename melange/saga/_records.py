"""What a saga store keeps: instances, their outgoing messages, and how they read as JSON."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from melange.outgoing import Outgoing

__all__ = ["SagaRecord", "SagaStatus", "Step"]


class SagaStatus(enum.Enum):
    """Where a saga instance is in its life."""

    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        """Return whether the instance takes no more events."""
        return self in (SagaStatus.COMPLETED, SagaStatus.FAILED)


@dataclass(frozen=True, slots=True)
class Step:
    """One line of an instance's timeline."""

    at: float
    what: str


@dataclass(frozen=True, slots=True)
class SagaRecord:
    """One saga instance as stored.

    ``state`` is the serialized state (``state_manifest``/``state_serializer``
    say how to read it back, ``state_version`` which ``__melange_version__``
    of the state class wrote it: older ones are upcast on load); ``version``
    grows by one with every save;
    ``handled`` holds the ids of the messages already applied (newest last,
    bounded); ``compensations`` the undo commands, oldest first; ``timeouts``
    maps each live timeout token to the event it delivers.
    """

    saga_type: str
    saga_id: str
    key: str
    state: str
    state_manifest: str | None = None
    state_serializer: int | None = None
    state_version: int = 1
    status: SagaStatus = SagaStatus.RUNNING
    version: int = 0
    handled: tuple[str, ...] = ()
    compensations: tuple[Outgoing, ...] = ()
    timeouts: dict[str, str] = field(default_factory=dict)
    timeline: tuple[Step, ...] = ()
    created_at: float = 0.0
    updated_at: float = 0.0

    def with_changes(self, **changes: Any) -> SagaRecord:
        """Return a copy with some fields replaced."""
        return replace(self, **changes)

    def insert_row(self) -> tuple[object, ...]:
        """Return the stores' ``INSERT`` values: type, id, key, status, version, times, body."""
        return (
            self.saga_type,
            self.saga_id,
            self.key,
            self.status.value,
            self.version,
            self.created_at,
            self.updated_at,
            self.body_json(),
        )

    def update_row(self) -> tuple[object, ...]:
        """Return the stores' optimistic ``UPDATE`` values, ending with the version it replaces."""
        return (
            self.status.value,
            self.version,
            self.updated_at,
            self.body_json(),
            self.saga_type,
            self.saga_id,
            self.version - 1,
        )

    def outbox_rows(self, outgoing: Sequence[Outgoing]) -> list[tuple[object, ...]]:
        """Return the stores' outbox values: type, id, message id, due time, body."""
        return [
            (self.saga_type, self.saga_id, p.built.message_id, p.due_at, p.to_json())
            for p in outgoing
        ]

    def body_json(self) -> str:
        """Return the fields a store keeps in one JSON column (all but the indexed ones)."""
        return json.dumps(
            {
                "state": self.state,
                "state_manifest": self.state_manifest,
                "state_serializer": self.state_serializer,
                "state_version": self.state_version,
                "handled": list(self.handled),
                "compensations": [c.to_json() for c in self.compensations],
                "timeouts": self.timeouts,
                "timeline": [[s.at, s.what] for s in self.timeline],
                "created_at": self.created_at,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> SagaRecord:
        """Rebuild a record from a row: type, id, key, status, version, updated_at, body."""
        saga_type, saga_id, key, status, version, updated_at, body = row
        return cls.from_columns(saga_type, saga_id, key, status, version, updated_at, body)

    @classmethod
    def from_columns(  # noqa: PLR0917 - a store's columns, in their order
        cls,
        saga_type: str,
        saga_id: str,
        key: str,
        status: str,
        version: int,
        updated_at: float,
        body: str,
    ) -> SagaRecord:
        """Rebuild a record from a store's columns and ``body_json()``."""
        data = json.loads(body)
        return cls(
            saga_type=saga_type,
            saga_id=saga_id,
            key=key,
            state=data["state"],
            state_manifest=data["state_manifest"],
            state_serializer=data["state_serializer"],
            state_version=data.get("state_version", 1),  # records from before versions: 1
            status=SagaStatus(status),
            version=int(version),
            handled=tuple(data["handled"]),
            compensations=tuple(Outgoing.from_json(c) for c in data["compensations"]),
            timeouts=dict(data["timeouts"]),
            timeline=tuple(Step(float(at), what) for at, what in data["timeline"]),
            created_at=float(data["created_at"]),
            updated_at=float(updated_at),
        )
