"""The pipeline's decisions, with no broker: a message in, an outcome out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from melange import AckPolicy, Consumer, Message, RetryPolicy, listener
from melange.backends.memory import InMemoryMessagingBackend
from melange.consuming.decisions import MessagePipeline
from melange.dead_letters import Stage
from melange.middleware import Consuming, Handling, Middleware
from melange.models import DECODE_ERROR
from melange.outcomes import CallResult, Outcome, OutcomeKind
from melange.publishers import MessagePublisher
from melange.serializers import SerializerRegistry
from tests.events import InvoiceSent, OrderCreated, OrderPaid

RETRY = RetryPolicy(immediate_attempts=2, max_deliveries=3, backoff_seconds=1, jitter=0)


class Billing(Consumer):
    def __init__(self, fails: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fails = fails
        self.calls = 0

    @listener
    def on_created(self, event: OrderCreated) -> None:
        self.calls += 1
        if self.calls <= self.fails:
            raise RuntimeError(f"cannot bill {event.order_id}")


def pipeline(
    *consumers: Consumer,
    middleware: Sequence[Middleware] = (),
    ack_policy: AckPolicy = AckPolicy.AFTER_SUCCESS,
) -> MessagePipeline:
    registry = SerializerRegistry()
    for consumer in consumers:
        for cls in consumer.accepted_types():
            registry.event_types.register(cls)

    def consumers_for(event_type: type, manifest: str | None) -> tuple[Consumer, ...]:
        return tuple(c for c in consumers if c.wants(event_type, manifest))

    return MessagePipeline(
        consumers_for, registry, middleware=middleware, ack_policy=ack_policy, retry=RETRY
    )


def received(event: Any, receive_count: int = 1) -> Message:
    built = MessagePublisher(InMemoryMessagingBackend()).build_message(event)
    return built.received(receive_count, None)


def decide(pipe: MessagePipeline, message: Message) -> Outcome:
    return pipe.handle(Handling(message, Consuming("billing")))


def test_a_handled_message_is_acknowledged() -> None:
    billing = Billing()
    outcome = decide(pipeline(billing), received(OrderCreated(order_id="o-1")))
    assert outcome.kind is OutcomeKind.ACK
    assert billing.calls == 1


def test_under_manual_acks_a_handled_message_is_kept() -> None:
    outcome = decide(
        pipeline(Billing(), ack_policy=AckPolicy.MANUAL), received(OrderCreated(order_id="o"))
    )
    assert outcome.kind is OutcomeKind.KEEP


def test_a_message_the_backend_could_not_decode_is_dead_lettered_unhandled() -> None:
    billing = Billing()
    bad = received(OrderCreated(order_id="o-1"))
    bad = bad.with_changes(metadata={**bad.metadata, DECODE_ERROR: "serializer id 'x'"})
    outcome = decide(pipeline(billing), bad)
    assert (outcome.kind, outcome.stage, outcome.reason) == (
        OutcomeKind.DEAD_LETTER,
        Stage.DECODE,
        "serializer id 'x'",
    )
    assert billing.calls == 0


def test_unreadable_content_is_dead_lettered_at_the_deserialize_stage() -> None:
    good = received(OrderCreated(order_id="o-1"))
    outcome = decide(pipeline(Billing()), good.with_changes(content="{not json"))
    assert (outcome.kind, outcome.stage) == (OutcomeKind.DEAD_LETTER, Stage.DESERIALIZE)
    assert outcome.error is not None


def test_an_unknown_manifest_and_an_unaccepted_event_are_skipped() -> None:
    pipe = pipeline(Billing())
    unknown = decide(pipe, received(InvoiceSent(invoice_id="i-1")))
    assert unknown.kind is OutcomeKind.SKIP
    assert "billing.invoice-sent" in unknown.reason
    pipe.serializers.event_types.register(OrderPaid)
    unaccepted = decide(pipe, received(OrderPaid(order_id="o-1")))
    assert unaccepted.kind is OutcomeKind.SKIP
    assert "no listener accepts OrderPaid" in unaccepted.reason


def test_a_failure_is_released_with_backoff_until_the_last_delivery() -> None:
    billing = Billing(fails=100)
    pipe = pipeline(billing)
    first = decide(pipe, received(OrderCreated(order_id="o"), receive_count=1))
    second = decide(pipe, received(OrderCreated(order_id="o"), receive_count=2))
    last = decide(pipe, received(OrderCreated(order_id="o"), receive_count=3))
    assert (first.kind, first.delay) == (OutcomeKind.RELEASE, 1.0)
    assert (second.kind, second.delay) == (OutcomeKind.RELEASE, 2.0)
    assert (last.kind, last.stage, last.attempts) == (OutcomeKind.DEAD_LETTER, Stage.HANDLE, 6)
    assert "cannot bill o" in last.reason
    assert billing.calls == 3 * RETRY.immediate_attempts


def test_an_unknown_receive_count_is_not_the_last_delivery() -> None:
    billing = Billing(fails=100)
    pipe = pipeline(billing)
    message = received(OrderCreated(order_id="o"), receive_count=0)
    kinds = [decide(pipe, message).kind for _ in range(RETRY.max_deliveries)]
    # Counted by this process instead: released twice, dead-lettered on the third.
    assert kinds == [OutcomeKind.RELEASE, OutcomeKind.RELEASE, OutcomeKind.DEAD_LETTER]


def test_after_handle_dead_letters_at_the_first_failure() -> None:
    pipe = pipeline(Billing(fails=100), ack_policy=AckPolicy.AFTER_HANDLE)
    outcome = decide(pipe, received(OrderCreated(order_id="o")))
    assert (outcome.kind, outcome.attempts) == (OutcomeKind.DEAD_LETTER, 2)


def test_immediate_attempts_absorb_a_passing_failure() -> None:
    billing = Billing(fails=1)
    assert decide(pipeline(billing), received(OrderCreated(order_id="o"))).kind is OutcomeKind.ACK
    assert billing.calls == 2


def test_a_redelivery_reruns_only_the_consumer_that_failed() -> None:
    good, bad = Billing(consumer_id="good"), Billing(fails=2, consumer_id="bad")
    pipe = pipeline(good, bad)
    message = received(OrderCreated(order_id="o"))
    assert decide(pipe, message).kind is OutcomeKind.RELEASE
    assert decide(pipe, message.received(2, None)).kind is OutcomeKind.ACK
    assert (good.calls, bad.calls) == (1, 3)


class Deferring(Middleware):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def call_consumer(self, call: Any, call_next: Callable[[], CallResult]) -> CallResult:
        return CallResult.defer(self.delay, "not yet")


def test_a_deferred_consumer_releases_the_message_without_running_it() -> None:
    billing = Billing()
    outcome = decide(
        pipeline(billing, middleware=[Deferring(7.5)]), received(OrderCreated(order_id="o"))
    )
    assert (outcome.kind, outcome.delay, outcome.reason) == (OutcomeKind.RELEASE, 7.5, "not yet")
    assert billing.calls == 0


@pytest.mark.parametrize(
    ("outcome", "settles"),
    [
        (Outcome.ack(), True),
        (Outcome.skip("x"), True),
        (Outcome.dead_letter(Stage.HANDLE, "x"), True),
        (Outcome.release(1, "x"), False),
        (Outcome.keep("x"), False),
    ],
)
def test_which_outcomes_settle_a_message(outcome: Outcome, settles: bool) -> None:
    assert outcome.settles is settles
