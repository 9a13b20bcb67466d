"""Running blocking calls off the event loop, in the caller's context."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from melange._bridge import bridged_loop

__all__ = ["in_thread"]

_T = TypeVar("_T")


async def in_thread(
    executor: Executor, function: Callable[..., _T], /, *args: Any, **kwargs: Any
) -> _T:
    """Await ``function(*args, **kwargs)`` run on ``executor``, in a copy of this context.

    In that copy ``bridged_loop`` is this loop, so an ``async def`` handler the
    call reaches runs here, not nowhere.
    """
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    context.run(bridged_loop.set, loop)
    call = functools.partial(context.run, function, *args, **kwargs)
    return await loop.run_in_executor(executor, call)
