"""The ``Middleware`` base class, finding the hooks a middleware overrides, and composing them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from melange._bridge import awaited
from melange.models import Message

if TYPE_CHECKING:
    from melange.middleware.consume_scopes import ConsumerCall, Handling
    from melange.middleware.publish_scopes import Publishing
    from melange.outcomes import CallResult, Outcome

__all__ = [
    "Middleware",
    "ThreadRunner",
    "async_hooks_of",
    "compose",
    "hooks_of",
    "sync_only_hooks",
]

_S = TypeVar("_S")
_R = TypeVar("_R")


class Middleware:
    """Wraps message scopes; every hook passes through unless overridden."""

    def handle_message(self, handling: Handling, call_next: Callable[[], Outcome]) -> Outcome:
        """Wrap the handling of one received message; return (or replace) its outcome."""
        return call_next()

    def call_consumer(self, call: ConsumerCall, call_next: Callable[[], CallResult]) -> CallResult:
        """Wrap one consumer's handling of a message (all its immediate attempts)."""
        return call_next()

    async def handle_message_async(
        self, handling: Handling, call_next: Callable[[], Awaitable[Outcome]]
    ) -> Outcome:
        """``handle_message`` under ``melange.aio``'s dispatcher, on the event loop.

        Override it next to ``handle_message`` for a middleware that must not
        cost the async dispatcher a thread; one that only overrides the sync
        hook has it run on a worker thread there, ``call_next`` bridged back.
        """
        return await call_next()

    async def call_consumer_async(
        self, call: ConsumerCall, call_next: Callable[[], Awaitable[CallResult]]
    ) -> CallResult:
        """``call_consumer`` under ``melange.aio``'s dispatcher (see ``handle_message_async``)."""
        return await call_next()

    def build_message(self, publishing: Publishing, call_next: Callable[[], Message]) -> Message:
        """Wrap serializing an event; ``publishing.headers`` may be changed before ``call_next``."""
        return call_next()

    def send_message(self, publishing: Publishing, call_next: Callable[[], None]) -> None:
        """Wrap handing ``publishing.message`` to the backend."""
        call_next()

    async def send_message_async(
        self, publishing: Publishing, call_next: Callable[[], Awaitable[None]]
    ) -> None:
        """``send_message`` under ``melange.aio.AsyncMessagePublisher``, on the event loop."""
        await call_next()


def hooks_of(middleware: Sequence[Middleware], name: str) -> tuple[Callable[..., Any], ...]:
    """Return the bound ``name`` hooks that do something (not the base class's pass-through)."""
    base = getattr(Middleware, name)
    return tuple(getattr(m, name) for m in middleware if getattr(type(m), name) is not base)


#: Runs a blocking call on a worker thread and awaits it (the async loop's ``in_thread``).
ThreadRunner = Callable[..., Awaitable[Any]]


def async_hooks_of(
    middleware: Sequence[Middleware], name: str, in_thread: ThreadRunner
) -> tuple[Callable[..., Any], ...]:
    """Return each middleware's async hook ``name``: its own ``_async`` twin, or its sync one.

    A sync-only hook runs on a worker thread (``in_thread``), its ``call_next``
    bridged back to the event loop.
    """
    sync_only = sync_only_hooks(middleware, name)
    async_base = getattr(Middleware, f"{name}_async")
    hooks: list[Callable[..., Any]] = []
    for m in middleware:
        if getattr(type(m), f"{name}_async") is not async_base:
            hooks.append(getattr(m, f"{name}_async"))
        elif m in sync_only:
            hooks.append(_on_a_thread(getattr(m, name), in_thread))
    return tuple(hooks)


def sync_only_hooks(middleware: Sequence[Middleware], name: str) -> list[Middleware]:
    """Return the middleware that override hook ``name`` but not its ``_async`` twin."""
    sync_base = getattr(Middleware, name)
    async_base = getattr(Middleware, f"{name}_async")
    return [
        m
        for m in middleware
        if getattr(type(m), name) is not sync_base
        and getattr(type(m), f"{name}_async") is async_base
    ]


def _on_a_thread(
    hook: Callable[[Any, Callable[[], Any]], Any], in_thread: ThreadRunner
) -> Callable[..., Awaitable[Any]]:
    async def run(scope: Any, call_next: Callable[[], Awaitable[Any]]) -> Any:
        loop = asyncio.get_running_loop()

        def call_next_from_thread() -> Any:
            return asyncio.run_coroutine_threadsafe(awaited(call_next()), loop).result()

        return await in_thread(hook, scope, call_next_from_thread)

    return run


def compose(hooks: tuple[Callable[..., Any], ...], core: Callable[[_S], _R]) -> Callable[[_S], _R]:
    """Return ``core`` wrapped by ``hooks``, the first outermost; built once, run per scope."""
    wrapped = core
    for hook in reversed(hooks):
        wrapped = _wrap(hook, wrapped)
    return wrapped


def _wrap(hook: Callable[..., Any], inner: Callable[[_S], _R]) -> Callable[[_S], _R]:
    def run(scope: _S) -> _R:
        result: _R = hook(scope, partial(inner, scope))
        return result

    return run
