"""Telling users about a publish that reached no queue."""

from __future__ import annotations

import logging
from typing import Any

from melange import signals
from melange.models import Message

__all__ = ["report_unrouted"]

_log = logging.getLogger("melange.backends")


def report_unrouted(sender: Any, message: Message, topic: str) -> None:
    """Log a warning and send ``message_unrouted``: no queue subscribes to ``topic``."""
    _log.warning(
        "message %s (%s) published to topic %r, which no queue subscribes to: nobody will"
        " read it (declare the consumers' queues before publishing)",
        message.message_id,
        message.manifest,
        topic,
    )
    if signals.message_unrouted.receivers:
        signals.message_unrouted.send(sender, message=message, topic=topic)
