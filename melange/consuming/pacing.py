"""When a consume loop receives, how many messages it asks for, and how it rides out outages."""

from __future__ import annotations

import logging
import time

__all__ = ["MAX_OUTAGE_PAUSE", "POLL_SECONDS", "ReceivePacing"]

_log = logging.getLogger("melange.dispatcher")

#: The longest one receive waits for a message: a stop is noticed within this.
POLL_SECONDS = 1.0
#: The longest pause between receives while the broker is down (doubling from 0.5 s).
MAX_OUTAGE_PAUSE = 30.0


class ReceivePacing:
    """The receive schedule of one consume loop (decisions only: the loop waits and receives).

    ``max_messages`` ends the loop after that many; ``idle_timeout`` after that
    many seconds without a message (0: as soon as the queue is empty).
    """

    def __init__(
        self, queue: str, batch_size: int, max_messages: int | None, idle_timeout: float | None
    ) -> None:
        self.queue = queue
        self.batch_size = batch_size
        self.max_messages = max_messages
        self.idle_timeout = idle_timeout
        self.idle_since = time.monotonic()
        self._outage_pause = 0.0

    def wanted(self, started: int, free: int | None = None) -> int:
        """Return how many messages to ask for (0: ``max_messages`` are started already).

        ``free``: how many more the loop can handle at once, if it is bounded.
        """
        wanted = self.batch_size if free is None else min(self.batch_size, free)
        if self.max_messages is not None:
            wanted = min(wanted, max(0, self.max_messages - started))
        return wanted

    def idle_over(self) -> bool:
        """Return whether the loop has been idle for ``idle_timeout`` (it then ends)."""
        timeout = self.idle_timeout
        return timeout is not None and time.monotonic() - self.idle_since >= timeout

    def wait_seconds(self) -> float:
        """Return how long the next receive may wait for a message."""
        if self.idle_timeout is None:
            return POLL_SECONDS
        left = self.idle_timeout - (time.monotonic() - self.idle_since)
        return min(POLL_SECONDS, max(0.0, left))

    def received(self) -> None:
        """Note that messages arrived (or finished): the idle time starts again."""
        self.idle_since = time.monotonic()

    def receive_failed(self, error: Exception) -> float:
        """Return the pause before the next receive, after one that failed; log it."""
        self._outage_pause = min(max(self._outage_pause * 2, 0.5), MAX_OUTAGE_PAUSE)
        _log.warning(
            "receive from %s failed (%s); retrying in %.1fs", self.queue, error, self._outage_pause
        )
        return self._outage_pause

    def receive_worked(self) -> None:
        """Note a receive that worked: the next outage starts from the shortest pause."""
        self._outage_pause = 0.0
