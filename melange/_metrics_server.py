"""``melange worker --metrics-port``: Prometheus text at ``/metrics``, liveness at ``/healthz``.

The worker's ``TelemetryMiddleware`` records through an OpenTelemetry SDK
meter provider whose Prometheus reader this small HTTP server renders.

The port is reachable by whoever can reach the host, so the server is
bounded: each connection gets ``timeout`` seconds per read or write, at most
``max_threads`` are served at once and a connection beyond them is closed at
once. An idle flood costs a fixed number of threads and descriptors, never
the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from melange.exceptions import MissingExtraError

try:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
except ImportError as e:  # pragma: no cover - only without the extra
    raise MissingExtraError("prometheus-client", "prometheus") from e

__all__ = ["MetricsServer"]


class MetricsServer:
    """Serves the worker's metrics and liveness on ``host:port`` from a daemon thread.

    ``/healthz`` answers 200 while ``alive()`` is true, else 503. A connection
    that sends nothing for ``timeout`` seconds is closed; beyond
    ``max_threads`` connections in service, new ones are closed unanswered;
    ``backlog`` is the kernel's queue of connections not yet accepted.
    """

    def __init__(
        self,
        host: str,
        port: int,
        alive: Callable[[], bool],
        *,
        timeout: float = 5.0,
        max_threads: int = 8,
        backlog: int = 128,
    ) -> None:
        if timeout <= 0 or max_threads < 1 or backlog < 1:
            raise ValueError("timeout must be above 0, max_threads and backlog at least 1")
        self.meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
        self._server = _BoundedServer(
            (host, port), _handler(alive, timeout), max_threads=max_threads, backlog=backlog
        )
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="melange-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self.meter_provider.shutdown()


class _BoundedServer(ThreadingHTTPServer):
    """A threading HTTP server with at most ``max_threads`` connections in service."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        max_threads: int,
        backlog: int,
    ) -> None:
        self.request_queue_size = backlog
        self._slots = threading.BoundedSemaphore(max_threads)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Waiting for a slot would stall the accept loop (and shutdown); closing costs nothing.
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _handler(alive: Callable[[], bool], seconds: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = seconds  # StreamRequestHandler sets it on the socket: per read and write

        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._reply(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
            elif self.path == "/healthz":
                healthy = alive()
                self._reply(
                    200 if healthy else 503, "text/plain", b"ok\n" if healthy else b"stopping\n"
                )
            else:
                self._reply(404, "text/plain", b"try /metrics or /healthz\n")

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes are not worth a log line each

    return Handler
