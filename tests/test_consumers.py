from __future__ import annotations

from typing import Any

import pytest

from melange import Consumer, Message, listener
from melange.exceptions import ListenerDefinitionError
from tests.events import (
    ExpressOrderCreated,
    InvoiceSent,
    OrderCancelled,
    OrderCreated,
    OrderEvent,
    OrderPaid,
)

ENVELOPE = Message(content="{}")


class Recorder(Consumer):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[str, Any]] = []


class Orders(Recorder):
    @listener
    def on_created(self, event: OrderCreated) -> None:
        self.calls.append(("created", event))

    @listener
    def on_closed(self, event: OrderPaid | OrderCancelled, message: Message) -> None:
        self.calls.append(("closed", (event, message.message_id)))

    @listener
    def on_any_order(self, event: OrderEvent) -> None:
        self.calls.append(("any", event))


def test_a_class_annotation_routes_that_class() -> None:
    orders = Orders()
    event = OrderCreated(order_id="1")
    orders.handle(event, ENVELOPE)
    assert orders.calls == [("created", event)]


def test_a_union_routes_each_member_and_passes_the_message() -> None:
    orders = Orders()
    paid, cancelled = OrderPaid(order_id="1"), OrderCancelled(order_id="2")
    orders.handle(paid, ENVELOPE)
    orders.handle(cancelled, ENVELOPE)
    assert orders.calls == [
        ("closed", (paid, ENVELOPE.message_id)),
        ("closed", (cancelled, ENVELOPE.message_id)),
    ]


def test_the_most_specific_listener_wins() -> None:
    orders = Orders()
    express = ExpressOrderCreated(order_id="3")
    orders.handle(express, ENVELOPE)
    assert orders.calls == [("created", express)]


def test_a_base_class_listener_receives_unclaimed_subclasses() -> None:
    class Other(OrderEvent):
        pass

    orders = Orders()
    other = Other(order_id="4")
    orders.handle(other, ENVELOPE)
    assert orders.calls == [("any", other)]


def test_accepts_and_accepted_types() -> None:
    orders = Orders()
    assert set(orders.accepted_types()) == {OrderCreated, OrderPaid, OrderCancelled, OrderEvent}
    assert orders.accepts(ExpressOrderCreated)
    assert not orders.accepts(InvoiceSent)
    with pytest.raises(LookupError):
        orders.handle(InvoiceSent(invoice_id="i"), ENVELOPE)


def test_a_listener_without_annotation_fails_at_definition() -> None:
    with pytest.raises(ListenerDefinitionError, match="no annotation"):

        class Broken(Consumer):
            @listener
            def on_event(self, event):  # type: ignore[no-untyped-def]
                pass


def test_two_listeners_claiming_one_type_fail_at_definition() -> None:
    with pytest.raises(ListenerDefinitionError, match="both claim OrderPaid"):

        class Broken(Consumer):
            @listener
            def first(self, event: OrderPaid) -> None:
                pass

            @listener
            def second(self, event: OrderPaid | OrderCancelled) -> None:
                pass


def test_a_second_parameter_must_be_the_message() -> None:
    with pytest.raises(ListenerDefinitionError, match="annotated Message"):

        class Broken(Consumer):
            @listener
            def on_event(self, event: OrderPaid, extra: int) -> None:
                pass


def test_a_subclass_overrides_a_listener_by_name() -> None:
    class Child(Orders):
        @listener
        def on_created(self, event: OrderCreated) -> None:
            self.calls.append(("child", event))

    child = Child()
    event = OrderCreated(order_id="5")
    child.handle(event, ENVELOPE)
    assert child.calls == [("child", event)]


def test_on_message_callable_accepts_everything_without_annotation() -> None:
    seen: list[Any] = []
    consumer = Consumer(on_message=seen.append)
    consumer.handle({"a": 1}, ENVELOPE)
    consumer.handle(OrderPaid(order_id="6"), ENVELOPE)
    assert seen == [{"a": 1}, OrderPaid(order_id="6")]


def test_on_message_callable_routes_by_its_annotation() -> None:
    seen: list[OrderPaid] = []

    def on_paid(event: OrderPaid) -> None:
        seen.append(event)

    consumer = Consumer(on_message=on_paid)
    assert consumer.accepts(OrderPaid)
    assert not consumer.accepts(OrderCreated)


def test_consumer_id_defaults_to_the_class_path() -> None:
    assert Orders().consumer_id == f"{__name__}.Orders"
    assert Orders(consumer_id="billing").consumer_id == "billing"
