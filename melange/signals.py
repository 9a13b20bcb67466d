"""blinker signals for a message's life: connect to observe, log or measure.

Every signal is sent with the publisher or dispatcher as sender and keyword
arguments: ``message`` always; ``event`` once deserialized; ``queue`` on the
consuming side; ``consumer`` and ``error`` where they apply; ``reason`` for
skipped and dead-lettered messages. ``message_unrouted`` is sent by a backend
(the sender) with ``message`` and ``topic`` (its name) when a topic had no
subscribed queue to take a published message.
"""

from __future__ import annotations

from blinker import Namespace

__all__ = [
    "message_dead_lettered",
    "message_failed",
    "message_processed",
    "message_published",
    "message_received",
    "message_skipped",
    "message_unrouted",
]

_signals = Namespace()

message_published = _signals.signal("message-published", doc="A message was handed to the backend.")
message_received = _signals.signal("message-received", doc="A message was pulled from a queue.")
message_processed = _signals.signal(
    "message-processed", doc="Every accepting consumer handled a message."
)
message_failed = _signals.signal(
    "message-failed", doc="A consumer raised while handling a message."
)
message_skipped = _signals.signal(
    "message-skipped", doc="No listener on the queue accepts the message; it was acknowledged."
)
message_dead_lettered = _signals.signal(
    "message-dead-lettered", doc="A message was moved to the dead-letter queue."
)
message_unrouted = _signals.signal(
    "message-unrouted",
    doc="A message was published to a topic that no queue subscribes to: nobody will read it.",
)
