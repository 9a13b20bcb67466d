"""Running an ``async def`` handler from the worker thread that handles its message.

The async dispatcher runs the (synchronous) pipeline in worker threads, with
``bridged_loop`` set to its event loop; a handler that returns an awaitable
has it run on that loop while the worker thread waits. The coroutine starts
in a copy of the worker's context, so it sees the message's correlation,
saga scope and publish hold as a synchronous handler would.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor
from contextvars import ContextVar
from typing import Any, TypeVar

from melange.exceptions import ConfigurationError

__all__ = ["awaited", "bridged_loop", "in_thread", "is_async_callable", "run_on_loop"]

_T = TypeVar("_T")

#: The event loop ``async def`` handlers of the current message run on, if any.
bridged_loop: ContextVar[asyncio.AbstractEventLoop | None] = ContextVar(
    "melange_bridged_loop", default=None
)


def run_on_loop(awaitable: Awaitable[_T], where: str) -> _T:
    """Run ``awaitable`` on the bridged loop and return its result (from a worker thread).

    Raises:
        ConfigurationError: no async dispatcher runs this message.
    """
    loop = bridged_loop.get()
    if loop is None:
        if isinstance(awaitable, Coroutine):
            awaitable.close()  # never awaited: close it rather than warn later
        raise ConfigurationError(
            f"{where} is async: consume with melange.aio.AsyncMessageDispatcher"
        )
    return asyncio.run_coroutine_threadsafe(awaited(awaitable), loop).result()


async def awaited(awaitable: Awaitable[_T]) -> _T:
    """Return ``await awaitable`` (a coroutine for ``run_coroutine_threadsafe``)."""
    return await awaitable


def is_async_callable(func: Any) -> bool:
    """Return whether calling ``func`` gives a coroutine (``async def``, also when bound)."""
    return asyncio.iscoroutinefunction(func)


async def in_thread(
    executor: Executor | None, function: Callable[..., _T], /, *args: Any, **kwargs: Any
) -> _T:
    """Await ``function(*args, **kwargs)`` run on ``executor`` (``None``: the loop's default).

    It runs in a copy of this context, in which ``bridged_loop`` is this loop,
    so an ``async def`` handler the call reaches runs here, not nowhere.
    """
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    context.run(bridged_loop.set, loop)
    call = functools.partial(context.run, function, *args, **kwargs)
    return await loop.run_in_executor(executor, call)
