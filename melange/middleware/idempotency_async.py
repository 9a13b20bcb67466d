"""``IdempotencyMiddleware``'s rules with an ``AsyncIdempotencyStore``, on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from melange.exceptions import IdempotencyError
from melange.idempotency.base import AsyncIdempotencyStore
from melange.middleware.base import Middleware
from melange.middleware.consume_scopes import ConsumerCall, Handling
from melange.middleware.idempotency import UNAVAILABLE, StoreRetry, claim_refusal, report_settling
from melange.outcomes import CallResult

__all__ = ["AsyncIdempotencyMiddleware"]

_T = TypeVar("_T")
_RENEW_TIMEOUT = 10.0


class AsyncIdempotencyMiddleware(Middleware):
    """Runs each consumer once per message (see ``IdempotencyMiddleware``), awaiting the store."""

    def __init__(self, store: AsyncIdempotencyStore, *, store_retry_seconds: float = 60.0) -> None:
        self.store = store
        self.store_retry_seconds = store_retry_seconds

    async def call_consumer_async(
        self, call: ConsumerCall, call_next: Callable[[], Awaitable[CallResult]]
    ) -> CallResult:
        store, handling = self.store, call.handling
        consumer_id, message_id = call.consumer.consumer_id, call.message.message_id
        # Never longer than the visibility: a dead worker's claim must not outlast its
        # message's return, or each retry would spend a receive towards the DLQ.
        lease = min(store.lease_seconds, handling.visibility_timeout)
        claim = await self._retrying(handling, lambda: store.claim(consumer_id, message_id, lease))
        refused = claim_refusal(claim, lease)
        if refused is not None:
            return refused
        loop = asyncio.get_running_loop()

        def renew(seconds: float) -> None:  # called by the keeper thread
            pending = store.renew(consumer_id, message_id, seconds)
            asyncio.run_coroutine_threadsafe(pending, loop).result(_RENEW_TIMEOUT)

        stop_renewing = handling.keep_alive(renew, lease=lease)
        try:
            result = await call_next()
        finally:
            stop_renewing()
        if result.succeeded:
            done = await self._retrying(handling, lambda: store.complete(consumer_id, message_id))
        else:
            done = await self._retrying(handling, lambda: store.release(consumer_id, message_id))
        report_settling(result, done, message_id)
        return result

    async def _retrying(self, handling: Handling, operation: Callable[[], Awaitable[_T]]) -> object:
        """Return ``await operation()``, retried on store errors; ``UNAVAILABLE`` if still down."""
        schedule = StoreRetry(self.store_retry_seconds)
        while True:
            try:
                return await operation()
            except IdempotencyError as e:
                if schedule.gives_up(handling, e):
                    return UNAVAILABLE
            await asyncio.sleep(schedule.next_pause())
