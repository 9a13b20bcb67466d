"""OpenTelemetry traces and metrics for publishing and handling, as one middleware.

Follows the OpenTelemetry messaging semantic conventions: a ``send
<destination>`` PRODUCER span around each publish, whose context travels in
the message's ``traceparent``/``tracestate`` headers; a ``process <queue>``
CONSUMER span around each handled message, a child of the producer's, so one
trace crosses services. Needs only ``opentelemetry-api`` (``pip install
'melange[otel]'``); without an SDK configured, spans and metrics cost next
to nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

from melange.exceptions import MissingExtraError
from melange.middleware.base import Middleware
from melange.middleware.consume_scopes import Handling
from melange.middleware.publish_scopes import Publishing
from melange.models import CORRELATION_ID, Message
from melange.outcomes import Outcome, OutcomeKind

try:
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as e:  # pragma: no cover - only without the extra
    raise MissingExtraError("opentelemetry-api", "otel") from e

__all__ = ["TelemetryMiddleware"]

_NAME = "melange"
_TRACEPARENT = "traceparent"


def _version() -> str:
    try:
        return metadata.version("melange")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree not installed
        return "0"


class TelemetryMiddleware(Middleware):
    """Spans and metrics for every publish and every handled message.

    Give the same instance (or one each) to ``MessagePublisher(middleware=)``
    and ``MessageDispatcher(middleware=)``, or ``melange worker --middleware
    melange.telemetry:TelemetryMiddleware``. ``tracer_provider`` and
    ``meter_provider`` default to the global ones.

    Metrics: ``messaging.client.sent.messages``,
    ``messaging.client.consumed.messages`` (counters) and
    ``messaging.process.duration`` (seconds, a histogram), with
    ``messaging.system``, ``messaging.destination.name`` and, on failures,
    ``error.type``; ``melange.messages.retried`` and
    ``melange.messages.dead_lettered`` count outcomes.
    """

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self._given_tracer = tracer_provider is not None
        self.tracer = trace.get_tracer(_NAME, _version(), tracer_provider=tracer_provider)
        meter = metrics.get_meter(_NAME, _version(), meter_provider=meter_provider)
        self.sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="Messages sent"
        )
        self.consumed = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Messages received and handled",
        )
        self.duration = meter.create_histogram(
            "messaging.process.duration", unit="s", description="Time to handle a message"
        )
        self.retried = meter.create_counter(
            "melange.messages.retried", unit="{message}", description="Messages handed back"
        )
        self.dead_lettered = meter.create_counter(
            "melange.messages.dead_lettered",
            unit="{message}",
            description="Messages moved to a dead-letter queue",
        )

    # -- publishing ------------------------------------------------------------------

    def _tracing(self) -> bool:
        """Return whether spans go anywhere: a provider was given, or an SDK was installed."""
        return self._given_tracer or not isinstance(
            trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider
        )

    def send_message(self, publishing: Publishing, call_next: Callable[[], None]) -> None:
        """Wrap the send in a PRODUCER span whose context the message carries."""
        with self._sending(publishing):
            call_next()

    async def send_message_async(
        self, publishing: Publishing, call_next: Callable[[], Awaitable[None]]
    ) -> None:
        """``send_message`` under ``AsyncMessagePublisher``, on the event loop."""
        with self._sending(publishing):
            await call_next()

    @contextmanager
    def _sending(self, publishing: Publishing) -> Iterator[None]:
        """Count the send; trace it when spans go somewhere (not the API's no-op spans)."""
        destination = publishing.where.name
        labels = _metric(publishing.messaging_system, destination)
        if not self._tracing():
            try:
                yield
            except Exception as e:
                self.sent.add(1, {**labels, "error.type": _type(e)})
                raise
            self.sent.add(1, labels)
            return
        message = publishing.built
        with self.tracer.start_as_current_span(
            f"send {destination}", kind=SpanKind.PRODUCER, record_exception=True
        ) as span:
            if span.is_recording():  # without an SDK, nothing to record or carry
                span.set_attributes(
                    {
                        **_message_attributes(message, publishing.messaging_system, destination),
                        "messaging.operation.type": "send",
                        "messaging.operation.name": "send",
                    }
                )
                carrier = dict(message.metadata)
                propagate.inject(carrier)
                publishing.message = message.with_changes(metadata=carrier)
            try:
                yield
            except Exception as e:
                _failed(span, e)
                self.sent.add(1, {**labels, "error.type": _type(e)})
                raise
        self.sent.add(1, labels)

    # -- consuming -------------------------------------------------------------------

    def handle_message(self, handling: Handling, call_next: Callable[[], Outcome]) -> Outcome:
        """Wrap the handling in a CONSUMER span, a child of the publisher's."""
        started = time.perf_counter()
        if not self._tracing():
            return self._measured(handling, call_next(), started)
        with self._process_span(handling) as span:
            outcome = call_next()
            _settled(span, outcome)
        return self._measured(handling, outcome, started)

    async def handle_message_async(
        self, handling: Handling, call_next: Callable[[], Awaitable[Outcome]]
    ) -> Outcome:
        """``handle_message`` on the event loop: the span is current in this handling's task."""
        started = time.perf_counter()
        if not self._tracing():
            return self._measured(handling, await call_next(), started)
        with self._process_span(handling) as span:
            outcome = await call_next()
            _settled(span, outcome)
        return self._measured(handling, outcome, started)

    @contextmanager
    def _process_span(self, handling: Handling) -> Iterator[Any]:
        message = handling.message
        parent = None
        if type(message.metadata.get(_TRACEPARENT)) is str:
            # Propagators read text: another producer's binary headers are not for them.
            text = {k: v for k, v in message.metadata.items() if type(v) is str}
            parent = propagate.extract(text)
        with self.tracer.start_as_current_span(
            f"process {handling.queue}", context=parent, kind=SpanKind.CONSUMER
        ) as span:
            if span.is_recording():
                system = handling.consuming.messaging_system
                span.set_attributes(
                    {
                        **_message_attributes(message, system, handling.queue),
                        "messaging.operation.type": "process",
                        "messaging.operation.name": "process",
                    }
                )
                if message.receive_count:
                    span.set_attribute("messaging.message.delivery_count", message.receive_count)
            yield span

    def _measured(self, handling: Handling, outcome: Outcome, started: float) -> Outcome:
        """Count the handled message and its outcome, and record how long it took."""
        labels = _metric(handling.consuming.messaging_system, handling.queue)
        if outcome.error is not None:
            labels["error.type"] = _type(outcome.error)
        self.consumed.add(1, labels)
        self.duration.record(time.perf_counter() - started, labels)
        if outcome.kind is OutcomeKind.RELEASE:
            self.retried.add(1, labels)
        elif outcome.kind is OutcomeKind.DEAD_LETTER:
            self.dead_lettered.add(1, labels)
        return outcome


def _message_attributes(message: Message, system: str, destination: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": system,
        "messaging.destination.name": destination,
        "messaging.message.id": message.message_id,
    }
    correlation = message.text_header(CORRELATION_ID)
    if correlation:
        attributes["messaging.message.conversation_id"] = correlation
    return attributes


def _metric(system: str, destination: str) -> dict[str, str]:
    return {"messaging.system": system, "messaging.destination.name": destination}


def _type(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}"


def _settled(span: Any, outcome: Outcome) -> None:
    if span.is_recording():
        span.set_attribute("melange.outcome", outcome.kind.value)
        if outcome.error is not None:
            _failed(span, outcome.error)


def _failed(span: Any, error: BaseException) -> None:
    span.set_attribute("error.type", _type(error))
    span.set_status(Status(StatusCode.ERROR, str(error)))
