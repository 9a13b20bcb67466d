"""The queues a dispatcher consumes: each one's handle, dead-letter queue and visibility."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from melange import dead_letters
from melange.broker_calls import BrokerCall, BrokerSteps
from melange.dead_letters import DeadLetterer
from melange.exceptions import BackendError, QueueNotFoundError
from melange.models import QueueWrapper

__all__ = ["QueueBinding", "QueueBindings"]

_log = logging.getLogger("melange.dispatcher")


@dataclass(slots=True)
class QueueBinding:
    """One queue being consumed: its handle, its dead letters and its visibility timeout."""

    name: str
    wrapper: QueueWrapper
    dead_letters: DeadLetterer
    visibility_timeout: float


class QueueBindings:
    """The queues one dispatcher declared or consumes, found once each (thread-safe).

    ``visibility_timeout`` is the dispatcher's configured one (``None``: the
    backend's ``default_visibility_timeout``); the broker's own value wins.
    """

    def __init__(self, visibility_timeout: float | None, default_visibility_timeout: float) -> None:
        self.visibility_timeout = visibility_timeout
        self.default_visibility_timeout = default_visibility_timeout
        self._bound: dict[str, QueueBinding] = {}
        self._lock = threading.Lock()

    def get(self, queue: str) -> QueueBinding | None:
        """Return the queue's binding if it was declared or consumed already."""
        return self._bound.get(queue)

    def declaring(
        self,
        queue: str,
        topics: Iterable[str],
        *,
        dead_letter_queue_name: str | None,
        **queue_options: Any,
    ) -> BrokerSteps[tuple[QueueWrapper, QueueWrapper | None]]:
        """Create ``queue`` and its dead-letter queue, subscribed to ``topics`` (idempotent)."""
        wrappers = []
        for name in topics:
            wrappers.append((yield BrokerCall("declare_topic", (name,))))
        dead_letter_name = dead_letter_queue_name or dead_letters.dead_letter_queue_name(queue)
        wrapper, dead_letter = yield BrokerCall(
            "declare_queue",
            (queue, *wrappers),
            {"dead_letter_queue_name": dead_letter_name, **queue_options},
        )
        visibility = queue_options.get("visibility_timeout")
        if not visibility:
            visibility = yield from self._visibility_of(wrapper, declared=True)
        self._bind(
            QueueBinding(
                queue,
                wrapper,
                DeadLetterer(None, queue, dead_letter_name, dead_letter),
                float(visibility),
            )
        )
        return wrapper, dead_letter

    def binding(self, queue: str) -> BrokerSteps[QueueBinding]:
        """Return the queue's binding, finding the queue the first time.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        bound = self._bound.get(queue)
        if bound is not None:
            return bound
        wrapper = yield BrokerCall("get_queue", (queue,))
        visibility = yield from self._visibility_of(wrapper, declared=False)
        name = dead_letters.dead_letter_queue_name(queue)
        return self._bind(
            QueueBinding(queue, wrapper, DeadLetterer(None, queue, name, None), visibility)
        )

    def _bind(self, bound: QueueBinding) -> QueueBinding:
        with self._lock:
            self._bound[bound.name] = bound
        return bound

    def _visibility_of(self, queue: QueueWrapper, *, declared: bool) -> BrokerSteps[float]:
        """Return the queue's visibility timeout as the broker has it, else the configured one.

        The broker's value wins: renewing on a longer one than the queue's
        would let a long handler's message reach a second worker. A queue
        not declared here that differs from the one configured is logged.
        """
        configured = self.visibility_timeout
        try:
            known = yield BrokerCall("visibility_timeout_of", (queue,))
        except QueueNotFoundError:
            raise
        except BackendError as e:  # e.g. not allowed to read it: go on as configured
            _log.warning("cannot read the visibility timeout of %s: %s", queue.unwrap(), e)
            known = None
        if known is None:
            return configured if configured is not None else self.default_visibility_timeout
        if configured is not None and known != configured and not declared:
            _log.warning(
                "queue %s hides a message for %g s, not the %g s this dispatcher was given:"
                " renewing on the queue's",
                queue.unwrap(),
                known,
                configured,
            )
        return float(known)
