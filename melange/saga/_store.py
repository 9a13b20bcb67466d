"""The saga store interface: instances with optimistic versions, and their outbox."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Self

from melange.outgoing import Outgoing
from melange.saga._records import SagaRecord, SagaStatus

__all__ = ["SagaStore"]


class SagaStore(abc.ABC):
    """Keeps saga instances and the messages they decided to send.

    An instance is unique per ``(saga_type, saga_id)`` and per
    ``(saga_type, key)``. A write stores the instance and its outgoing
    messages together (one transaction), and only if nobody saved the
    instance since it was loaded: each save raises the version by one.
    Outgoing messages stay until ``sent`` removes them.

    A store whose ``outbox_url`` is set writes them into the transactional
    outbox of its database instead (``melange.outbox``): a ``Relay`` on that
    URL sends them, and ``pending``/``due`` have nothing to return.
    """

    #: The database whose ``melange_outbox`` holds what instances send, or ``None``.
    outbox_url: str | None = None

    @abc.abstractmethod
    def create(self, record: SagaRecord, outgoing: Sequence[Outgoing] = ()) -> None:
        """Store a new instance (``record.version`` is 1) with its outgoing messages.

        Raises:
            SagaExistsError: the saga type already has an instance with that key or id.
            SagaStoreError: the store cannot be used.
        """

    @abc.abstractmethod
    def save(self, record: SagaRecord, outgoing: Sequence[Outgoing] = ()) -> None:
        """Replace the instance saved at ``record.version - 1``; add the outgoing messages.

        Raises:
            SagaConflictError: the stored version is another one (or the instance is gone).
            SagaStoreError: the store cannot be used.
        """

    @abc.abstractmethod
    def load(self, saga_type: str, saga_id: str) -> SagaRecord | None:
        """Return the instance with this id, or ``None``."""

    @abc.abstractmethod
    def find(self, saga_type: str, key: str) -> SagaRecord | None:
        """Return the instance with this correlation key, or ``None``."""

    @abc.abstractmethod
    def pending(self, saga_type: str, saga_id: str, *, due_by: float) -> list[Outgoing]:
        """Return the instance's outgoing messages due by ``due_by`` (wall clock), oldest first."""

    @abc.abstractmethod
    def sent(self, saga_type: str, saga_id: str, message_ids: Iterable[str]) -> None:
        """Forget outgoing messages that have left."""

    @abc.abstractmethod
    def due(self, saga_type: str, now: float, limit: int = 100) -> list[tuple[str, Outgoing]]:
        """Return ``(saga_id, message)`` for outgoing messages of any instance due by ``now``."""

    @abc.abstractmethod
    def instances(
        self, saga_type: str, *, status: SagaStatus | None = None, limit: int = 1000
    ) -> list[SagaRecord]:
        """Return instances of a saga type (of one status, if given), newest first."""

    @abc.abstractmethod
    def purge(self, saga_type: str, *, finished_before: float) -> int:
        """Delete instances that finished before ``finished_before``; return how many."""

    def close(self) -> None:  # noqa: B027 - stores without connections have nothing to close
        """Release the store's connections; safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
