"""``melange.saga`` on the in-memory backend and store: the rules, one by one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from melange import Consumer, Message, MessageDispatcher, MessagePublisher, RetryPolicy, listener
from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.exceptions import BackendConnectionError, SagaError
from melange.models import SAGA_ID, SAGA_TYPE, QueueWrapper
from melange.saga import (
    InMemorySagaStore,
    NotFound,
    Saga,
    SagaStatus,
    saga_not_found,
    starts,
)
from melange.testing import drain, wait_until


class OrderPlaced(BaseModel):
    order_id: str
    units: int = 1


class StockReserved(BaseModel):
    order_id: str


class PaymentCharged(BaseModel):
    order_id: str


class PaymentDeclined(BaseModel):
    order_id: str


class Noted(BaseModel):
    order_id: str


class PaymentTimedOut(BaseModel):
    order_id: str


class ReserveStock(BaseModel):
    order_id: str
    units: int


class ReleaseStock(BaseModel):
    order_id: str


class ChargePayment(BaseModel):
    order_id: str


class RefundPayment(BaseModel):
    order_id: str


class OrderState(BaseModel):
    order_id: str = ""
    notes: int = 0
    timeout: str = ""
    timed_out: bool = False


class OrderSaga(Saga[OrderState]):
    correlation = {  # noqa: RUF012 - a saga's declaration
        OrderPlaced: "order_id",
        StockReserved: "order_id",
        PaymentCharged: "order_id",
        PaymentDeclined: "order_id",
        Noted: "order_id",
        PaymentTimedOut: "order_id",
    }
    timeout_after = 30.0

    @starts
    def on_placed(self, event: OrderPlaced) -> None:
        if self.state.order_id:  # a second starter for this key joined the instance
            self.state.notes += 1
            return
        self.state.order_id = event.order_id
        reserve = ReserveStock(order_id=event.order_id, units=event.units)
        self.send(reserve, queue="inventory", compensate_with=ReleaseStock(order_id=event.order_id))

    @listener
    def on_reserved(self, event: StockReserved) -> None:
        self.send(
            ChargePayment(order_id=event.order_id),
            queue="payments",
            compensate_with=RefundPayment(order_id=event.order_id),
        )
        self.state.timeout = self.request_timeout(
            PaymentTimedOut(order_id=event.order_id), after=self.timeout_after
        )

    @listener
    def on_charged(self, event: PaymentCharged) -> None:
        self.cancel_timeout(self.state.timeout)
        self.complete()

    @listener
    def on_declined(self, event: PaymentDeclined) -> None:
        self.compensate()
        self.fail("payment_declined")

    @listener
    def on_noted(self, event: Noted) -> None:
        self.state.notes += 1

    @listener
    def on_timed_out(self, event: PaymentTimedOut) -> None:
        self.state.timed_out = True
        self.compensate()
        self.fail("payment_timeout")


class Commands(Consumer):
    """The other services' queues, recorded: what the saga sent, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[str, str, str | None]] = []

    @listener
    def on_command(
        self, event: ReserveStock | ReleaseStock | ChargePayment | RefundPayment, message: Message
    ) -> None:
        self.received.append((type(event).__name__, message.message_id, message.header(SAGA_ID)))


class World:
    """A backend, a saga on queue ``orders`` and the command queues, run by hand."""

    def __init__(self, saga_class: type[OrderSaga] = OrderSaga, **options: Any) -> None:
        self.backend = options.pop("backend", None) or InMemoryMessagingBackend()
        self.store = InMemorySagaStore()
        self.publisher = MessagePublisher(self.backend)
        poll = options.pop("poll_interval", 0.05)
        self.saga = saga_class(self.store, self.publisher, queue="orders", poll_interval=poll)
        retry = options.pop(
            "retry",
            RetryPolicy(immediate_attempts=1, max_deliveries=3, backoff_seconds=0.05, jitter=0),
        )
        self.orders = MessageDispatcher(self.backend, [self.saga], retry=retry, **options)
        self.orders.declare("orders", visibility_timeout=1)
        self.commands = Commands()
        self.services = MessageDispatcher(self.backend, [self.commands])
        for queue in ("inventory", "payments"):
            self.services.declare(queue)

    def publish(self, event: Any, **headers: str) -> Message:
        return self.publisher.publish(event, queue="orders", headers=headers or None)

    def run(self, seconds: float = 0.3) -> int:
        handled = self.orders.consume_loop("orders", idle_timeout=seconds)
        for queue in ("inventory", "payments"):
            self.services.consume_loop(queue, idle_timeout=0.05)
        return handled

    def instance(self, key: str) -> Any:
        return self.store.find("OrderSaga", key)

    def dead_letters(self) -> list[Message]:
        return drain(self.backend, "orders-dlq")

    def close(self) -> None:
        self.saga.close()


