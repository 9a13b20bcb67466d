"""A saga's stored state across versions of its state class: upcast on load, refused when newer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from melange import MessageDispatcher, MessagePublisher, RetryPolicy, listener
from melange.backends.memory import InMemoryMessagingBackend
from melange.saga import Saga, SagaRecord, SQLiteSagaStore, starts
from melange.serializers import upcaster
from melange.testing import drain

STATE = "tests.saga_state_versions.cart"


class CartOpened(BaseModel):
    cart_id: str
    items: int


class ItemAdded(BaseModel):
    cart_id: str


class CartV1(BaseModel):
    """Version 1 of the state (no ``__melange_version__``): a count called ``items``."""

    __melange_manifest__ = STATE
    cart_id: str = ""
    items: int = 0


class CartV2(BaseModel):
    """Version 2: ``items`` became ``lines``, a list of what was added."""

    __melange_manifest__ = STATE
    __melange_version__ = 2
    cart_id: str = ""
    lines: list[str] = []


@upcaster(STATE, from_version=1)
def _items_became_lines(old: dict[str, Any]) -> dict[str, Any]:
    return {"cart_id": old["cart_id"], "lines": ["(before)"] * old.pop("items")}


class CartSagaV1(Saga[CartV1]):
    saga_type = "CartSaga"
    correlation = {CartOpened: "cart_id", ItemAdded: "cart_id"}  # noqa: RUF012

    @starts
    def on_opened(self, event: CartOpened) -> None:
        self.state.cart_id, self.state.items = event.cart_id, event.items

    @listener
    def on_added(self, event: ItemAdded) -> None:
        self.state.items += 1


class CartSagaV2(Saga[CartV2]):
    saga_type = "CartSaga"
    correlation = {CartOpened: "cart_id", ItemAdded: "cart_id"}  # noqa: RUF012

    @starts
    def on_opened(self, event: CartOpened) -> None:
        self.state.cart_id = event.cart_id
        self.state.lines = ["(opened)"] * event.items

    @listener
    def on_added(self, event: ItemAdded) -> None:
        self.state.lines.append("added")


class Service:
    """One deploy of the cart service: a saga class on the shared store and broker."""

    def __init__(self, saga_class: type[Saga[Any]], store: SQLiteSagaStore, backend: Any) -> None:
        self.publisher = MessagePublisher(backend)
        self.saga = saga_class(store, self.publisher, queue="carts", poll_interval=0.05)
        retry = RetryPolicy(immediate_attempts=1, max_deliveries=1, jitter=0)
        self.dispatcher = MessageDispatcher(backend, [self.saga], retry=retry)
        self.dispatcher.declare("carts")

    def handle(self, event: Any) -> None:
        self.publisher.publish(event, queue="carts")
        self.dispatcher.consume_loop("carts", idle_timeout=0.2)

    def close(self) -> None:
        self.saga.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteSagaStore]:
    with SQLiteSagaStore(tmp_path / "sagas.db") as made:
        yield made


def stored_state(store: SQLiteSagaStore, key: str) -> tuple[int, dict[str, Any]]:
    record = store.find("CartSaga", key)
    assert record is not None
    return record.state_version, json.loads(record.state)


def test_state_written_by_v1_is_upcast_when_v2_loads_it(store: SQLiteSagaStore) -> None:
    backend = InMemoryMessagingBackend()
    v1 = Service(CartSagaV1, store, backend)
    v1.handle(CartOpened(cart_id="c-1", items=2))
    v1.close()
    assert stored_state(store, "c-1") == (1, {"cart_id": "c-1", "items": 2})

    v2 = Service(CartSagaV2, store, backend)  # the next release, same store
    v2.handle(ItemAdded(cart_id="c-1"))
    v2.close()
    assert stored_state(store, "c-1") == (
        2,
        {"cart_id": "c-1", "lines": ["(before)", "(before)", "added"]},
    )
    assert drain(backend, "carts-dlq") == []


def test_state_written_by_v2_is_refused_by_v1_with_both_versions(
    store: SQLiteSagaStore,
) -> None:
    backend = InMemoryMessagingBackend()
    v2 = Service(CartSagaV2, store, backend)
    v2.handle(CartOpened(cart_id="c-2", items=1))
    v2.close()
    v1 = Service(CartSagaV1, store, backend)  # rolled back: it must not read v2 as v1
    v1.handle(ItemAdded(cart_id="c-2"))
    v1.close()
    [dead] = drain(backend, "carts-dlq")
    reason = dead.metadata["error_message"]
    assert "no longer reads" in reason
    assert f"'{STATE}' version 2 is newer than this consumer's CartV1, version 1" in reason
    assert stored_state(store, "c-2") == (2, {"cart_id": "c-2", "lines": ["(opened)"]})


def test_a_record_stored_before_state_versions_reads_as_version_1() -> None:
    record = SagaRecord("CartSaga", "id-1", "c-3", state='{"cart_id": "c-3", "items": 4}')
    body = json.loads(record.body_json())
    assert body.pop("state_version") == 1
    old = SagaRecord.from_columns("CartSaga", "id-1", "c-3", "running", 3, 0.0, json.dumps(body))
    assert (old.state_version, old.version) == (1, 3)
