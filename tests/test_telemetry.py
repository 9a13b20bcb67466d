"""``TelemetryMiddleware``: one trace from service A through B to C, on real brokers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, RetryPolicy, aio, listener
from melange.aio import AsyncMessageDispatcher, AsyncMessagePublisher
from melange.backends import from_url
from melange.backends.interfaces import MessagingBackend
from melange.telemetry import TelemetryMiddleware
from melange.testing import unique_name

_T = TypeVar("_T")


class OrderPlaced(BaseModel):
    order_id: str


class InvoiceSent(BaseModel):
    order_id: str


class Billing(Consumer):
    """Service B: handles OrderPlaced, publishes InvoiceSent."""

    def __init__(self, publisher: MessagePublisher) -> None:
        super().__init__()
        self.publisher = publisher

    @listener
    def on_placed(self, event: OrderPlaced) -> None:
        self.publisher.publish(InvoiceSent(order_id=event.order_id))


class Mail(Consumer):
    """Service C: handles InvoiceSent; fails for order "bad"."""

    @listener
    def on_invoice(self, event: InvoiceSent) -> None:
        if event.order_id == "bad":
            raise RuntimeError("no mail server")


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.metrics = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[self.metrics])
        self.middleware = TelemetryMiddleware(tracer_provider, meter_provider)

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def metric_points(self) -> dict[str, list[Any]]:
        data = self.metrics.get_metrics_data()
        found: dict[str, list[Any]] = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found.setdefault(metric.name, []).extend(metric.data.data_points)
        return found


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("sqs", marks=pytest.mark.sqs),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MessagingBackend]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.db'}"
    elif request.param == "rabbitmq":
        url = str(request.getfixturevalue("rabbitmq_node").url)
    else:
        url = str(request.getfixturevalue("moto").url)
    with from_url(url) as made:
        yield made


def run_three_services(backend: MessagingBackend, order_id: str) -> tuple[Telemetry, str, str]:
    telemetry = Telemetry()
    middleware = [telemetry.middleware]
    billing_queue, mail_queue = unique_name("billing"), unique_name("mail")
    b_publisher = MessagePublisher(backend, middleware=middleware)
    billing = MessageDispatcher(backend, [Billing(b_publisher)], middleware=middleware)
    mail = MessageDispatcher(
        backend,
        [Mail()],
        middleware=middleware,
        retry=RetryPolicy(immediate_attempts=1, max_deliveries=1),
    )
    billing.declare(billing_queue, visibility_timeout=5)
    mail.declare(mail_queue, visibility_timeout=5)
    MessagePublisher(backend, middleware=middleware).publish(OrderPlaced(order_id=order_id))
    assert billing.consume_loop(billing_queue, max_messages=1, idle_timeout=20) == 1
    assert mail.consume_loop(mail_queue, max_messages=1, idle_timeout=20) == 1
    return telemetry, billing_queue, mail_queue


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_one_trace_crosses_three_services(backend: MessagingBackend) -> None:
    telemetry, billing_queue, mail_queue = run_three_services(backend, "o-1")
    spans = {span.name: span for span in telemetry.finished()}
    send_a = spans["send OrderPlaced"]
    process_b = spans[f"process {billing_queue}"]
    send_b = spans["send InvoiceSent"]
    process_c = spans[f"process {mail_queue}"]
    assert len({s.context.trace_id for s in (send_a, process_b, send_b, process_c)}) == 1
    assert send_a.parent is None
    assert parent_of(process_b) == send_a.context.span_id
    assert parent_of(send_b) == process_b.context.span_id
    assert parent_of(process_c) == send_b.context.span_id
    kinds = [s.kind for s in (send_a, process_b, send_b, process_c)]
    assert kinds == [SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.PRODUCER, SpanKind.CONSUMER]
    system = backend.messaging_system
    assert send_a.attributes is not None
    assert process_b.attributes is not None
    assert send_a.attributes["messaging.system"] == system
    assert send_a.attributes["messaging.operation.type"] == "send"
    assert send_a.attributes["messaging.destination.name"] == "OrderPlaced"
    assert process_b.attributes["messaging.operation.type"] == "process"
    assert process_b.attributes["messaging.destination.name"] == billing_queue
    assert process_b.attributes["messaging.message.id"] == send_a.attributes["messaging.message.id"]
    conversation = send_a.attributes["messaging.message.conversation_id"]
    assert process_c.attributes is not None
    assert process_c.attributes["messaging.message.conversation_id"] == conversation
    assert process_c.status.status_code is StatusCode.UNSET


def test_a_failure_is_an_error_span_and_metrics_count_it(backend: MessagingBackend) -> None:
    telemetry, _, mail_queue = run_three_services(backend, "bad")
    [process_c] = [s for s in telemetry.finished() if s.name == f"process {mail_queue}"]
    assert process_c.status.status_code is StatusCode.ERROR
    assert process_c.attributes is not None
    assert process_c.attributes["error.type"] == "builtins.RuntimeError"
    assert process_c.attributes["melange.outcome"] == "dead_letter"
    points = telemetry.metric_points()
    assert sum(p.value for p in points["messaging.client.sent.messages"]) >= 2
    consumed = points["messaging.client.consumed.messages"]
    assert sum(p.value for p in consumed) == 2
    assert [p.attributes["error.type"] for p in consumed if "error.type" in p.attributes] == [
        "builtins.RuntimeError"
    ]
    assert sum(p.count for p in points["messaging.process.duration"]) == 2
    assert sum(p.value for p in points["melange.messages.dead_lettered"]) == 1


def test_without_an_sdk_messages_get_no_trace_headers_but_metrics_still_count() -> None:
    from melange.backends.memory import InMemoryMessagingBackend

    reader = InMemoryMetricReader()
    middleware = TelemetryMiddleware(meter_provider=MeterProvider(metric_readers=[reader]))
    backend = InMemoryMessagingBackend()
    dispatcher = MessageDispatcher(backend, [Mail()], middleware=[middleware])
    dispatcher.declare("mail")
    sent = MessagePublisher(backend, middleware=[middleware]).publish(InvoiceSent(order_id="o"))
    assert "traceparent" not in sent.metadata  # the global provider is the API's proxy
    dispatcher.consume_loop("mail", max_messages=1)
    data = reader.get_metrics_data()
    assert data is not None
    names = {m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert {"messaging.client.sent.messages", "messaging.client.consumed.messages"} <= names


class AsyncBilling(Consumer):
    """Service B on asyncio: handlings overlap, each publishing after an await."""

    def __init__(self, publisher: AsyncMessagePublisher) -> None:
        super().__init__()
        self.publisher = publisher
        self.running = 0
        self.peak = 0

    @listener
    async def on_placed(self, event: OrderPlaced) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0.1)
        self.running -= 1
        await self.publisher.publish(InvoiceSent(order_id=event.order_id))


def test_under_asyncio_each_concurrent_handling_parents_its_own_publishes(tmp_path: Path) -> None:
    telemetry = Telemetry()
    middleware = [telemetry.middleware]
    queue = unique_name("billing")

    async def scenario() -> AsyncBilling:
        async with aio.from_url(f"sqlite:///{tmp_path / 'broker.db'}") as backend:
            billing = AsyncBilling(AsyncMessagePublisher(backend, middleware=middleware))
            dispatcher = AsyncMessageDispatcher(backend, [billing], middleware=middleware)
            await dispatcher.declare(queue, visibility_timeout=5)
            publisher = AsyncMessagePublisher(backend, middleware=middleware)
            for n in range(5):
                await publisher.publish(OrderPlaced(order_id=f"o-{n}"))
            await dispatcher.consume_loop(queue, max_messages=5, max_concurrency=5)
        return billing

    billing = run(scenario())
    assert billing.peak > 1  # the handlings did overlap
    spans = telemetry.finished()
    processes = {s.context.trace_id: s for s in spans if s.name == f"process {queue}"}
    sends = {s.context.trace_id: s for s in spans if s.name == "send InvoiceSent"}
    placed = {s.context.trace_id: s for s in spans if s.name == "send OrderPlaced"}
    assert len(placed) == 5  # one trace per order
    assert processes.keys() == sends.keys() == placed.keys()
    for trace_id, send in sends.items():
        assert parent_of(processes[trace_id]) == placed[trace_id].context.span_id
        assert parent_of(send) == processes[trace_id].context.span_id
    consumed = telemetry.metric_points()["messaging.client.consumed.messages"]
    assert sum(p.value for p in consumed) == 5


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coroutine)
