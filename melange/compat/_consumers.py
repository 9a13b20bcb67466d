"""Melange 7's consumers: ``process``/``accepts``, and single dispatch by annotation."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from melange import consumers as current
from melange._bridge import run_on_loop
from melange.compat._deprecation import deprecated
from melange.exceptions import ListenerDefinitionError
from melange.models import Message

__all__ = [
    "AsyncConsumer",
    "AsyncSingleDispatchConsumer",
    "Consumer",
    "SingleDispatchConsumer",
    "async_consumer",
    "consumer",
]

_F = TypeVar("_F", bound=Callable[..., Any])
_HANDLES = "__melange7_handler__"


class Consumer(current.Consumer):
    """Melange 7's consumer: ``process(event, **kwargs)`` runs for what ``accepts(event)`` takes.

    ``accepts`` receives the event, as in Melange 7's dispatcher, and takes
    everything by default; ``process`` calls ``on_message(event)``. The
    keyword ``message_id`` is passed to ``process``.
    """

    def __init__(self, on_message: Callable[[Any], Any] | None = None) -> None:
        deprecated("Consumer", "melange.Consumer with @listener methods")
        super().__init__()
        self.on_message = on_message

    def process(self, message: Any, **kwargs: Any) -> Any:
        """Handle an event: call ``on_message`` with it, if given."""
        if self.on_message is not None:
            return self.on_message(message)
        return None

    def accepts(self, manifest: Any) -> bool:
        """Return whether to process this event (its name is Melange 7's: it gets the event)."""
        return True

    def wants(self, event_type: type, manifest: str | None) -> bool:
        """Return ``True``: ``accepts`` decides per event, in ``handle``."""
        return True

    def accepted_types(self) -> tuple[type, ...]:
        """Return no class: this consumer's events are decided by ``accepts``."""
        return ()

    def handle(self, event: Any, message: Message) -> None:
        """Run ``process`` if ``accepts(event)``; an ``async def`` one on the dispatcher's loop."""
        if not self.accepts(event):
            return
        result = self.process(event, message_id=message.message_id)
        if inspect.isawaitable(result):
            run_on_loop(result, f"{type(self).__qualname__}.process")


class AsyncConsumer(Consumer):
    """Melange 7.3's async consumer: ``await on_message(event)`` (for an async dispatcher)."""

    async def process(self, message: Any, **kwargs: Any) -> Any:
        """Handle an event: await ``on_message(event)``, if given."""
        if self.on_message is not None:
            return await self.on_message(message)
        return None


def consumer(func: _F) -> _F:
    """Mark a ``SingleDispatchConsumer`` method as the handler of its first parameter's class."""
    setattr(func, _HANDLES, True)
    return func


#: Melange 7.3's decorator for ``AsyncSingleDispatchConsumer`` methods (the same mark).
async_consumer = consumer


class _SingleDispatch:
    """Handlers of one class, by the event class each method's first parameter names."""

    _marked: ClassVar[tuple[str, ...]] = ()
    _tables: ClassVar[dict[type, dict[type, str]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found = dict.fromkeys(
            name
            for klass in reversed(cls.__mro__)
            for name, value in vars(klass).items()
            if getattr(value, _HANDLES, False)
        )
        cls._marked = tuple(found)

    def dispatch_table(self) -> dict[type, str]:
        """Return handler method names by event class (resolved on first use)."""
        cls = type(self)
        table = _SingleDispatch._tables.get(cls)
        if table is None:
            table = {}
            for name in cls._marked:
                for event_type in _annotated_types(cls, name):
                    table[event_type] = name
            _SingleDispatch._tables[cls] = table
        return table

    def accepts(self, manifest: Any) -> bool:
        """Return whether some marked method takes this event."""
        return self.handler_name(manifest) is not None

    def accepted_types(self) -> tuple[type, ...]:
        """Return the classes the marked methods are annotated with."""
        return tuple(t for t in self.dispatch_table() if t is not object)

    def handler_name(self, event: Any) -> str | None:
        """Return the method handling this event's class (the most specific), or ``None``."""
        table = self.dispatch_table()
        return next((table[k] for k in type(event).__mro__ if k in table), None)


def _annotated_types(cls: type, name: str) -> tuple[type, ...]:
    func = getattr(cls, name)
    params = list(inspect.signature(func).parameters)
    if len(params) < 2:
        raise ListenerDefinitionError(f"{cls.__qualname__}.{name} must take the event")
    annotation = typing.get_type_hints(func).get(params[1])
    if annotation is None:
        raise ListenerDefinitionError(f"{cls.__qualname__}.{name}: annotate the event parameter")
    members = typing.get_args(annotation) if typing.get_origin(annotation) else (annotation,)
    return tuple(m for m in members if isinstance(m, type) and m is not type(None))


class SingleDispatchConsumer(_SingleDispatch, Consumer):
    """Melange 7's consumer of ``@consumer`` methods, picked by the event's class.

    Events no method takes are not accepted (and are acknowledged).
    """

    def process(self, message: Any, **kwargs: Any) -> Any:
        """Run the method that takes this event's class (the message id is not passed on)."""
        name = self.handler_name(message)
        return None if name is None else getattr(self, name)(message)


class AsyncSingleDispatchConsumer(_SingleDispatch, AsyncConsumer):
    """Melange 7.3's async single dispatch: ``@async_consumer async def`` methods."""

    async def process(self, message: Any, **kwargs: Any) -> Any:
        """Await the method that takes this event's class."""
        name = self.handler_name(message)
        return None if name is None else await getattr(self, name)(message)
