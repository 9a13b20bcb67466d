"""Deprecated home of melange's own middleware: now ``melange.middleware.scope`` and
``melange.middleware.idempotency``; the names stay importable from here."""

from __future__ import annotations

from melange.middleware.idempotency import (
    UNAVAILABLE,
    IdempotencyMiddleware,
    StoreRetry,
    claim_refusal,
    report_settling,
)
from melange.middleware.scope import MessageScopeMiddleware

__all__ = [
    "UNAVAILABLE",
    "IdempotencyMiddleware",
    "MessageScopeMiddleware",
    "StoreRetry",
    "claim_refusal",
    "report_settling",
]
