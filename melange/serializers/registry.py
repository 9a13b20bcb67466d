"""Which serializer writes which class, and which reads which id (Akka's model)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from typing import Any

from melange.exceptions import (
    ConfigurationError,
    DeserializationError,
    EventTypeMismatchError,
    MissingExtraError,
    NoSerializerError,
    UnknownSerializerError,
)
from melange.manifests import EventTypes
from melange.serializers.base import Serializer, TypedSerializer
from melange.serializers.dataclass_serializer import DataclassSerializer
from melange.serializers.json_serializer import JsonSerializer
from melange.serializers.versions import Upcasters, version_in
from melange.serializers.versions import upcasters as default_upcasters

__all__ = ["SerializerRegistry"]

_SETTINGS = frozenset({"serializers", "serializer_bindings", "default"})

# (write, manifest, serializer id) for one class
_Writer = tuple[Callable[[Any], str], str | None, int]


@dataclasses.dataclass(frozen=True, slots=True)
class _Setup:
    """One immutable configuration, swapped whole, so a reader never sees half a change.

    ``choices`` and ``writers`` cache per-class answers for this setup only:
    a change makes a new setup with empty caches.
    """

    by_name: Mapping[str, Serializer]
    by_id: Mapping[int, Serializer]
    bindings: Mapping[type, str]
    default: str | None
    choices: dict[type, Serializer] = dataclasses.field(default_factory=dict)
    writers: dict[type, _Writer] = dataclasses.field(default_factory=dict)

    def replace(self, **changes: Any) -> _Setup:
        return dataclasses.replace(self, choices={}, writers={}, **changes)

    def serializer_for(self, cls: type) -> Serializer:
        found = self.choices.get(cls)
        if found is None:
            found = self.choices[cls] = self._choose(cls)
        return found

    def _choose(self, cls: type) -> Serializer:
        for klass in cls.__mro__:
            name = self.bindings.get(klass)
            if name is not None:
                return self.by_name[name]
        if dataclasses.is_dataclass(cls):
            for serializer in self.by_id.values():
                if isinstance(serializer, DataclassSerializer):
                    return serializer
        if self.default is None:
            raise NoSerializerError(
                f"no serializer is bound to {cls.__qualname__} and there is no default"
            )
        return self.by_name[self.default]


class SerializerRegistry:
    """Named serializers, class bindings (the most specific class wins) and a default.

    ``config`` takes the original form (serializers as classes or instances)::

        {"serializers": {"json": JsonSerializer, "pydantic": PydanticSerializer()},
         "serializer_bindings": {dict: "json", BaseModel: "pydantic"},
         "default": "json"}

    Without ``config``: JSON for dicts and lists, pydantic models (when
    pydantic is installed), dataclasses, and JSON as the default. Pickle is
    never registered unless the user registers a ``PickleSerializer`` with a key.
    Reads may come from any number of threads, also while it is reconfigured.

    Raises:
        ConfigurationError: two serializers share an id, a binding or the default
            names no serializer, or the config has an unknown setting.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        event_types: EventTypes | None = None,
        upcasters: Upcasters | None = None,
        lenient_versions: bool = False,
    ) -> None:
        self.event_types = event_types if event_types is not None else EventTypes()
        #: The upcasters applied on receive (``melange.serializers.upcaster``'s by default).
        self.upcasters = upcasters if upcasters is not None else default_upcasters
        #: Whether a message newer than its class is validated as it is, not refused.
        self.lenient_versions = lenient_versions
        self._lock = threading.Lock()
        self._setup = _Setup(by_name={}, by_id={}, bindings={}, default=None)
        self._configure(config if config is not None else _default_config())

    def _configure(self, config: Mapping[str, Any]) -> None:
        if not isinstance(config, Mapping):
            raise ConfigurationError(f"serializer config must be a mapping, not {config!r}")
        unknown = set(config) - _SETTINGS
        if unknown:
            known = ", ".join(sorted(_SETTINGS))
            raise ConfigurationError(
                f"unknown serializer settings {sorted(map(str, unknown))} (known: {known})"
            )
        for name, serializer in _mapping(config, "serializers").items():
            self.register(name, serializer)
        for cls, name in _mapping(config, "serializer_bindings").items():
            self.bind(cls, name)
        if config.get("default") is not None:
            self.set_default(config["default"])

    def register(self, name: str, serializer: Serializer | type[Serializer]) -> None:
        """Register a serializer (an instance, or a class built with no arguments) under a name.

        A name registered again is replaced. A ``TypedSerializer`` given no event
        types reads with this registry's; its ``classes()`` are registered as
        event types and bound to it.

        Raises:
            ConfigurationError: not a serializer, or another serializer has its id.
        """
        instance = _instantiate(name, serializer)
        identifier = instance.identifier()
        if not isinstance(identifier, int) or isinstance(identifier, bool):
            raise ConfigurationError(f"{type(instance).__qualname__}.identifier() is not an int")
        with self._lock:
            setup = self._setup
            by_name = {**setup.by_name, name: instance}
            by_id: dict[int, Serializer] = {}
            for registered in by_name.values():
                taken = by_id.setdefault(registered.identifier(), registered)
                if taken is not registered:
                    raise ConfigurationError(
                        f"serializer id {registered.identifier()} is claimed by both"
                        f" {type(taken).__qualname__} and {type(registered).__qualname__}"
                    )
            bindings = dict(setup.bindings)
            if isinstance(instance, TypedSerializer):
                instance.bind_event_types(self.event_types)
                for cls in instance.classes():
                    self.event_types.register(cls)
                    bindings[cls] = name
            self._setup = setup.replace(by_name=by_name, by_id=by_id, bindings=bindings)

    def bind(self, cls: type, name: str) -> None:
        """Make the serializer named ``name`` write ``cls`` and its subclasses.

        Raises:
            ConfigurationError: ``cls`` is not a class, or no serializer has that name.
        """
        if not isinstance(cls, type):
            raise ConfigurationError(f"only a class can be bound to a serializer, not {cls!r}")
        with self._lock:
            setup = self._setup
            if name not in setup.by_name:
                raise ConfigurationError(
                    f"{cls.__qualname__} is bound to {name!r}, but no serializer has that name"
                )
            self._setup = setup.replace(bindings={**setup.bindings, cls: name})

    def set_default(self, name: str) -> None:
        """Write unbound classes, and read messages with no serializer id, with ``name``.

        Raises:
            ConfigurationError: no serializer has that name.
        """
        with self._lock:
            setup = self._setup
            if name not in setup.by_name:
                raise ConfigurationError(f"the default {name!r} is not a registered serializer")
            self._setup = setup.replace(default=name)

    def register_event_type(self, cls: type) -> str:
        """Let messages with ``cls``'s manifest be read into ``cls``; return the manifest.

        Raises:
            ConfigurationError: another class already has that manifest.
        """
        return self.event_types.register(cls)

    def by_name(self, name: str) -> Serializer:
        """Return the serializer registered under ``name``.

        Raises:
            UnknownSerializerError: none has that name.
        """
        found = self._setup.by_name.get(name)
        if found is None:
            raise UnknownSerializerError(f"no serializer named {name!r}")
        return found

    def by_id(self, identifier: int) -> Serializer:
        """Return the serializer with this id.

        Raises:
            UnknownSerializerError: none has that id.
        """
        found = self._setup.by_id.get(identifier)
        if found is None:
            raise UnknownSerializerError(f"no serializer with id {identifier}")
        return found

    def serializer_for(self, obj: Any) -> Serializer:
        """Return the serializer bound to the most specific class of ``obj``.

        Bindings are looked up along the class's MRO; then a dataclass goes to
        the registered ``DataclassSerializer``; then the default.

        Raises:
            NoSerializerError: nothing is bound and there is no default.
        """
        return self._setup.serializer_for(type(obj))

    def serializer_for_class(self, cls: type) -> Serializer:
        """Return the serializer that writes instances of ``cls`` (see ``serializer_for``).

        Raises:
            NoSerializerError: nothing is bound and there is no default.
        """
        return self._setup.serializer_for(cls)

    def serialize(self, obj: Any) -> tuple[str, str | None, int]:
        """Return (content, manifest, serializer id) for an event.

        Raises:
            NoSerializerError: no serializer writes this class.
            SerializationError: the serializer failed.
        """
        setup = self._setup
        known = setup.writers.get(type(obj))
        if known is None:
            serializer = setup.serializer_for(type(obj))
            known = (serializer.serialize, serializer.manifest(obj), serializer.identifier())
            if serializer.manifest_by_class:
                setup.writers[type(obj)] = known
        write, manifest, identifier = known
        return write(obj), manifest, identifier

    def deserialize(
        self,
        content: str,
        manifest: str | None,
        serializer_id: int | None,
        version: str | bytes | None = None,
    ) -> Any:
        """Rebuild an event; a message without a serializer id is read by the default.

        ``version`` is the message's ``x-melange-version`` header (none: 1). An
        older version of a registered class is upcast first (``upcaster``).

        Raises:
            UnknownSerializerError: no serializer has the id (or there is no default).
            UnknownManifestError: no class is known for the manifest.
            DeserializationError: the content is malformed (``MessageValidationError``:
                invalid; ``UnsafePayloadError``: a bad signature; ``EventTypeMismatchError``:
                the manifest names a registered class, but neither the message's serializer
                nor the one configured for that class reads it into that class;
                ``NewerVersionError``: newer than the class, and not read leniently).
        """
        setup = self._setup
        if serializer_id is None:
            if setup.default is None:
                raise UnknownSerializerError("message has no serializer id and there is no default")
            serializer = setup.by_name[setup.default]
        else:
            found = setup.by_id.get(serializer_id)
            if found is None:
                raise UnknownSerializerError(f"no serializer with id {serializer_id}")
            serializer = found
        expected = self.event_types.get(manifest) if manifest is not None else None
        if expected is not None and manifest is not None:
            content = self.upcasters.current(
                content, manifest, version_in(version), expected, lenient=self.lenient_versions
            )
        event = serializer.deserialize(content, manifest)
        if expected is None or isinstance(event, expected):
            return event
        return _as_registered(
            setup, content, manifest, expected=expected, used=serializer, event=event
        )


