"""``OutboxGauges``: an outbox's lag as OpenTelemetry gauges (``melange[otel]``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from melange.exceptions import MissingExtraError, OutboxError
from melange.outbox._open import open_outbox
from melange.outbox._store import OutboxDepth

__all__ = ["OutboxGauges"]

_FRESH_FOR = 1.0  # seconds one reading serves the gauges of a collection


class OutboxGauges:
    """Reports how far behind the relay of an outbox is, at each metrics collection.

    ``melange.outbox.pending`` (rows waiting), ``melange.outbox.oldest_age``
    (seconds the oldest has waited) and ``melange.outbox.dead`` (rows kept
    dead), with ``db.system``. It reads on a connection of its own, so any
    process can watch an outbox (``melange relay --metrics-port``,
    ``melange worker --outbox … --metrics-port``). ``meter_provider``
    defaults to the global one. A database that cannot be read reports nothing.
    """

    def __init__(
        self,
        outbox: str,
        meter_provider: Any = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            from opentelemetry import metrics
            from opentelemetry.metrics import CallbackOptions, Observation
        except ImportError as e:  # pragma: no cover - exercised only without the extra
            raise MissingExtraError("opentelemetry-api", "otel") from e
        self.store = open_outbox(outbox)
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at = -_FRESH_FOR
        self._depth: OutboxDepth | None = None
        labels = {"db.system": self.store.dialect}
        meter = metrics.get_meter("melange.outbox", meter_provider=meter_provider)

        def gauge(
            name: str, unit: str, description: str, value: Callable[[OutboxDepth], Any]
        ) -> None:
            def observe(options: CallbackOptions) -> Iterable[Observation]:
                depth = self._reading()
                if depth is None or value(depth) is None:
                    return []
                return [Observation(value(depth), labels)]

            meter.create_observable_gauge(name, [observe], unit=unit, description=description)

        gauge("melange.outbox.pending", "{row}", "Outbox rows waiting", lambda d: d.pending)
        gauge(
            "melange.outbox.oldest_age",
            "s",
            "How long the oldest waiting outbox row has waited",
            lambda d: d.oldest_age if d.oldest_age is not None else 0.0,
        )
        gauge(
            "melange.outbox.dead", "{row}", "Outbox rows that will never be sent", lambda d: d.dead
        )

    def _reading(self) -> OutboxDepth | None:
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= _FRESH_FOR:
                try:
                    self._depth = self.store.depth(self._clock())
                except OutboxError:
                    self._depth = None
                self._read_at = now
            return self._depth

    def close(self) -> None:
        """Close the gauges' connection (the gauges then report nothing)."""
        with self._lock:
            self._read_at = float("inf")
            self._depth = None
        self.store.close()
