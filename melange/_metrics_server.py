"""``melange worker --metrics-port``: Prometheus text at ``/metrics``, liveness at ``/healthz``.

The worker's ``TelemetryMiddleware`` records through an OpenTelemetry SDK
meter provider whose Prometheus reader this small HTTP server renders.
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

    ``/healthz`` answers 200 while ``alive()`` is true, else 503.
    """

    def __init__(self, host: str, port: int, alive: Callable[[], bool]) -> None:
        self.meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
        self._server = ThreadingHTTPServer((host, port), _handler(alive))
        self._server.daemon_threads = True
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


def _handler(alive: Callable[[], bool]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
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
