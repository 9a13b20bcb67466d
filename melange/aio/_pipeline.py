"""The pipeline under asyncio: ``MessagePipeline``'s decisions, its calls awaited.

Deserializing, routing, combining results and retry decisions are the sync
pipeline's own methods; only the calls differ. An ``async def`` listener of a
plain consumer is awaited on the loop; any other consumer (plain listeners,
a saga, an overridden ``handle``) runs on a worker thread, its async
listeners bridged back to the loop. A middleware hook with no async twin
runs on a worker thread too, its ``call_next`` bridged back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from melange._bridge import awaited
from melange.aio._threads import in_thread
from melange.consumers import Consumer
from melange.middleware import ConsumerCall, Handling, Middleware, compose
from melange.outcomes import _SUCCESS, CallResult, Outcome
from melange.pipeline import MessagePipeline

__all__ = ["AsyncPipeline"]


class AsyncPipeline:
    """Decides the outcome of each received message without blocking the loop."""

    def __init__(self, pipeline: MessagePipeline, executor: Executor) -> None:
        self.pipeline = pipeline
        self.executor = executor
        middleware = pipeline.middleware
        self._handle = compose(self._hooks(middleware, "handle_message"), self._decide)
        self._call = compose(self._hooks(middleware, "call_consumer"), self._attempt)

    async def handle(self, handling: Handling) -> Outcome:
        """Return what to do with the message (see ``MessagePipeline.handle``)."""
        try:
            outcome: Outcome = await self._handle(handling)
            return outcome
        except Exception as e:
            handling.report(e)
            return self.pipeline.after_failure(handling.message, CallResult.failure(e))

    async def _decide(self, handling: Handling) -> Outcome:
        pipeline = self.pipeline
        prepared = pipeline.prepare(handling)
        if isinstance(prepared, Outcome):
            return prepared
        consumers, done_before = prepared
        if done_before is None and len(consumers) == 1:
            result = await self._call(ConsumerCall(handling, consumers[0]))
            if result is _SUCCESS:
                return pipeline.success
            handling.unsuccessful = ((consumers[0], result),)
            return pipeline.combine(handling.message, [result])
        return pipeline.combine(
            handling.message, await self._run_consumers(handling, consumers, done_before)
        )

    async def _run_consumers(
        self, handling: Handling, consumers: Sequence[Consumer], done_before: set[str] | None
    ) -> list[CallResult]:
        results: list[CallResult] = []
        succeeded = set(done_before or ())
        for consumer in consumers:
            if consumer.consumer_id in succeeded:
                results.append(CallResult.skip("handled by an earlier delivery"))
                continue
            result = await self._call(ConsumerCall(handling, consumer))
            self.pipeline.note(handling, consumer, result, succeeded, results)
        self.pipeline.remember(handling, succeeded, results)
        return results

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
                return _SUCCESS
        raise AssertionError("unreachable: the last attempt returns")

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function`` on a worker thread, in this task's context, with the loop bridged."""
        return await in_thread(self.executor, function, *args)

    def _hooks(self, middleware: Sequence[Middleware], name: str) -> tuple[Callable[..., Any], ...]:
        """Return each middleware's async hook ``name``: its own twin, or its sync one bridged."""
        sync_base = getattr(Middleware, name)
        async_base = getattr(Middleware, f"{name}_async")
        hooks: list[Callable[..., Any]] = []
        for m in middleware:
            if getattr(type(m), f"{name}_async") is not async_base:
                hooks.append(getattr(m, f"{name}_async"))
            elif getattr(type(m), name) is not sync_base:
                hooks.append(self._bridged(getattr(m, name)))
        return tuple(hooks)

    def _bridged(self, hook: Callable[[Any, Callable[[], Any]], Any]) -> Callable[..., Any]:
        async def run(scope: Any, call_next: Callable[[], Awaitable[Any]]) -> Any:
            loop = asyncio.get_running_loop()

            def call_next_from_thread() -> Any:
                return asyncio.run_coroutine_threadsafe(awaited(call_next()), loop).result()

            return await self._in_thread(hook, scope, call_next_from_thread)

        return run
