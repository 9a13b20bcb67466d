"""What ``melange worker`` runs for consumers with ``async def`` listeners (``--async``)."""

from __future__ import annotations

import asyncio
import threading

from melange.aio._dispatcher import AsyncMessageDispatcher

__all__ = ["consume_until_stopped"]

_STOP_POLL_SECONDS = 0.1


def consume_until_stopped(
    dispatcher: AsyncMessageDispatcher,
    queue: str,
    stop: threading.Event,
    *,
    max_messages: int | None,
    idle_timeout: float | None,
    close_backend: bool = True,
) -> int:
    """Run the async consume loop on a new event loop until done or ``stop`` is set.

    ``stop`` is what the command's signal handlers set (from the main thread);
    the backend is closed at the end unless ``close_backend`` is false.
    """

    async def consume() -> int:
        stopping = asyncio.Event()

        async def watch() -> None:
            while not stop.is_set():
                await asyncio.sleep(_STOP_POLL_SECONDS)
            stopping.set()

        watching = asyncio.create_task(watch())
        try:
            return await dispatcher.consume_loop(
                queue, max_messages=max_messages, idle_timeout=idle_timeout, stop_event=stopping
            )
        finally:
            watching.cancel()
            if close_backend:
                await dispatcher.backend.close_connection()

    return asyncio.run(consume())
