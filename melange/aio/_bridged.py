"""``BridgedBackend``: an async backend over a synchronous one, its calls run in threads.

Every call runs the synchronous backend's method on a small thread pool of
the backend's own and awaits it, in a copy of the caller's context (so a
publish from a handler keeps its correlation). The event loop never waits
on the broker. docs/asyncio.md says why melange bridges rather than uses
async drivers, with figures.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar, cast

from melange._bridge import in_thread
from melange.aio._interface import AsyncMessagingBackend
from melange.backends import from_url as sync_from_url
from melange.backends.interfaces import MessagingBackend
from melange.exceptions import InvalidArgumentError

__all__ = ["BridgedBackend", "from_url"]

_T = TypeVar("_T")
_P = ParamSpec("_P")


def _on_sync(
    method: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """Return ``method`` of the async interface, run as the sync backend's namesake in a thread.

    The signature is the interface's, so the bridge is never a third copy of it.
    """
    name = method.__name__

    async def bridged(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        bridge = cast(BridgedBackend, args[0])
        result: _T = await bridge.run(getattr(bridge.sync, name), *args[1:], **kwargs)
        return result

    bridged.__name__ = name
    bridged.__qualname__ = f"BridgedBackend.{name}"
    bridged.__doc__ = method.__doc__
    bridged.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return bridged


class BridgedBackend(AsyncMessagingBackend):
    """``sync``'s methods as coroutines; ``threads`` bounds the broker calls in flight."""

    def __init__(self, sync: MessagingBackend, *, threads: int = 8) -> None:
        if threads < 1:
            raise InvalidArgumentError(f"threads must be at least 1, not {threads!r}")
        self.sync = sync
        self.default_visibility_timeout = sync.default_visibility_timeout
        self.default_max_receive_count = sync.default_max_receive_count
        self.max_message_size = sync.max_message_size
        self.messaging_system = sync.messaging_system
        self.max_delay_seconds = sync.max_delay_seconds
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="melange-aio")
        self._closed = False
        self._close_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BridgedBackend({self.sync!r})"

    async def run(self, function: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Run ``function(*args, **kwargs)`` on this backend's threads, in the caller's context."""
        return await in_thread(self._pool, function, *args, **kwargs)

    declare_topic = _on_sync(AsyncMessagingBackend.declare_topic)
    get_queue = _on_sync(AsyncMessagingBackend.get_queue)
    declare_queue = _on_sync(AsyncMessagingBackend.declare_queue)
    retrieve_messages = _on_sync(AsyncMessagingBackend.retrieve_messages)
    publish_to_topic = _on_sync(AsyncMessagingBackend.publish_to_topic)
    publish_to_queue = _on_sync(AsyncMessagingBackend.publish_to_queue)
    publish_batch_to_queue = _on_sync(AsyncMessagingBackend.publish_batch_to_queue)
    publish_batch_to_topic = _on_sync(AsyncMessagingBackend.publish_batch_to_topic)
    publish_delayed_to_queue = _on_sync(AsyncMessagingBackend.publish_delayed_to_queue)
    acknowledge = _on_sync(AsyncMessagingBackend.acknowledge)
    acknowledge_batch = _on_sync(AsyncMessagingBackend.acknowledge_batch)
    release = _on_sync(AsyncMessagingBackend.release)
    extend_visibility = _on_sync(AsyncMessagingBackend.extend_visibility)
    extend_visibility_batch = _on_sync(AsyncMessagingBackend.extend_visibility_batch)
    visibility_timeout_of = _on_sync(AsyncMessagingBackend.visibility_timeout_of)
    queue_stats = _on_sync(AsyncMessagingBackend.queue_stats)
    queue_depth = _on_sync(AsyncMessagingBackend.queue_depth)
    browse_messages = _on_sync(AsyncMessagingBackend.browse_messages)
    delete_queue = _on_sync(AsyncMessagingBackend.delete_queue)
    delete_topic = _on_sync(AsyncMessagingBackend.delete_topic)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close_connection(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        await in_thread(self._pool, self.sync.close_connection)
        self._pool.shutdown(wait=False)


def from_url(url: str, *, threads: int = 8) -> BridgedBackend:
    """Build the async backend for a URL, as ``melange.backends.from_url`` does the sync one.

    Raises:
        ConfigurationError: the scheme is not known, or a bad option.
        MissingExtraError: the backend's driver is not installed.
    """
    return BridgedBackend(sync_from_url(url), threads=threads)