def _as_registered(
    setup: _Setup,
    content: str,
    manifest: str | None,
    *,
    expected: type,
    used: Serializer,
    event: Any,
) -> Any:
    """Read a registered type's message with the serializer its class is configured for.

    A producer that names the wrong serializer (or none) must not turn a typed
    event into a plain value that no listener takes and is acknowledged away.
    """
    reason = (
        f"manifest {manifest!r} names {expected.__qualname__}, but serializer"
        f" {used.identifier()} read a {type(event).__qualname__}"
    )
    try:
        configured = setup.serializer_for(expected)
    except NoSerializerError:
        raise EventTypeMismatchError(f"{reason}; no serializer is configured for it") from None
    if configured is used:
        raise EventTypeMismatchError(reason)
    try:
        retried = configured.deserialize(content, manifest)
    except DeserializationError as e:
        raise EventTypeMismatchError(
            f"{reason}; its serializer {configured.identifier()} cannot read it either: {e}"
        ) from e
    if not isinstance(retried, expected):
        raise EventTypeMismatchError(
            f"{reason}; its serializer {configured.identifier()} read"
            f" a {type(retried).__qualname__}"
        )
    return retried


def _mapping(config: Mapping[str, Any], key: str) -> Mapping[Any, Any]:
    value = config.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{key!r} must be a mapping, not {value!r}")
    return value


