"""The contract every saga store passes. Subclass with a ``make_store`` fixture.

``make_store()`` returns a new store on the same data each time it is
called (as two workers have), so the concurrency checks use two of them.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest

from melange.exceptions import SagaConflictError, SagaExistsError
from melange.models import Message
from melange.outgoing import Destination, DestinationKind, Outgoing
from melange.saga import SagaRecord, SagaStatus, SagaStore, Step

__all__ = ["SagaStoreContract", "SagaStoreFactory"]

#: ``make_store()``: a new store on the data every store of this test shares.
SagaStoreFactory = Callable[[], SagaStore]


def record(key: str | None = None, **changes: object) -> SagaRecord:
    now = time.time()
    base = SagaRecord(
        "Orders",
        uuid.uuid4().hex,
        key or uuid.uuid4().hex,
        '{"step": 1}',
        state_manifest="OrderState",
        state_serializer=5,
        version=1,
        created_at=now,
        updated_at=now,
    )
    return base.with_changes(**changes)


def pending(content: str, *, due_in: float = 0.0, delay: float = 0.0) -> Outgoing:
    message = Message(content=content, metadata={"saga_id": "x"}, manifest="M", serializer_id=1)
    where = Destination(DestinationKind.QUEUE, "q")
    return Outgoing(destination=where, delay=delay, message=message, due_at=time.time() + due_in)


class SagaStoreContract:
    """Every saga store: uniqueness, optimistic saves, an outbox written with the state."""

    def test_a_created_instance_is_found_by_id_and_by_key(
        self, make_store: SagaStoreFactory
    ) -> None:
        store = make_store()
        created = record(
            handled=("m-1",),
            compensations=(pending("undo"),),
            timeouts={"t-1": "Timeout"},
            timeline=(Step(1.5, "started"),),
        )
        store.create(created)
        assert store.load("Orders", created.saga_id) == created
        assert store.find("Orders", created.key) == created
        assert store.load("Other", created.saga_id) is None
        assert store.find("Orders", "missing") is None

    def test_one_instance_per_key_and_per_id(self, make_store: SagaStoreFactory) -> None:
        store = make_store()
        first = record()
        store.create(first)
        with pytest.raises(SagaExistsError):
            store.create(record(key=first.key))
        with pytest.raises(SagaExistsError):
            store.create(record(saga_id=first.saga_id))
        store.create(record(key=first.key, saga_type="Other"))  # keys are per saga type

    def test_racing_creators_make_one_instance(self, make_store: SagaStoreFactory) -> None:
        stores = [make_store() for _ in range(4)]
        key, won, lost = uuid.uuid4().hex, [], []
        start = threading.Barrier(len(stores))

        def create(store: SagaStore) -> None:
            start.wait()
            try:
                store.create(record(key=key))
                won.append(store)
            except SagaExistsError:
                lost.append(store)

        threads = [threading.Thread(target=create, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert (len(won), len(lost)) == (1, 3)

    def test_a_save_needs_the_version_it_was_loaded_at(self, make_store: SagaStoreFactory) -> None:
        store, other = make_store(), make_store()
        created = record()
        store.create(created)
        loaded = other.load("Orders", created.saga_id)
        assert loaded is not None
        store.save(created.with_changes(version=2, state='{"step": 2}'))
        with pytest.raises(SagaConflictError):
            other.save(loaded.with_changes(version=2, state='{"step": "lost"}'))
        current = store.load("Orders", created.saga_id)
        assert current is not None
        assert (current.version, current.state) == (2, '{"step": 2}')
        with pytest.raises(SagaConflictError):
            store.save(record(version=2))  # never created

    def test_concurrent_saves_lose_no_update(self, make_store: SagaStoreFactory) -> None:
        created = record(state="0")
        make_store().create(created)

        def bump(store: SagaStore) -> None:
            for _ in range(10):
                while True:
                    current = store.load("Orders", created.saga_id)
                    assert current is not None
                    bumped = current.with_changes(
                        version=current.version + 1, state=str(int(current.state) + 1)
                    )
                    try:
                        store.save(bumped)
                        break
                    except SagaConflictError:
                        continue

        threads = [threading.Thread(target=bump, args=(make_store(),)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = make_store().load("Orders", created.saga_id)
        assert final is not None
        assert (final.state, final.version) == ("40", 41)

    def test_outgoing_messages_are_kept_until_sent(self, make_store: SagaStoreFactory) -> None:
        store = make_store()
        created = record()
        first, second, later = pending("a"), pending("b"), pending("c", due_in=3600)
        store.create(created, [first, second])
        store.save(created.with_changes(version=2), [later])
        now = time.time()
        assert store.pending("Orders", created.saga_id, due_by=now) == [first, second]
        assert store.pending("Orders", created.saga_id, due_by=now + 7200) == [
            first,
            second,
            later,
        ]
        store.sent("Orders", created.saga_id, [first.built.message_id])
        assert make_store().pending("Orders", created.saga_id, due_by=now) == [second]

    def test_a_refused_save_stores_none_of_its_outgoing_messages(
        self, make_store: SagaStoreFactory
    ) -> None:
        store = make_store()
        created = record()
        store.create(created)
        with pytest.raises(SagaConflictError):
            store.save(created.with_changes(version=5), [pending("never")])
        with pytest.raises(SagaExistsError):
            store.create(record(key=created.key), [pending("never either")])
        assert store.pending("Orders", created.saga_id, due_by=time.time() + 1) == []
        assert store.due("Orders", time.time() + 1) == []

    def test_due_lists_every_instances_messages_in_due_order(
        self, make_store: SagaStoreFactory
    ) -> None:
        store = make_store()
        saga_type = f"Due{uuid.uuid4().hex[:6]}"
        early, late = record(saga_type=saga_type), record(saga_type=saga_type)
        store.create(late, [pending("late", due_in=20)])
        store.create(early, [pending("early", due_in=10)])
        now = time.time()
        assert store.due(saga_type, now) == []
        found = store.due(saga_type, now + 30)
        assert [(saga_id, p.built.content) for saga_id, p in found] == [
            (early.saga_id, "early"),
            (late.saga_id, "late"),
        ]
        assert len(store.due(saga_type, now + 30, limit=1)) == 1

    def test_instances_by_status_and_purge_of_finished_ones(
        self, make_store: SagaStoreFactory
    ) -> None:
        store = make_store()
        saga_type = f"List{uuid.uuid4().hex[:6]}"
        running = record(saga_type=saga_type)
        done = record(
            saga_type=saga_type, status=SagaStatus.COMPLETED, updated_at=time.time() - 100
        )
        store.create(running)
        store.create(done, [pending("left over")])
        assert {r.saga_id for r in store.instances(saga_type)} == {running.saga_id, done.saga_id}
        assert [r.saga_id for r in store.instances(saga_type, status=SagaStatus.RUNNING)] == [
            running.saga_id
        ]
        assert store.purge(saga_type, finished_before=time.time() - 200) == 0
        assert store.purge(saga_type, finished_before=time.time() - 50) == 1
        assert store.load(saga_type, done.saga_id) is None
        assert store.find(saga_type, done.key) is None
        assert store.due(saga_type, time.time() + 1) == []
        assert store.load(saga_type, running.saga_id) == running

    def test_close_is_idempotent(self, make_store: SagaStoreFactory) -> None:
        store = make_store()
        store.close()
        store.close()
