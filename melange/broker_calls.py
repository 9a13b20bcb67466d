"""Broker calls as values: logic written once, run by a sync or an asyncio loop.

A step that talks to the broker (settling a message, sending a dead letter,
declaring a queue, publishing) is a generator: it yields each ``BrokerCall``
it needs and gets the call's result back, or the call's exception raised
inside it. ``run_calls`` makes the calls on a ``MessagingBackend``;
``run_calls_async`` awaits them on an ``AsyncMessagingBackend``.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from typing import Any, NamedTuple, TypeVar

__all__ = ["BrokerCall", "BrokerSteps", "run_calls", "run_calls_async"]

_T = TypeVar("_T")


class BrokerCall(NamedTuple):
    """One call to make on the backend: ``backend.<method>(*args, **kwargs)``.

    A tuple, as one is made per publish and per settled message.
    """

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] | None = None


#: Engine logic that needs the broker: yields calls, receives their results, returns a value.
BrokerSteps = Generator[BrokerCall, Any, _T]


def run_calls(backend: object, steps: BrokerSteps[_T]) -> _T:
    """Run ``steps`` against a synchronous backend; return what they return."""
    try:
        call = next(steps)
        while True:
            try:
                result = getattr(backend, call.method)(*call.args, **(call.kwargs or {}))
            except Exception as e:
                call = steps.throw(e)
            else:
                call = steps.send(result)
    except StopIteration as done:
        value: _T = done.value
        return value


async def run_calls_async(backend: object, steps: BrokerSteps[_T]) -> _T:
    """Run ``steps`` against an asynchronous backend, awaiting each call."""
    try:
        call = next(steps)
        while True:
            try:
                result = await getattr(backend, call.method)(*call.args, **(call.kwargs or {}))
            except Exception as e:
                call = steps.throw(e)
            else:
                call = steps.send(result)
    except StopIteration as done:
        value: _T = done.value
        return value
