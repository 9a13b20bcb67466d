"""The async idempotency and saga stores pass the whole store contracts, from an event loop.

``OnLoop`` is a sync view of an async store whose calls run on one event
loop in a thread of its own, so ``IdempotencyStoreContract`` (concurrent
claims from threads included) checks the async stores as it checks the
sync ones; a Redis claim made by one flavour is honoured by the other.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from melange import Consumer, Message, listener
from melange.aio import (
    AsyncIdempotencyStore,
    AsyncMessageDispatcher,
    AsyncMessagePublisher,
    AsyncRedisIdempotencyStore,
    BridgedIdempotencyStore,
    BridgedSagaStore,
    from_url,
    saga_store_from_url,
    store_from_url,
)
from melange.exceptions import IdempotencyError
from melange.idempotency import InMemoryIdempotencyStore, SQLiteIdempotencyStore
from melange.idempotency.base import Claim, IdempotencyStore
from melange.outcomes import OutcomeKind
from melange.outgoing import Outgoing
from melange.saga import (
    InMemorySagaStore,
    PostgresSagaStore,
    SagaRecord,
    SagaStatus,
    SagaStore,
)
from melange.testing import (
    IdempotencyStoreContract,
    SagaStoreContract,
    SagaStoreFactory,
    StoreFactory,
    unique_name,
)
from tests.support import free_port

_T = TypeVar("_T")


class Loop:
    """An event loop running in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class OnLoop(IdempotencyStore):
    """A sync view of an async store (for the contract)."""

    def __init__(self, store: AsyncIdempotencyStore, loop: Loop) -> None:
        super().__init__(ttl_seconds=store.ttl_seconds, lease_seconds=store.lease_seconds)
        self.store, self.loop = store, loop
        self.closed = False

    def claim(self, consumer_id: str, message_id: str, lease_seconds: float | None = None) -> Claim:
        return self.loop.run(self.store.claim(consumer_id, message_id, lease_seconds))

    def renew(self, consumer_id: str, message_id: str, lease_seconds: float) -> None:
        self.loop.run(self.store.renew(consumer_id, message_id, lease_seconds))

    def complete(self, consumer_id: str, message_id: str) -> None:
        self.loop.run(self.store.complete(consumer_id, message_id))

    def release(self, consumer_id: str, message_id: str) -> None:
        self.loop.run(self.store.release(consumer_id, message_id))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.run(self.store.close())


@pytest.fixture
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.stop()


class TestBridgedInMemoryStore(IdempotencyStoreContract):
    shared_by_workers = False

    @pytest.fixture
    def make_store(self, loop: Loop) -> StoreFactory:
        def make(**options: Any) -> IdempotencyStore:
            return OnLoop(BridgedIdempotencyStore(InMemoryIdempotencyStore(**options)), loop)

        return make


class TestBridgedSQLiteStore(IdempotencyStoreContract):
    @pytest.fixture
    def make_store(self, loop: Loop, tmp_path: Path) -> StoreFactory:
        def make(**options: Any) -> IdempotencyStore:
            store = SQLiteIdempotencyStore(tmp_path / "claims.db", **options)
            return OnLoop(BridgedIdempotencyStore(store), loop)

        return make


@pytest.mark.redis
class TestAsyncRedisStore(IdempotencyStoreContract):
    @pytest.fixture
    def make_store(self, loop: Loop, redis_url: str) -> Iterator[StoreFactory]:
        prefix = f"test:{uuid.uuid4().hex}:"
        stores: list[OnLoop] = []

        def make(**options: Any) -> IdempotencyStore:
            store = AsyncRedisIdempotencyStore(redis_url, prefix=prefix, **options)
            stores.append(OnLoop(store, loop))
            return stores[-1]

        yield make
        for store in stores:
            store.close()


@pytest.mark.redis
def test_a_redis_claim_is_honoured_by_the_sync_store_and_back(redis_url: str) -> None:
    from melange.idempotency.redis import RedisIdempotencyStore

    prefix = f"test:{uuid.uuid4().hex}:"
    sync = RedisIdempotencyStore(redis_url, prefix=prefix)

    async def scenario() -> None:
        store = store_from_url(f"{redis_url}?prefix={prefix}&lease_seconds=5")
        assert isinstance(store, AsyncRedisIdempotencyStore)
        assert store.lease_seconds == 5
        try:
            assert await store.claim("billing", "m-1") is Claim.ACQUIRED
            assert sync.claim("billing", "m-1") is Claim.IN_PROGRESS
            await store.complete("billing", "m-1")
            assert sync.claim("billing", "m-1") is Claim.DONE
            assert sync.claim("billing", "m-2") is Claim.ACQUIRED
            assert await store.claim("billing", "m-2") is Claim.IN_PROGRESS
        finally:
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        sync.close()


