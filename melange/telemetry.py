"""OpenTelemetry for melange: ``TelemetryMiddleware`` (``pip install 'melange[otel]'``).

It lives in ``melange.middleware.telemetry``; this is the path the docs and
``melange worker --middleware melange.telemetry:TelemetryMiddleware`` use.
"""

from __future__ import annotations

from melange.middleware.telemetry import TelemetryMiddleware

__all__ = ["TelemetryMiddleware"]
