"""Consumers and ``@listener``: handlers chosen by the type annotation of their event."""

from __future__ import annotations

import enum
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol, TypeVar

from melange._bridge import is_async_callable, run_on_loop
from melange.exceptions import ListenerDefinitionError
from melange.models import Message

__all__ = ["Consumer", "ConsumerRuntime", "Handler", "listener"]

_F = TypeVar("_F", bound=Callable[..., Any])
Handler = Callable[[Any, Message], None]

_LISTENER = "__melange_listener__"


def listener(func: _F) -> _F:
    """Mark a ``Consumer`` method as a handler for the event type its first parameter names.

    The annotation may be a class, a union of classes, or a base class. An
    optional second parameter annotated ``Message`` receives the envelope.
    Mistakes are raised as ``ListenerDefinitionError`` when the class is defined.
    """
    setattr(func, _LISTENER, True)
    return func


class _Listener:
    """One handler and what it accepts; ``types`` may be resolved lazily."""

    __slots__ = ("event_param", "func", "localns", "message_param", "name", "owner", "types")

    def __init__(
        self, owner: type, name: str, func: Callable[..., Any], localns: dict[str, Any]
    ) -> None:
        self.owner, self.name, self.func, self.localns = owner, name, func, localns
        self.types: tuple[type, ...] | None = None
        self.event_param = ""
        self.message_param: str | None = None

    @property
    def takes_message(self) -> bool:
        return self.message_param is not None

    def check_shape(self, skip_self: bool) -> inspect.Parameter:
        params = list(inspect.signature(self.func).parameters.values())
        if skip_self:
            params = params[1:]
        where = f"{self.owner.__qualname__}.{self.name}"
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise ListenerDefinitionError(f"listener {where} must take the event as a parameter")
        if params[0].annotation is inspect.Parameter.empty:
            raise ListenerDefinitionError(
                f"listener {where} has no annotation on {params[0].name!r}:"
                " annotate it with the event class(es) it handles"
            )
        extra = [p for p in params[1:] if p.default is inspect.Parameter.empty]
        if len(extra) > 1:
            raise ListenerDefinitionError(f"listener {where} takes more than (event, message)")
        self.event_param = params[0].name
        self.message_param = extra[0].name if extra else None
        return params[0]

    def resolve(self) -> tuple[type, ...]:
        """Return the accepted classes, resolving string annotations on first use."""
        if self.types is None:
            where = f"{self.owner.__qualname__}.{self.name}"
            module = inspect.getmodule(self.owner)
            try:
                hints = typing.get_type_hints(
                    self.func, globalns=vars(module) if module else None, localns=self.localns
                )
            except NameError as e:
                raise ListenerDefinitionError(
                    f"listener {where}: cannot resolve annotation: {e}"
                ) from e
            if self.message_param is not None and hints.get(self.message_param) is not Message:
                raise ListenerDefinitionError(
                    f"listener {where}: the second parameter must be annotated Message"
                )
            self.types = _flatten(hints[self.event_param], where)
        return self.types


def _flatten(annotation: Any, where: str) -> tuple[type, ...]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return tuple(t for member in members for t in _flatten(member, where))
    if origin is not None and isinstance(origin, type):
        return (origin,)
    if annotation is Any:
        return (object,)
    if not isinstance(annotation, type):
        raise ListenerDefinitionError(f"listener {where}: {annotation!r} is not a class")
    return (annotation,)


class _Style(enum.Enum):
    """How a ``Consumer`` subclass says what it handles."""

    #: ``@listener`` methods (or ``on_message=``), routed by annotation.
    LISTENERS = "listeners"
    #: An override of ``handle`` and no listeners: every event goes to ``handle``.
    HANDLE = "handle"
    #: The original library's ``process(message)`` and ``accepts(manifest)``.
    ORIGINAL = "original"


class ConsumerRuntime(Protocol):
    """What a consumer runs besides its handlers (a saga's runner): the dispatcher owns it."""

    def start(self) -> None:
        """Start it (called again for each dispatcher it is attached to: once is enough)."""

    def close(self) -> None:
        """Stop it; safe to call more than once."""


