"""``melange.testing`` for users' tests: the pytest plugin's fixtures, the publish recorder."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.exceptions import QueueNotFoundError
from melange.middleware import DestinationKind, hold_publishes
from melange.testing import PublishRecorder, link_synchronously
from tests.events import ExpressOrderCreated, OrderCreated, OrderPaid


def test_the_plugin_is_registered_under_pytest11() -> None:
    [plugin] = [p for p in entry_points(group="pytest11") if p.name == "melange"]
    assert plugin.value == "melange.testing.plugin"


def test_melange_backend_is_a_fresh_in_memory_backend(
    melange_backend: InMemoryMessagingBackend,
) -> None:
    assert isinstance(melange_backend, InMemoryMessagingBackend)
    queue, _ = melange_backend.declare_queue("q")
    assert melange_backend.queue_depth(queue) == 0


def test_melange_sqlite_backend_lives_in_the_tests_temporary_folder(
    melange_sqlite_backend: SQLiteBackend, tmp_path_factory: pytest.TempPathFactory
) -> None:
    assert melange_sqlite_backend.path.startswith(str(tmp_path_factory.getbasetemp()))
    queue, _ = melange_sqlite_backend.declare_queue("q")
    assert melange_sqlite_backend.retrieve_messages(queue) == []


def test_the_recorder_sees_events_by_type_destination_and_headers(
    melange_publisher: MessagePublisher,
    melange_recorder: PublishRecorder,
    melange_backend: InMemoryMessagingBackend,
) -> None:
    melange_backend.declare_queue("receipts")
    melange_publisher.publish(OrderCreated(order_id="o-1"), headers={"tenant": "acme"})
    melange_publisher.publish(ExpressOrderCreated(order_id="o-2"))
    melange_publisher.publish_batch([OrderPaid(order_id="o-1")], queue="receipts")
    assert [e.order_id for e in melange_recorder.published(OrderCreated)] == ["o-1", "o-2"]
    assert melange_recorder.published(ExpressOrderCreated) == [ExpressOrderCreated(order_id="o-2")]
    assert melange_recorder.published(topic="OrderCreated") == [OrderCreated(order_id="o-1")]
    assert melange_recorder.published(queue="receipts") == [OrderPaid(order_id="o-1")]
    first, _, paid = melange_recorder.records
    assert first.headers["tenant"] == "acme"
    assert first.headers["correlation_id"] == first.message.message_id
    assert (paid.destination.kind, paid.destination.name) == (DestinationKind.QUEUE, "receipts")
    # The messages really went to the broker.
    [received] = melange_backend.retrieve_messages(melange_backend.get_queue("receipts"))
    assert received.message_id == paid.message.message_id
    melange_recorder.clear()
    assert melange_recorder.records == []


def test_the_recorder_leaves_out_what_was_never_sent(
    melange_publisher: MessagePublisher, melange_recorder: PublishRecorder
) -> None:
    with pytest.raises(QueueNotFoundError):
        melange_publisher.publish(OrderPaid(order_id="lost"), queue="missing")
    with hold_publishes() as held:
        melange_publisher.publish(OrderPaid(order_id="discarded"))
        assert melange_recorder.records == []
    with hold_publishes() as held:
        melange_publisher.publish(OrderPaid(order_id="kept"))
        assert melange_recorder.records == []
        held.release()
    assert [e.order_id for e in melange_recorder.published()] == ["kept"]


def test_a_recorded_service_publishes_what_its_handler_decided(
    melange_backend: InMemoryMessagingBackend, melange_recorder: PublishRecorder
) -> None:
    publisher = MessagePublisher(melange_backend, middleware=[melange_recorder])

    class Billing(Consumer):
        @listener
        def on_created(self, event: OrderCreated) -> None:
            publisher.publish(OrderPaid(order_id=event.order_id))

    dispatcher = link_synchronously("billing", [Billing()], melange_backend)
    assert isinstance(dispatcher, MessageDispatcher)
    MessagePublisher(melange_backend).publish(OrderCreated(order_id="o-9"))
    [paid] = melange_recorder.matching(OrderPaid)
    assert paid.event == OrderPaid(order_id="o-9")
    # The handler ran inside publish, and its message was acknowledged.
    assert melange_backend.queue_depth(melange_backend.get_queue("billing")) == 0
