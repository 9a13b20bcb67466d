"""Middleware: code that wraps the handling and the publishing of messages.

A ``Middleware`` overrides any of four hooks (and, for ``melange.aio``, the
async twins of the first two); each receives the scope and a
``call_next`` that runs the rest of the chain (the next middleware, then
melange's own step) and returns its result. Code before ``call_next()`` runs
before, code after it runs after, in one Python scope. The first middleware
given is the outermost.

- ``handle_message(handling, call_next) -> Outcome``: one received message.
- ``call_consumer(call, call_next) -> CallResult``: one consumer on it.
- ``build_message(publishing, call_next) -> Message``: turning an event into a message.
- ``send_message(publishing, call_next) -> None``: handing that message to the backend.

``hold_publishes()`` lets a middleware keep back what a handler publishes
until its scope ends (see docs/middleware.md).
"""

from __future__ import annotations

import warnings
from typing import Any

from melange.middleware.base import (
    Middleware,
    ThreadRunner,
    async_hooks_of,
    compose,
    hooks_of,
    sync_only_hooks,
)
from melange.middleware.consume_scopes import (
    ConsumerCall,
    Consuming,
    ExceptionHook,
    Handling,
    KeepAlive,
)
from melange.middleware.held_publishes import HeldPublishes, current_hold, hold_publishes
from melange.middleware.publish_scopes import Destination, DestinationKind, Publishing
from melange.outgoing import Outgoing

__all__ = [
    "ConsumerCall",
    "Consuming",
    "Destination",
    "DestinationKind",
    "ExceptionHook",
    "Handling",
    "HeldPublishes",
    "KeepAlive",
    "Middleware",
    "Publishing",
    "ThreadRunner",
    "async_hooks_of",
    "compose",
    "current_hold",
    "hold_publishes",
    "hooks_of",
    "sync_only_hooks",
]


def __getattr__(name: str) -> Any:
    if name == "HeldPublish":
        warnings.warn(
            "melange.middleware.HeldPublish is deprecated: a held publish is a"
            " melange.outgoing.Outgoing",
            DeprecationWarning,
            stacklevel=2,
        )
        return Outgoing
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