@pytest.mark.redis
def test_an_unreachable_redis_is_an_error_not_a_silent_pass() -> None:
    async def scenario() -> None:
        store = AsyncRedisIdempotencyStore(f"redis://127.0.0.1:{free_port()}/0")
        with pytest.raises(IdempotencyError, match="redis"):
            await store.claim("billing", "m-1")
        await store.close()

    asyncio.run(scenario())


class Paid(BaseModel):
    order_id: str


class Charges(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.charged: list[str] = []

    @listener
    async def on_paid(self, event: Paid) -> None:
        await asyncio.sleep(0.01)
        self.charged.append(event.order_id)


@pytest.mark.parametrize(
    "kind", ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]
)
def test_the_async_dispatcher_with_an_async_store_runs_a_redelivered_message_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "memory":
        url = "memory://"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'claims.db'}"
    else:
        url = f"{request.getfixturevalue('redis_url')}?prefix=test:{uuid.uuid4().hex}:"

    async def scenario() -> None:
        store = store_from_url(url)
        async with from_url("memory://") as backend:
            charges = Charges()
            dispatcher = AsyncMessageDispatcher(backend, [charges], idempotency=store)
            queue = unique_name("q")
            await dispatcher.declare(queue)
            [sent] = await AsyncMessagePublisher(backend).publish_batch(
                [Paid(order_id="o-1")], queue=queue
            )
            copy = Message(
                content=sent.content,
                message_id=sent.message_id,
                manifest=sent.manifest,
                metadata=sent.metadata,
                serializer_id=sent.serializer_id,
            )
            await backend.publish_to_queue(copy, await backend.get_queue(queue))
            await dispatcher.consume_loop(queue, max_messages=2, max_concurrency=1)
            assert charges.charged == ["o-1"]
            assert dispatcher.outcomes[OutcomeKind.ACK] + dispatcher.outcomes[OutcomeKind.SKIP] == 2
        await store.close()

    asyncio.run(scenario())


# -- saga stores -------------------------------------------------------------------------


class SagaStoreOnLoop(SagaStore):
    """A sync view of a ``BridgedSagaStore`` whose calls are awaited on ``loop``."""

    def __init__(self, store: BridgedSagaStore, loop: Loop) -> None:
        self.store, self.loop = store, loop
        self.closed = False

    def create(self, record: SagaRecord, outgoing: Sequence[Outgoing] = ()) -> None:
        self.loop.run(self.store.create(record, outgoing))

    def save(self, record: SagaRecord, outgoing: Sequence[Outgoing] = ()) -> None:
        self.loop.run(self.store.save(record, outgoing))

    def load(self, saga_type: str, saga_id: str) -> SagaRecord | None:
        return self.loop.run(self.store.load(saga_type, saga_id))

    def find(self, saga_type: str, key: str) -> SagaRecord | None:
        return self.loop.run(self.store.find(saga_type, key))

    def pending(self, saga_type: str, saga_id: str, *, due_by: float) -> list[Outgoing]:
        return self.loop.run(self.store.pending(saga_type, saga_id, due_by=due_by))

    def sent(self, saga_type: str, saga_id: str, message_ids: Iterable[str]) -> None:
        self.loop.run(self.store.sent(saga_type, saga_id, message_ids))

    def due(self, saga_type: str, now: float, limit: int = 100) -> list[tuple[str, Outgoing]]:
        return self.loop.run(self.store.due(saga_type, now, limit))

    def instances(
        self, saga_type: str, *, status: SagaStatus | None = None, limit: int = 1000
    ) -> list[SagaRecord]:
        return self.loop.run(self.store.instances(saga_type, status=status, limit=limit))

    def purge(self, saga_type: str, *, finished_before: float) -> int:
        return self.loop.run(self.store.purge(saga_type, finished_before=finished_before))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.run(self.store.close())


class TestBridgedInMemorySagaStore(SagaStoreContract):
    @pytest.fixture
    def make_store(self, loop: Loop) -> SagaStoreFactory:
        shared = SagaStoreOnLoop(BridgedSagaStore(InMemorySagaStore()), loop)
        return lambda: shared


class TestBridgedSQLiteSagaStore(SagaStoreContract):
    @pytest.fixture
    def make_store(self, loop: Loop, tmp_path: Path) -> Iterator[SagaStoreFactory]:
        made: list[SagaStore] = []

        def make() -> SagaStore:
            url = f"sqlite:///{tmp_path / 'sagas.db'}"
            made.append(SagaStoreOnLoop(saga_store_from_url(url), loop))
            return made[-1]

        yield make
        for store in made:
            store.close()


@pytest.mark.postgres
class TestBridgedPostgresSagaStore(SagaStoreContract):
    @pytest.fixture
    def make_store(self, loop: Loop, postgres_database: str) -> Iterator[SagaStoreFactory]:
        made: list[SagaStore] = []

        def make() -> SagaStore:
            made.append(
                SagaStoreOnLoop(BridgedSagaStore(PostgresSagaStore(postgres_database)), loop)
            )
            return made[-1]

        yield make
        for store in made:
            store.close()
