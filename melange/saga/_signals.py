"""blinker signals of saga instances (the saga is the sender)."""

from __future__ import annotations

from blinker import Namespace

__all__ = ["saga_finished", "saga_message_ignored", "saga_not_found", "saga_started"]

_signals = Namespace()

saga_started = _signals.signal("saga-started", doc="An instance was created (``record``).")
saga_finished = _signals.signal(
    "saga-finished", doc="An instance completed or failed (``record``)."
)
saga_not_found = _signals.signal(
    "saga-not-found",
    doc="An event for no instance was discarded (``message``, ``event``, ``key``).",
)
saga_message_ignored = _signals.signal(
    "saga-message-ignored", doc="An event reached a finished instance (``message``, ``record``)."
)