def _instantiate(name: str, serializer: Any) -> Serializer:
    if isinstance(serializer, type) and issubclass(serializer, Serializer):
        try:
            serializer = serializer()
        except TypeError as e:
            raise ConfigurationError(
                f"serializer {name!r}: {serializer.__qualname__} needs arguments,"
                f" register an instance ({e})"
            ) from e
    if not isinstance(serializer, Serializer):
        raise ConfigurationError(f"serializer {name!r}: {serializer!r} is not a Serializer")
    return serializer


def _default_config() -> dict[str, Any]:
    serializers: dict[str, Serializer] = {
        "json": JsonSerializer(),
        "dataclass": DataclassSerializer(),
    }
    bindings: dict[type, str] = {dict: "json", list: "json"}
    pydantic_binding = _pydantic_binding()
    if pydantic_binding is not None:
        serializers["pydantic"], base_model = pydantic_binding
        bindings[base_model] = "pydantic"
    return {"serializers": serializers, "serializer_bindings": bindings, "default": "json"}


def _pydantic_binding() -> tuple[Serializer, type] | None:
    """Return (PydanticSerializer(), BaseModel), or ``None`` when pydantic is not installed."""
    try:
        from melange.serializers.pydantic_serializer import PydanticSerializer
    except MissingExtraError:
        return None
    import pydantic

    return PydanticSerializer(), pydantic.BaseModel