@pytest.fixture
def world() -> Iterator[World]:
    made = World()
    yield made
    made.close()


def commands(world: World) -> list[str]:
    return [name for name, _, _ in world.commands.received]


def undone(record: Any) -> list[str]:
    """Return the undos an instance sent, in the order it sent them."""
    return [s.what.split()[2] for s in record.timeline if s.what.startswith("compensating")]


def test_a_starter_creates_the_instance_and_its_commands_leave_after_the_save(
    world: World,
) -> None:
    world.publish(OrderPlaced(order_id="o-1"))
    world.run()
    record = world.instance("o-1")
    assert (record.status, record.version) == (SagaStatus.RUNNING, 1)
    assert commands(world) == ["ReserveStock"]
    [(_, _, saga_id)] = world.commands.received
    assert saga_id == record.saga_id
    assert [step.what for step in record.timeline] == [
        "started by OrderPlaced",
        "sent ReserveStock to inventory",
    ]
    assert world.store.pending("OrderSaga", record.saga_id, due_by=time.time()) == []


def test_replies_find_their_instance_by_the_saga_id_they_inherit(world: World) -> None:
    world.publish(OrderPlaced(order_id="o-1"))
    world.run()
    saga_id = world.instance("o-1").saga_id
    # A reply carrying the instance's headers, under a key that matches nothing.
    reply = Message(
        content='{"order_id": "wrong-key"}',
        manifest="StockReserved",
        serializer_id=world.publisher.serializers.by_name("pydantic").identifier(),
        metadata={SAGA_ID: saga_id, SAGA_TYPE: "OrderSaga"},
    )
    world.backend.publish_to_queue(reply, world.backend.get_queue("orders"))
    world.run()
    assert world.instance("o-1").version == 2  # found by saga_id, not by its (wrong) key
    assert commands(world) == ["ReserveStock", "ChargePayment"]


def test_a_saga_id_that_names_no_instance_is_not_trusted(world: World) -> None:
    # Any producer can set the header: the correlation key decides, and it is counted.
    world.publish(OrderPlaced(order_id="o-9"), saga_id="nope", saga_type="OrderSaga")
    world.run()
    assert world.instance("o-9") is not None
    assert world.instance("o-9").saga_id != "nope"
    assert world.saga.stats["saga_id_mismatch"] == 1
    assert world.dead_letters() == []


def test_a_saga_id_of_another_instance_does_not_steer_an_event_with_a_key(world: World) -> None:
    world.publish(OrderPlaced(order_id="o-1"))
    world.publish(OrderPlaced(order_id="o-2"))
    world.run()
    first, second = world.instance("o-1"), world.instance("o-2")
    forged = Message(
        content='{"order_id": "o-2"}',
        manifest="StockReserved",
        serializer_id=world.publisher.serializers.by_name("pydantic").identifier(),
        metadata={SAGA_ID: first.saga_id, SAGA_TYPE: "OrderSaga"},
    )
    world.backend.publish_to_queue(forged, world.backend.get_queue("orders"))
    world.run()
    assert world.instance("o-1").version == first.version  # not the instance the header named
    assert world.instance("o-2").version == second.version + 1
    assert world.saga.stats["saga_id_mismatch"] == 1


@pytest.mark.parametrize("saga_id", ["x" * 257, "tab\tinside"], ids=["too long", "unprintable"])
def test_a_saga_id_that_is_not_a_trace_value_is_ignored(world: World, saga_id: str) -> None:
    world.publish(OrderPlaced(order_id="o-4"), saga_id=saga_id, saga_type="OrderSaga")
    world.run()
    assert world.instance("o-4") is not None
    assert world.dead_letters() == []


