"""``MessageScopeMiddleware``: the message current while handled, and the signals of its life."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from melange import signals
from melange.context import CURRENT_MESSAGE as _current
from melange.middleware.base import Middleware
from melange.middleware.consume_scopes import Handling
from melange.outcomes import Outcome, OutcomeKind

__all__ = ["MessageScopeMiddleware"]

_received = signals.message_received
_processed = signals.message_processed
_failed = signals.message_failed
_skipped = signals.message_skipped


class MessageScopeMiddleware(Middleware):
    """Makes the message current while it is handled, and sends the signals of its life.

    While the message is handled, ``melange.context.current_message()`` is
    it, so what its handlers publish carries its correlation. The blinker
    signals of ``melange.signals`` (received, processed, failed, skipped)
    are sent around it. One middleware for both, outermost: each layer
    costs every message a few calls.
    """

    def handle_message(self, handling: Handling, call_next: Callable[[], Outcome]) -> Outcome:
        if _received.receivers:
            _received.send(handling.dispatcher, message=handling.message, queue=handling.queue)
        token = _current.set(handling.message)
        try:
            outcome = call_next()
        finally:
            _current.reset(token)
        if handling.unsuccessful or _processed.receivers or _skipped.receivers:
            return self._after(handling, outcome)
        return outcome  # the common case, kept short: nobody to tell

    async def handle_message_async(
        self, handling: Handling, call_next: Callable[[], Awaitable[Outcome]]
    ) -> Outcome:
        if _received.receivers:
            _received.send(handling.dispatcher, message=handling.message, queue=handling.queue)
        token = _current.set(handling.message)
        try:
            outcome = await call_next()
        finally:
            _current.reset(token)
        if handling.unsuccessful or _processed.receivers or _skipped.receivers:
            return self._after(handling, outcome)
        return outcome  # the common case, kept short: nobody to tell

    def _after(self, handling: Handling, outcome: Outcome) -> Outcome:
        if handling.unsuccessful:
            self._unsuccessful(handling)
        kind = outcome.kind
        if kind is OutcomeKind.ACK:
            if _processed.receivers:
                _processed.send(
                    handling.dispatcher,
                    message=handling.message,
                    event=handling.event,
                    queue=handling.queue,
                )
        elif kind is OutcomeKind.SKIP and _skipped.receivers:
            _skipped.send(
                handling.dispatcher,
                message=handling.message,
                queue=handling.queue,
                reason=outcome.reason,
            )
        return outcome

    def _unsuccessful(self, handling: Handling) -> None:
        sender, message = handling.dispatcher, handling.message
        for consumer, result in handling.unsuccessful:
            if result.failed and _failed.receivers:
                _failed.send(sender, message=message, consumer=consumer, error=result.error)
            elif result.skipped and _skipped.receivers:
                _skipped.send(sender, message=message, consumer=consumer, reason=result.reason)
