"""The pipeline's decisions under asyncio: the same steps, the consumer calls awaited.

An ``async def`` listener of a plain consumer is awaited on the event loop,
with no thread in between; any other consumer (plain listeners, a saga, an
overridden ``handle``) runs on a worker thread, its async listeners bridged
back to the loop. A middleware hook with no async twin runs on a worker
thread too (see ``melange.middleware.async_hooks_of``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from melange._bridge import in_thread
from melange.consuming.decisions import MessagePipeline
from melange.middleware import (
    ConsumerCall,
    Handling,
    async_hooks_of,
    compose,
    sync_only_hooks,
)
from melange.outcomes import SUCCEEDED, CallResult, Outcome

__all__ = ["AsyncDecisions"]


class AsyncDecisions:
    """Decides the outcome of each received message without blocking the event loop.

    ``executor`` runs what cannot be awaited: plain listeners and sync-only
    middleware hooks, in a copy of the message's context.
    """

    def __init__(self, pipeline: MessagePipeline, executor: Executor) -> None:
        self.pipeline = pipeline
        self.executor = executor
        middleware = pipeline.middleware
        self._handle = compose(
            async_hooks_of(middleware, "handle_message", self._in_thread), self._decide
        )
        self._call = compose(
            async_hooks_of(middleware, "call_consumer", self._in_thread), self._attempt
        )

    @staticmethod
    def hooks_on_threads(pipeline: MessagePipeline) -> int:
        """Return how many of the pipeline's middleware hooks have no async twin."""
        return sum(
            len(sync_only_hooks(pipeline.middleware, name))
            for name in ("handle_message", "call_consumer")
        )

    async def handle(self, handling: Handling) -> Outcome:
        """Return what to do with the message (see ``MessagePipeline.handle``)."""
        try:
            outcome: Outcome = await self._handle(handling)
            return outcome
        except Exception as e:
            handling.report(e)
            return self.pipeline.after_failure(handling.message, CallResult.failure(e))

    async def _decide(self, handling: Handling) -> Outcome:
        plan = self.pipeline.plan(handling)
        if isinstance(plan, Outcome):
            return plan
        for call in plan.calls:
            plan.note(call, await self._call(call))
        return plan.outcome()

    async def _attempt(self, call: ConsumerCall) -> CallResult:
        handling = call.handling
        event, message = handling.event, handling.message
        direct = call.consumer.awaitable_listener(type(event))
        for attempt in range(1, self.pipeline.retry.immediate_attempts + 1):
            try:
                if direct is not None:
                    listener, takes_message = direct
                    await (listener(event, message) if takes_message else listener(event))
                else:
                    await self._in_thread(call.consumer.handle, event, message)
            except Exception as e:
                final = self.pipeline.failed_attempt(call, e, attempt)
                if final is not None:
                    return final
            else:
                return SUCCEEDED
        raise AssertionError("unreachable: the last attempt returns")

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function`` on a worker thread, in this task's context, with the loop bridged."""
        return await in_thread(self.executor, function, *args)