def test_another_sagas_id_does_not_stop_a_start(world: World) -> None:
    world.publish(OrderPlaced(order_id="o-2"), saga_id="x", saga_type="DeliverySaga")
    world.run()
    assert world.instance("o-2") is not None


def test_an_event_without_its_correlation_value_is_dead_lettered(world: World) -> None:
    world.publish(OrderPlaced(order_id=""))
    world.run()
    [dead] = world.dead_letters()
    assert "no value for the correlation" in dead.metadata["error_message"]
    assert world.store.instances("OrderSaga") == []


def test_an_event_that_overtook_its_starter_is_applied_once_the_instance_exists(
    world: World,
) -> None:
    world.publish(Noted(order_id="o-3"))
    world.run(0.1)
    assert world.saga.stats["not_found"] >= 1
    world.publish(OrderPlaced(order_id="o-3"))
    assert wait_until(lambda: (world.run(0.1), world.instance("o-3"))[1] is not None)
    assert wait_until(lambda: (world.run(0.2), world.instance("o-3").state)[1] != "", timeout=15)
    assert wait_until(
        lambda: (world.run(0.2), '"notes":1' in world.instance("o-3").state)[1], timeout=15
    )
    assert world.dead_letters() == []


@pytest.mark.parametrize("policy", [NotFound.DISCARD, NotFound.DEAD_LETTER, NotFound.RETRY])
def test_each_not_found_policy(policy: NotFound) -> None:
    class Strict(OrderSaga):
        saga_type = "OrderSaga"
        not_found = policy
        retry_later_seconds = 0.05
        not_found_retries = 2

    world = World(Strict)
    reported: list[str] = []

    def on_not_found(sender: Any, **kwargs: Any) -> None:
        reported.append(kwargs["key"])

    saga_not_found.connect(on_not_found)
    try:
        world.publish(Noted(order_id="ghost"))
        world.run(1.0)
    finally:
        saga_not_found.disconnect(on_not_found)
        world.close()
    dead = world.dead_letters()
    if policy is NotFound.DISCARD:
        assert (reported, dead) == (["ghost"], [])
    else:
        [letter] = dead
        assert "no such instance" in letter.metadata["error_message"]
        assert reported == []
    assert world.backend.queue_depth(world.backend.get_queue("orders")) == 0


