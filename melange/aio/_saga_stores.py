"""Saga stores for asyncio: ``SagaStore``'s methods as coroutines.

A ``Saga`` consumed by ``AsyncMessageDispatcher`` uses its (sync) store from
worker threads; async code that reads or manages instances (an endpoint
showing an order's saga, say) uses ``BridgedSagaStore`` over the same store,
so the loop never waits on SQLite's file or PostgreSQL's socket.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self, TypeVar

from melange._bridge import in_thread
from melange.outgoing import Outgoing
from melange.saga import SagaRecord, SagaStatus, SagaStore
from melange.saga import saga_store_from_url as sync_saga_store_from_url

__all__ = ["BridgedSagaStore", "saga_store_from_url"]

_T = TypeVar("_T")


class BridgedSagaStore:
    """``sync``'s methods as coroutines, run on ``threads`` threads of its own.

    ``sync`` is the store to give a ``Saga``; both see the same instances.
    """

    def __init__(self, sync: SagaStore, *, threads: int = 4) -> None:
        self.sync = sync
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="melange-aio-saga")

    async def _run(self, function: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await in_thread(self._pool, function, *args, **kwargs)

    async def create(self, record: SagaRecord, outgoing: Sequence[Outgoing] = ()) -> None:
        """See ``SagaStore.create``."""
        await self._run(self.sync.create, record, outgoing)

    async def save(self, record: SagaRecord, outgoing: Sequence[Outgoing] = ()) -> None:
        """See ``SagaStore.save``."""
        await self._run(self.sync.save, record, outgoing)

    async def load(self, saga_type: str, saga_id: str) -> SagaRecord | None:
        """See ``SagaStore.load``."""
        return await self._run(self.sync.load, saga_type, saga_id)

    async def find(self, saga_type: str, key: str) -> SagaRecord | None:
        """See ``SagaStore.find``."""
        return await self._run(self.sync.find, saga_type, key)

    async def pending(self, saga_type: str, saga_id: str, *, due_by: float) -> list[Outgoing]:
        """See ``SagaStore.pending``."""
        return await self._run(self.sync.pending, saga_type, saga_id, due_by=due_by)

    async def sent(self, saga_type: str, saga_id: str, message_ids: Iterable[str]) -> None:
        """See ``SagaStore.sent``."""
        await self._run(self.sync.sent, saga_type, saga_id, list(message_ids))

    async def due(self, saga_type: str, now: float, limit: int = 100) -> list[tuple[str, Outgoing]]:
        """See ``SagaStore.due``."""
        return await self._run(self.sync.due, saga_type, now, limit)

    async def instances(
        self, saga_type: str, *, status: SagaStatus | None = None, limit: int = 1000
    ) -> list[SagaRecord]:
        """See ``SagaStore.instances``."""
        return await self._run(self.sync.instances, saga_type, status=status, limit=limit)

    async def purge(self, saga_type: str, *, finished_before: float) -> int:
        """See ``SagaStore.purge``."""
        return await self._run(self.sync.purge, saga_type, finished_before=finished_before)

    async def close(self) -> None:
        """Close the store; safe to call more than once."""
        await self._run(self.sync.close)
        self._pool.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def saga_store_from_url(url: str) -> BridgedSagaStore:
    """Build the store ``melange.saga.saga_store_from_url(url)`` builds, bridged."""
    return BridgedSagaStore(sync_saga_store_from_url(url))
