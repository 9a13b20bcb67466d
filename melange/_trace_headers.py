"""The trace headers a message published while handling another inherits, bounded.

They come off the wire, from any producer: a value longer than
``MAX_TRACE_LENGTH`` or not printable is not copied into every message a
handler publishes. A bad correlation or causation id is replaced by a stable
digest of it (so the messages it links still share one value); a bad saga
id or type drops both, so the reply finds its saga by correlation key.
"""

from __future__ import annotations

import hashlib
import logging
import threading

from melange.models import CAUSATION_ID, CORRELATION_ID, SAGA_ID, SAGA_TYPE, Message

__all__ = ["MAX_TRACE_LENGTH", "inherited_trace", "is_trace_value"]

MAX_TRACE_LENGTH = 256

_log = logging.getLogger("melange.publishers")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def is_trace_value(value: object) -> bool:
    """Whether ``value`` may travel as a trace header: 1 to 256 printable characters."""
    return type(value) is str and 0 < len(value) <= MAX_TRACE_LENGTH and value.isprintable()


def inherited_trace(cause: Message) -> dict[str, str]:
    """Return the trace headers of a message published while ``cause`` is handled."""
    metadata = cause.metadata
    correlation = metadata.get(CORRELATION_ID) or cause.message_id  # bytes: digested
    trace = {
        CORRELATION_ID: _bounded(CORRELATION_ID, correlation),
        CAUSATION_ID: _bounded(CAUSATION_ID, cause.message_id),
    }
    saga_id, saga_type = metadata.get(SAGA_ID), metadata.get(SAGA_TYPE, "")
    if saga_id is not None:
        if (
            type(saga_id) is str
            and type(saga_type) is str
            and is_trace_value(saga_id)
            and (saga_type == "" or is_trace_value(saga_type))
        ):
            trace[SAGA_ID], trace[SAGA_TYPE] = saga_id, saga_type
        else:
            _warn_once(SAGA_ID, "saga_id and saga_type are not passed on")
    return trace


def _bounded(name: str, value: str | bytes) -> str:
    if type(value) is str and is_trace_value(value):
        return value
    _warn_once(name, "it is passed on as a digest of it")
    raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    digest = hashlib.sha256(raw).hexdigest()[:40]
    return f"sha256:{digest}"


def _warn_once(name: str, consequence: str) -> None:
    with _warned_lock:
        if name in _warned:
            return
        _warned.add(name)
    _log.warning(
        "a received %s is not 1 to %d printable characters: %s (logged once)",
        name,
        MAX_TRACE_LENGTH,
        consequence,
    )