def test_racing_starters_make_one_instance_and_both_events_apply() -> None:
    world = World()
    for _ in range(2):
        world.publish(OrderPlaced(order_id="o-race"))
    barrier = threading.Barrier(2)
    original = world.store.find

    def slow_find(saga_type: str, key: str) -> Any:
        found = original(saga_type, key)
        if found is None:
            barrier.wait(timeout=5)  # both workers saw "no instance" before either created
        return found

    world.store.find = slow_find  # type: ignore[method-assign]
    workers = [
        MessageDispatcher(world.backend, [world.saga], retry=RetryPolicy(immediate_attempts=1))
        for _ in range(2)
    ]
    threads = [
        threading.Thread(
            target=w.consume_loop, args=("orders",), kwargs={"max_messages": 1, "idle_timeout": 5}
        )
        for w in workers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    world.close()
    [record] = world.store.instances("OrderSaga")
    assert record.version == 2
    assert '"notes":1' in record.state
    assert world.saga.stats["started"] == 1
    assert world.saga.stats["conflicts"] == 1


def test_concurrent_updates_of_one_instance_lose_nothing() -> None:
    world = World()
    world.publish(OrderPlaced(order_id="o-busy"))
    world.run()
    for _ in range(40):
        world.publish(Noted(order_id="o-busy"))
    stop = threading.Event()
    workers = [MessageDispatcher(world.backend, [world.saga]) for _ in range(4)]
    threads = [
        threading.Thread(target=w.consume_loop, args=("orders",), kwargs={"stop_event": stop})
        for w in workers
    ]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: '"notes":40' in world.instance("o-busy").state, timeout=30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        world.close()
    assert world.instance("o-busy").version == 41
    assert world.dead_letters() == []


def test_a_timeout_fires_and_compensates_newest_first() -> None:
    class Quick(OrderSaga):
        saga_type = "OrderSaga"
        timeout_after = 0.3

    world = World(Quick)
    world.publish(OrderPlaced(order_id="o-t"))
    world.run()
    world.publish(StockReserved(order_id="o-t"))
    world.run()
    assert wait_until(lambda: (world.run(0.2), world.instance("o-t").status.finished)[1])
    world.run()
    world.close()
    record = world.instance("o-t")
    assert (record.status, '"timed_out":true' in record.state) == (SagaStatus.FAILED, True)
    assert undone(record) == ["RefundPayment", "ReleaseStock"]  # newest first
    assert sorted(commands(world)) == sorted(
        ["ReserveStock", "ChargePayment", "RefundPayment", "ReleaseStock"]
    )
    assert record.timeline[-1].what == "failed: payment_timeout"


def test_a_cancelled_timeout_is_dropped_and_counted() -> None:
    class Quick(OrderSaga):
        saga_type = "OrderSaga"
        timeout_after = 1.5

    world = World(Quick)
    world.publish(OrderPlaced(order_id="o-c"))
    world.run()
    world.publish(StockReserved(order_id="o-c"))
    world.run(0.1)
    world.publish(PaymentCharged(order_id="o-c"))
    world.run(0.1)
    assert world.instance("o-c").status is SagaStatus.COMPLETED
    assert wait_until(lambda: (world.run(0.1), world.saga.stats["timeouts_dropped"])[1] == 1)
    world.close()
    assert commands(world) == ["ReserveStock", "ChargePayment"]  # nothing compensated
    assert world.instance("o-c").status is SagaStatus.COMPLETED


class ShortDelays(InMemoryMessagingBackend):
    max_delay_seconds = 0.1


class NoDelays(InMemoryMessagingBackend):
    """A backend with the interface's defaults: it cannot delay a message at all."""

    max_delay_seconds = MessagingBackend.max_delay_seconds
    publish_delayed_to_queue = MessagingBackend.publish_delayed_to_queue


@pytest.mark.parametrize("backend_class", [ShortDelays, NoDelays])
def test_a_timeout_longer_than_the_backend_can_delay_waits_in_the_store(
    backend_class: type[InMemoryMessagingBackend],
) -> None:
    class Quick(OrderSaga):
        saga_type = "OrderSaga"
        timeout_after = 0.5

    world = World(Quick, backend=backend_class())
    world.publish(OrderPlaced(order_id="o-long"))
    world.run()
    world.publish(StockReserved(order_id="o-long"))
    world.run()
    saga_id = world.instance("o-long").saga_id
    [waiting] = world.store.pending("OrderSaga", saga_id, due_by=time.time() + 5)
    assert waiting.delay == 0
    assert waiting.due_at > time.time()
    assert wait_until(lambda: (world.run(0.2), world.instance("o-long").status.finished)[1])
    world.close()
    assert world.instance("o-long").timeline[-1].what == "failed: payment_timeout"


def test_events_after_completion_are_ignored_and_reported(world: World) -> None:
    for event in (
        OrderPlaced(order_id="o-f"),
        StockReserved(order_id="o-f"),
        PaymentCharged(order_id="o-f"),
    ):
        world.publish(event)
        world.run()
    version = world.instance("o-f").version
    world.publish(Noted(order_id="o-f"))
    world.publish(OrderPlaced(order_id="o-f"))  # a starter does not restart it either
    world.run()
    assert world.instance("o-f").version == version
    assert world.saga.stats["ignored_after_finish"] == 2
    assert len(world.store.instances("OrderSaga")) == 1


def test_a_declined_payment_undoes_the_reservation(world: World) -> None:
    for event in (
        OrderPlaced(order_id="o-d"),
        StockReserved(order_id="o-d"),
        PaymentDeclined(order_id="o-d"),
    ):
        world.publish(event)
        world.run()
    record = world.instance("o-d")
    assert record.status is SagaStatus.FAILED
    assert undone(record) == ["RefundPayment", "ReleaseStock"]
    assert sorted(commands(world)) == sorted(
        ["ReserveStock", "ChargePayment", "RefundPayment", "ReleaseStock"]
    )
    assert record.compensations == ()


class FailsSendsOnce(InMemoryMessagingBackend):
    """Refuses the first send to ``payments``: a crash between commit and dispatch."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts: list[str] = []

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        if queue.unwrap() == "payments":
            self.attempts.append(message.message_id)
            if len(self.attempts) == 1:
                raise BackendConnectionError("the broker went away")
        super().publish_to_queue(message, queue, **kwargs)


def test_a_failure_between_commit_and_dispatch_resends_without_running_again() -> None:
    backend = FailsSendsOnce()
    world = World(backend=backend)
    world.publish(OrderPlaced(order_id="o-x"))
    world.run()
    world.publish(StockReserved(order_id="o-x"))
    world.run()
    # The state was saved and the event acknowledged; the poller sends what failed to leave.
    assert world.saga.stats["sends_left_to_poller"] == 1
    assert wait_until(lambda: (world.run(0.1), "ChargePayment" in commands(world))[1])
    world.close()
    assert world.instance("o-x").version == 2  # the handler's work was saved once
    assert commands(world) == ["ReserveStock", "ChargePayment"]
    [first, again] = backend.attempts
    assert first == again  # the same message id: downstream idempotency deduplicates
    assert world.dead_letters() == []


def test_a_redelivered_event_is_not_applied_twice_and_resends_what_had_not_left(
    world: World,
) -> None:
    world.publish(OrderPlaced(order_id="o-r"))
    world.run()
    record = world.instance("o-r")
    handled = record.handled[0]
    # As after a crash between the save and the acknowledgement (or the sends).
    placed = Message(
        content='{"order_id": "o-r", "units": 1}',
        manifest="OrderPlaced",
        serializer_id=world.publisher.serializers.by_name("pydantic").identifier(),
        message_id=handled,
    )
    world.backend.publish_to_queue(placed, world.backend.get_queue("orders"))
    world.run()
    assert world.saga.stats["redelivered"] == 1
    assert world.instance("o-r").version == 1
    assert commands(world) == ["ReserveStock"]


def test_a_redelivery_sends_what_the_first_delivery_saved_but_could_not_send() -> None:
    backend = FailsSendsOnce()
    world = World(backend=backend, poll_interval=0)  # no poller: only the redelivery sends
    world.publish(OrderPlaced(order_id="o-y"))
    world.run()
    reserved = world.publish(StockReserved(order_id="o-y"))
    world.run()
    assert "ChargePayment" not in commands(world)
    saga_id = world.instance("o-y").saga_id
    pending = world.store.pending("OrderSaga", saga_id, due_by=time.time())
    [left] = [p for p in pending if p.message.manifest == "ChargePayment"]
    again = reserved.with_changes()  # the same message, delivered again
    world.backend.publish_to_queue(again, world.backend.get_queue("orders"))
    world.run()
    assert world.saga.stats["redelivered"] == 1
    assert commands(world) == ["ReserveStock", "ChargePayment"]
    assert world.commands.received[-1][1] == left.message.message_id
    assert world.instance("o-y").version == 2


def test_a_stored_state_that_no_longer_reads_is_dead_lettered(world: World) -> None:
    world.publish(OrderPlaced(order_id="o-bad"))
    world.run()
    record = world.instance("o-bad")
    world.store.save(record.with_changes(version=2, state='{"notes": "many"}'))
    world.publish(Noted(order_id="o-bad"))
    world.run()
    [dead] = world.dead_letters()
    assert "no longer reads" in dead.metadata["error_message"]
    assert world.instance("o-bad").version == 2


def test_state_and_sends_outside_a_handler_are_an_error(world: World) -> None:
    with pytest.raises(SagaError, match="only a saga's handler"):
        _ = world.saga.state
    with pytest.raises(SagaError):
        world.saga.send(ReleaseStock(order_id="x"), queue="inventory")


def test_the_saga_commands_list_and_show_instances(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from melange.cli import main
    from melange.saga import SQLiteSagaStore

    backend = InMemoryMessagingBackend()
    store = SQLiteSagaStore(tmp_path / "sagas.db")
    saga = OrderSaga(store, MessagePublisher(backend), queue="orders", poll_interval=0)
    dispatcher = MessageDispatcher(backend, [saga])
    dispatcher.declare("orders")
    for order_id in ("o-1", "o-2"):
        MessagePublisher(backend).publish(OrderPlaced(order_id=order_id), queue="orders")
    MessagePublisher(backend).publish(StockReserved(order_id="o-2"), queue="orders")
    MessagePublisher(backend).publish(PaymentDeclined(order_id="o-2"), queue="orders")
    dispatcher.consume_loop("orders", idle_timeout=0.2)
    store.close()
    url = f"sqlite:///{tmp_path}/sagas.db"
    assert main(["saga", "list", "OrderSaga", "--store", url]) == 0
    listed = capsys.readouterr().out
    assert "o-1\trunning\tv1\tsent ReserveStock to inventory" in listed
    assert "o-2\tfailed\tv3\tfailed: payment_declined" in listed
    assert "2 OrderSaga instance(s)" in listed
    assert main(["saga", "list", "OrderSaga", "--store", url, "--status", "failed", "--json"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["key"] == "o-2"
    assert main(["saga", "show", "OrderSaga", "o-2", "--store", url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "failed"
    assert shown["state"]["order_id"] == "o-2"
    assert [s["what"] for s in shown["timeline"]][-1] == "failed: payment_declined"
    assert main(["saga", "show", "OrderSaga", "o-1", "--store", url]) == 0
    text = capsys.readouterr().out
    assert "status: running" in text
    assert "compensations: ReleaseStock" in text
    assert main(["saga", "show", "OrderSaga", "nope", "--store", url]) == 1
    assert "no OrderSaga instance with key 'nope'" in capsys.readouterr().err


def test_a_plain_publish_in_a_saga_handler_joins_the_outbox() -> None:
    class Direct(OrderSaga):
        saga_type = "OrderSaga"

        runs = 0

        @listener
        def on_noted(self, event: Noted) -> None:
            self.publisher.publish(ReleaseStock(order_id=event.order_id), queue="inventory")
            self.state.notes += 1
            type(self).runs += 1
            if type(self).runs == 1:
                raise RuntimeError("the handler failed after publishing")

    world = World(Direct)
    world.publish(OrderPlaced(order_id="o-p"))
    world.run()
    world.publish(Noted(order_id="o-p"))
    world.run(0.5)
    world.close()
    record = world.instance("o-p")
    # The failed run's publish never left; the second run's left once, after its save.
    assert commands(world) == ["ReserveStock", "ReleaseStock"]
    [(_, _, saga_id)] = [r for r in world.commands.received if r[0] == "ReleaseStock"]
    assert saga_id == record.saga_id
    assert '"notes":1' in record.state


def test_pending_message_is_a_deprecated_name_of_outgoing() -> None:
    import melange.saga
    from melange.outgoing import Outgoing

    with pytest.warns(DeprecationWarning, match="Outgoing"):
        assert melange.saga.PendingMessage is Outgoing


@pytest.mark.parametrize("name", ["send", "state", "store", "stats", "runner", "handle"])
def test_a_saga_that_redefines_a_reserved_name_fails_at_class_definition(name: str) -> None:
    with pytest.raises(SagaError, match=f"defines {name}: reserved"):
        type("Clashing", (OrderSaga,), {name: lambda self: None})


def test_a_listener_named_like_a_verb_fails_at_class_definition() -> None:
    with pytest.raises(SagaError, match="complete"):

        class Clashing(Saga[OrderState]):
            correlation = {OrderPlaced: "order_id"}  # noqa: RUF012 - a saga's declaration

            @starts
            def complete(self, event: OrderPlaced) -> None:  # type: ignore[override]
                """Would hide Saga.complete."""


def test_the_runner_holds_the_runtime_and_the_dispatcher_starts_and_stops_it() -> None:
    backend = InMemoryMessagingBackend()
    saga = OrderSaga(InMemorySagaStore(), MessagePublisher(backend), queue="orders")
    runner = saga.runner
    assert (saga.store, saga.publisher, saga.queue) == (runner.store, runner.publisher, "orders")
    assert "store" not in vars(saga)  # the user's instance keeps no runtime of its own
    pollers = lambda: [t for t in threading.enumerate() if t.name == "melange-saga-OrderSaga"]  # noqa: E731
    before = len(pollers())
    dispatcher = MessageDispatcher(backend, [saga])
    assert len(pollers()) == before + 1  # attached: the runner's poller runs
    dispatcher.unattach_consumer(saga)
    assert wait_until(lambda: len(pollers()) == before)
    dispatcher.attach_consumer(saga)
    assert len(pollers()) == before + 1  # attached again: started again
    saga.close()
    assert wait_until(lambda: len(pollers()) == before)
