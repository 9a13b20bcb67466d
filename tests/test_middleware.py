"""Middleware: order, before and after in one scope, outcomes seen, publishes held back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from melange import Consumer, Message, MessageDispatcher, MessagePublisher, Middleware, listener
from melange.backends.memory import InMemoryMessagingBackend
from melange.middleware import ConsumerCall, Handling, Publishing, hold_publishes
from melange.outcomes import CallResult, Outcome, OutcomeKind
from melange.policies import RetryPolicy
from tests.events import OrderCreated, OrderPaid

ROOT = Path(__file__).resolve().parent.parent
NO_RETRY = RetryPolicy.none()


class Recording(Middleware):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log
        self.outcomes: list[Outcome] = []
        self.results: list[CallResult] = []

    def handle_message(self, handling: Handling, call_next: Callable[[], Outcome]) -> Outcome:
        self.log.append(f"{self.name}:before")
        outcome = call_next()
        self.log.append(f"{self.name}:after")
        self.outcomes.append(outcome)
        return outcome

    def call_consumer(self, call: ConsumerCall, call_next: Callable[[], CallResult]) -> CallResult:
        self.log.append(f"{self.name}:consumer:{call.consumer.consumer_id}")
        result = call_next()
        self.results.append(result)
        return result

    def build_message(self, publishing: Publishing, call_next: Callable[[], Message]) -> Message:
        self.log.append(f"{self.name}:build")
        publishing.headers[f"by_{self.name}"] = "yes"
        return call_next()

    def send_message(self, publishing: Publishing, call_next: Callable[[], None]) -> None:
        assert publishing.message is not None
        self.log.append(f"{self.name}:send:{publishing.message.header(f'by_{self.name}')}")
        call_next()


class Billing(Consumer):
    def __init__(self, log: list[str], *, fail: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log, self.fail = log, fail
        self.publisher: MessagePublisher | None = None

    @listener
    def on_created(self, event: OrderCreated) -> None:
        self.log.append(f"handler:{self.consumer_id}")
        if self.publisher is not None:
            self.publisher.publish(OrderPaid(order_id=event.order_id), queue="receipts")
        if self.fail:
            raise RuntimeError("boom")


@pytest.fixture
def backend() -> Iterator[InMemoryMessagingBackend]:
    with InMemoryMessagingBackend() as backend:
        backend.declare_queue("receipts")
        yield backend


def run_one(
    backend: InMemoryMessagingBackend, consumers: list[Consumer], middleware: list[Middleware]
) -> MessageDispatcher:
    dispatcher = MessageDispatcher(
        backend, consumers=consumers, middleware=middleware, retry=NO_RETRY
    )
    dispatcher.declare("billing")
    MessagePublisher(backend).publish(OrderCreated(order_id="o-1"))
    assert dispatcher.consume_loop("billing", idle_timeout=0) == 1
    return dispatcher


def test_the_first_middleware_is_outermost_and_wraps_each_consumer(
    backend: InMemoryMessagingBackend,
) -> None:
    log: list[str] = []
    consumers: list[Consumer] = [Billing(log, consumer_id="a"), Billing(log, consumer_id="b")]
    run_one(backend, consumers, [Recording("outer", log), Recording("inner", log)])
    assert log == [
        "outer:before",
        "inner:before",
        "outer:consumer:a",
        "inner:consumer:a",
        "handler:a",
        "outer:consumer:b",
        "inner:consumer:b",
        "handler:b",
        "inner:after",
        "outer:after",
    ]


def test_middleware_sees_the_outcome_and_the_consumer_result(
    backend: InMemoryMessagingBackend,
) -> None:
    log: list[str] = []
    seen = Recording("m", log)
    run_one(backend, [Billing(log, fail=True)], [seen])
    [outcome] = seen.outcomes
    assert outcome.kind is OutcomeKind.DEAD_LETTER
    assert "boom" in outcome.reason
    [result] = seen.results
    assert result.failed
    assert isinstance(result.error, RuntimeError)
    [dead] = backend.retrieve_messages(backend.get_queue("billing-dlq"))
    assert dead.metadata["error_message"] == "boom"


class Postpone(Middleware):
    def handle_message(self, handling: Handling, call_next: Callable[[], Outcome]) -> Outcome:
        outcome = call_next()
        if outcome.kind is OutcomeKind.DEAD_LETTER:
            return Outcome.release(30, "postponed by middleware")
        return outcome


def test_middleware_may_replace_the_outcome(backend: InMemoryMessagingBackend) -> None:
    run_one(backend, [Billing([], fail=True)], [Postpone()])
    assert backend.retrieve_messages(backend.get_queue("billing-dlq")) == []
    queue = backend.get_queue("billing")
    assert backend.retrieve_messages(queue) == []  # released for 30 s: not visible yet
    assert backend.queue_depth(queue) == 1


class PublishAfterSuccess(Middleware):
    def __init__(self, backend: InMemoryMessagingBackend) -> None:
        self.backend = backend
        self.depth_inside: list[int] = []
        self.held: list[list[Message]] = []

    def handle_message(self, handling: Handling, call_next: Callable[[], Outcome]) -> Outcome:
        with hold_publishes() as held:
            outcome = call_next()
            self.held.append(held.messages)
            self.depth_inside.append(self.backend.queue_depth(self.backend.get_queue("receipts")))
            if outcome.kind is OutcomeKind.ACK:
                held.release()
        return outcome


@pytest.mark.parametrize("fail", [False, True])
def test_publishes_are_held_until_the_scope_ends(
    backend: InMemoryMessagingBackend, fail: bool
) -> None:
    billing = Billing([], fail=fail)
    billing.publisher = MessagePublisher(backend)
    holding = PublishAfterSuccess(backend)
    run_one(backend, [billing], [holding])
    assert holding.depth_inside == [0]
    [held] = holding.held
    assert [m.manifest for m in held] == ["OrderPaid"]
    receipts = backend.retrieve_messages(backend.get_queue("receipts"))
    assert [m.message_id for m in receipts] == ([] if fail else [held[0].message_id])


def test_held_publishes_keep_the_causation_of_the_handled_message(
    backend: InMemoryMessagingBackend,
) -> None:
    billing = Billing([])
    billing.publisher = MessagePublisher(backend)
    run_one(backend, [billing], [PublishAfterSuccess(backend)])
    [receipt] = backend.retrieve_messages(backend.get_queue("receipts"))
    assert receipt.metadata["causation_id"] != receipt.message_id


def test_publisher_middleware_wraps_build_then_send(backend: InMemoryMessagingBackend) -> None:
    log: list[str] = []
    publisher = MessagePublisher(
        backend, middleware=[Recording("outer", log), Recording("inner", log)]
    )
    message = publisher.publish(OrderPaid(order_id="o-1"), queue="receipts")
    assert log == ["outer:build", "inner:build", "outer:send:yes", "inner:send:yes"]
    assert (message.metadata["by_outer"], message.metadata["by_inner"]) == ("yes", "yes")
    [received] = backend.retrieve_messages(backend.get_queue("receipts"))
    assert received.message_id == message.message_id


class Refuse(Middleware):
    def send_message(self, publishing: Publishing, call_next: Callable[[], None]) -> None:
        if publishing.destination is not None and publishing.destination.name == "receipts":
            raise PermissionError("receipts are closed")
        call_next()


def test_a_send_hook_sees_the_destination_and_can_refuse(
    backend: InMemoryMessagingBackend,
) -> None:
    publisher = MessagePublisher(backend, middleware=[Refuse()])
    with pytest.raises(PermissionError):
        publisher.publish(OrderPaid(order_id="o-1"), queue="receipts")
    assert backend.queue_depth(backend.get_queue("receipts")) == 0


def test_nested_holds_keep_their_own_publishes(backend: InMemoryMessagingBackend) -> None:
    publisher = MessagePublisher(backend)
    with hold_publishes() as outer:
        publisher.publish(OrderPaid(order_id="outer"), queue="receipts")
        with hold_publishes() as inner:
            publisher.publish(OrderPaid(order_id="inner"), queue="receipts")
        assert len(inner.messages) == 0  # discarded when its block ended
        outer.release()
    [kept] = backend.retrieve_messages(backend.get_queue("receipts"))
    assert '"outer"' in kept.content


def test_a_batch_publish_inside_a_hold_is_held(backend: InMemoryMessagingBackend) -> None:
    publisher = MessagePublisher(backend)
    with hold_publishes() as held:
        publisher.publish_batch([OrderPaid(order_id=str(n)) for n in range(3)], queue="receipts")
        assert backend.queue_depth(backend.get_queue("receipts")) == 0
        held.release()
    assert backend.queue_depth(backend.get_queue("receipts")) == 3


class Broken(Middleware):
    def handle_message(self, handling: Handling, call_next: Callable[[], Outcome]) -> Outcome:
        raise OSError("disk full")


def test_a_failing_middleware_is_a_failed_handling_not_a_crash(
    backend: InMemoryMessagingBackend,
) -> None:
    billing_log: list[str] = []
    run_one(backend, [Billing(billing_log)], [Broken()])
    assert billing_log == []
    [dead] = backend.retrieve_messages(backend.get_queue("billing-dlq"))
    assert (dead.metadata["error_type"], dead.metadata["error_message"]) == (
        "builtins.OSError",
        "disk full",
    )