class Consumer:
    """Handles the events its ``@listener`` methods accept.

    Subclass it and decorate methods with ``@listener``; or pass
    ``on_message=callable`` (its first parameter's annotation, if any, says
    what it accepts; without one it accepts every event). ``consumer_id``
    names the consumer in idempotency keys; it defaults to the class path.
    ``runtime``, if set, is started when a dispatcher attaches the consumer
    and closed when it is unattached.
    """

    runtime: ConsumerRuntime | None = None
    _listeners: ClassVar[dict[str, _Listener]] = {}
    _style: ClassVar[_Style] = _Style.LISTENERS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Names local to the function defining the class, for string annotations.
        localns = dict(sys._getframe(1).f_locals)
        found: dict[str, _Listener] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                func = value.__func__ if isinstance(value, staticmethod | classmethod) else value
                if callable(func) and getattr(func, _LISTENER, False):
                    entry = _Listener(klass, name, func, localns)
                    entry.check_shape(skip_self=not isinstance(value, staticmethod))
                    found[name] = entry
                elif name in found:
                    del found[name]  # overridden without @listener
        cls._listeners = found
        cls._style = _style_of(cls, bool(found))
        try:
            _routing_table(found.values(), cls)
        except ListenerDefinitionError as e:
            if "cannot resolve annotation" not in str(e):
                raise
            # A forward reference defined later in the module: checked on first use.

    def __init__(
        self,
        on_message: Callable[..., Any] | None = None,
        *,
        consumer_id: str | None = None,
    ) -> None:
        self.consumer_id = consumer_id or f"{type(self).__module__}.{type(self).__qualname__}"
        self._on_message = on_message
        self._table: dict[type, tuple[Callable[..., Any], bool]] | None = None
        self._cache: dict[type, tuple[Callable[..., Any], bool] | None] = {}
        self._awaitable: dict[type, tuple[Callable[..., Any], bool] | None] = {}
        if on_message is not None and consumer_id is None:
            name = getattr(on_message, "__qualname__", type(on_message).__qualname__)
            self.consumer_id = f"{self.consumer_id}[{name}]"

    def wants(self, event_type: type, manifest: str | None) -> bool:
        """Return whether this consumer takes an event of this class and manifest.

        Listeners decide by class. A consumer that overrides ``handle`` without
        listeners takes every event; one written the original library's way
        decides with ``accepts(manifest)``, and its ``process(event)`` (or
        ``process(event, message)``) handles it.
        """
        style = self._style
        if style is _Style.LISTENERS:
            return self.handler_for(event_type) is not None
        if style is _Style.ORIGINAL:
            return bool(self.accepts(manifest))  # type: ignore[arg-type]
        return True

    def accepted_types(self) -> tuple[type, ...]:
        """Return the classes the listeners are annotated with."""
        return tuple(self._routes())

    def decides_by_class(self) -> bool:
        """Return whether the classes of its listeners alone say what this consumer takes.

        Not so for one that overrides ``handle``, ``accepts`` or ``wants``, or
        that listens for a built-in class (``dict``, ``object``: any message);
        ``filter_events=True`` cannot be derived from such a consumer.
        """
        if self._style is not _Style.LISTENERS or type(self).wants is not Consumer.wants:
            return False
        return all(cls.__module__ != "builtins" for cls in self.accepted_types())

    def accepts(self, event_type: type) -> bool:
        """Return whether some listener handles events of this class."""
        return self.handler_for(event_type) is not None

    def handler_for(self, event_type: type) -> tuple[Callable[..., Any], bool] | None:
        """Return (bound handler, takes message) for the most specific listener, or ``None``."""
        try:
            return self._cache[event_type]
        except KeyError:
            pass
        routes = self._routes()
        found = next((routes[k] for k in event_type.__mro__ if k in routes), None)
        self._cache[event_type] = found
        return found

    def handle(self, event: Any, message: Message) -> None:
        """Run the listener that accepts ``event``.

        Raises:
            LookupError: no listener accepts the event's class.
        """
        if self._style is _Style.ORIGINAL:
            self._process(event, message)
            return
        found = self._cache.get(type(event))  # the hot path: a known class
        if found is None:
            found = self.handler_for(type(event))
        if found is None:
            raise LookupError(f"{type(self).__qualname__} has no listener for {type(event)!r}")
        handler, takes_message = found
        result = handler(event, message) if takes_message else handler(event)
        if result is not None and inspect.isawaitable(result):
            run_on_loop(result, f"{type(self).__qualname__}.{getattr(handler, '__name__', '?')}")

    def awaitable_listener(self, event_type: type) -> tuple[Callable[..., Any], bool] | None:
        """Return (bound ``async def`` listener, takes message) to await, or ``None``.

        ``None`` when the listener is a plain function, or when the consumer
        overrides ``handle`` (a saga does): then ``handle`` must run.
        """
        try:
            return self._awaitable[event_type]  # the hot path: a known class
        except KeyError:
            pass
        found = None
        if self._style is _Style.LISTENERS and type(self).handle is Consumer.handle:
            found = self.handler_for(event_type)
            if found is not None and not is_async_callable(found[0]):
                found = None
        self._awaitable[event_type] = found
        return found

    def has_async_listeners(self) -> bool:
        """Return whether some handler of this consumer is ``async def``."""
        if self._style is _Style.ORIGINAL:
            return is_async_callable(self.process)  # type: ignore[attr-defined]
        if self._style is _Style.HANDLE:
            return is_async_callable(self.handle)
        return any(is_async_callable(handler) for handler, _ in self._routes().values())

    def _process(self, event: Any, message: Message) -> None:
        process: Callable[..., Any] = self.process  # type: ignore[attr-defined]
        result = process(event, message) if _positional_count(process) >= 2 else process(event)
        if result is not None and inspect.isawaitable(result):
            run_on_loop(result, f"{type(self).__qualname__}.process")

    def _routes(self) -> dict[type, tuple[Callable[..., Any], bool]]:
        if self._table is None:
            table: dict[type, tuple[Callable[..., Any], bool]] = {}
            if self._on_message is not None:
                for event_type, takes in _callable_routes(self._on_message):
                    table[event_type] = (self._on_message, takes)
            for entry_type, entry in _routing_table(self._listeners.values(), type(self)).items():
                table[entry_type] = (getattr(self, entry.name), entry.takes_message)
            self._table = table
        return self._table


def _style_of(cls: type, has_listeners: bool) -> _Style:
    """Tell how ``cls`` handles events, or raise if it would silently handle none."""
    overrides = {name for name in ("handle", "process", "accepts") if _overridden(cls, name)}
    where = cls.__qualname__
    if "process" in overrides:
        if has_listeners:
            raise ListenerDefinitionError(
                f"{where} defines both process() and @listener methods: use one of them"
            )
        return _Style.ORIGINAL
    if "accepts" in overrides and not has_listeners and "handle" not in overrides:
        raise ListenerDefinitionError(
            f"{where} overrides accepts() but has no process(), handle() or @listener"
            " method: nothing would handle the events it accepts"
        )
    if "handle" in overrides and not has_listeners:
        return _Style.HANDLE
    return _Style.LISTENERS


def _overridden(cls: type, name: str) -> bool:
    for klass in cls.__mro__:
        if klass is Consumer:
            return False
        if name in vars(klass):
            return True
    return False


def _positional_count(func: Callable[..., Any]) -> int:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in inspect.signature(func).parameters.values() if p.kind in kinds)


def _routing_table(entries: Iterable[_Listener], owner: type) -> dict[type, _Listener]:
    table: dict[type, _Listener] = {}
    for entry in entries:
        for event_type in entry.resolve():
            claimed = table.setdefault(event_type, entry)
            if claimed is not entry:
                raise ListenerDefinitionError(
                    f"{owner.__qualname__}: listeners {claimed.name!r} and {entry.name!r}"
                    f" both claim {event_type.__qualname__}"
                )
    return table


def _callable_routes(func: Callable[..., Any]) -> list[tuple[type, bool]]:
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    takes_message = len([p for p in params[1:] if p.default is p.empty]) == 1
    if not params or params[0].annotation is inspect.Parameter.empty:
        return [(object, takes_message)]
    hints = typing.get_type_hints(func)
    where = getattr(func, "__qualname__", repr(func))
    return [(t, takes_message) for t in _flatten(hints[params[0].name], where)]
