"""Which serializer writes which class, and which reads which id (Akka's model)."""

from __future__ import annotations

import dataclasses
import importlib.util
import threading
from collections.abc import Callable, Mapping
from typing import Any

from melange.exceptions import ConfigurationError, NoSerializerError, UnknownSerializerError
from melange.manifests import EventTypes
from melange.serializers.base import Serializer, TypedSerializer
from melange.serializers.dataclass_serializer import DataclassSerializer
from melange.serializers.json_serializer import JsonSerializer

__all__ = ["SerializerRegistry"]

_DATACLASS = "dataclass"


class SerializerRegistry:
    """Named serializers, class bindings (the most specific class wins) and a default.

    ``config`` takes the original form::

        {"serializers": {"json": JsonSerializer, "pydantic": PydanticSerializer()},
         "serializer_bindings": {dict: "json", BaseModel: "pydantic"},
         "default": "json"}

    Without ``config``: JSON for dicts and lists, pydantic models (when
    pydantic is installed) and dataclasses, JSON as the default. Pickle is
    never registered unless the config names a ``PickleSerializer`` with a key.

    Raises:
        ConfigurationError: duplicate ids, a binding or default naming no serializer.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        event_types: EventTypes | None = None,
    ) -> None:
        self.event_types = event_types if event_types is not None else EventTypes()
        self._by_name: dict[str, Serializer] = {}
        self._by_id: dict[int, Serializer] = {}
        self._bindings: dict[type, str] = {}
        self._default: str | None = None
        self._cache: dict[type, Serializer] = {}
        self._writers: dict[type, tuple[Callable[[Any], str], str | None, int]] = {}
        self._lock = threading.Lock()
        self._configure(config if config is not None else _default_config())

    def _configure(self, config: Mapping[str, Any]) -> None:
        unknown = set(config) - {"serializers", "serializer_bindings", "default"}
        if unknown:
            raise ConfigurationError(f"unknown serializer settings: {sorted(unknown)}")
        for name, serializer in config.get("serializers", {}).items():
            self.register(name, serializer)
        for cls, name in config.get("serializer_bindings", {}).items():
            self.bind(cls, name)
        if config.get("default") is not None:
            self.set_default(config["default"])

    def register(self, name: str, serializer: Serializer | type[Serializer]) -> None:
        """Register a serializer (an instance, or a class built with no arguments) by name."""
        instance = serializer() if isinstance(serializer, type) else serializer
        if not isinstance(instance, Serializer):
            raise ConfigurationError(f"{serializer!r} is not a Serializer")
        identifier = instance.identifier()
        with self._lock:
            taken = self._by_id.get(identifier)
            if taken is not None and self._by_name.get(name) is not taken:
                raise ConfigurationError(
                    f"serializer id {identifier} is taken by {type(taken).__qualname__}"
                )
            self._by_name[name] = instance
            self._by_id[identifier] = instance
            self._clear_caches()
        if isinstance(instance, TypedSerializer):
            instance.bind_event_types(self.event_types)
            for cls in instance.classes():
                self.event_types.register(cls)
                self.bind(cls, name)

    def _clear_caches(self) -> None:
        self._cache.clear()
        self._writers.clear()

    def bind(self, cls: type, name: str) -> None:
        """Make the serializer named ``name`` write instances of ``cls`` and its subclasses."""
        with self._lock:
            if name not in self._by_name:
                raise ConfigurationError(
                    f"binding {cls.__qualname__} to unknown serializer {name!r}"
                )
            self._bindings[cls] = name
            self._clear_caches()

    def set_default(self, name: str) -> None:
        """Use the serializer named ``name`` for classes with no binding."""
        with self._lock:
            if name not in self._by_name:
                raise ConfigurationError(f"default serializer {name!r} is not registered")
            self._default = name
            self._clear_caches()

    def register_event_type(self, cls: type) -> str:
        """Let messages with ``cls``'s manifest be read into ``cls``; return the manifest."""
        return self.event_types.register(cls)

    def by_name(self, name: str) -> Serializer:
        """Return a serializer by name.

        Raises:
            UnknownSerializerError: none has that name.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownSerializerError(f"no serializer named {name!r}") from None

    def by_id(self, identifier: int) -> Serializer:
        """Return the serializer with this id.

        Raises:
            UnknownSerializerError: none has that id.
        """
        try:
            return self._by_id[identifier]
        except KeyError:
            raise UnknownSerializerError(f"no serializer with id {identifier}") from None

    def serializer_for(self, obj: Any) -> Serializer:
        """Return the serializer bound to the most specific class of ``obj``.

        Raises:
            NoSerializerError: nothing is bound and there is no default.
        """
        cls = type(obj)
        found = self._cache.get(cls)
        if found is None:
            found = self._lookup(cls)
            with self._lock:
                self._cache[cls] = found
        return found

    def _lookup(self, cls: type) -> Serializer:
        for klass in cls.__mro__:
            name = self._bindings.get(klass)
            if name is not None:
                return self._by_name[name]
        if dataclasses.is_dataclass(cls) and _DATACLASS in self._by_name:
            return self._by_name[_DATACLASS]
        if self._default is None:
            raise NoSerializerError(f"no serializer is bound to {cls.__qualname__}")
        return self._by_name[self._default]

    def serialize(self, obj: Any) -> tuple[str, str | None, int]:
        """Return (content, manifest, serializer id) for an event.

        Raises:
            NoSerializerError: no serializer writes this class.
            SerializationError: the serializer failed.
        """
        known = self._writers.get(type(obj))
        if known is None:
            serializer = self.serializer_for(obj)
            if not serializer.manifest_by_class:
                return serializer.serialize(obj), serializer.manifest(obj), serializer.identifier()
            known = (serializer.serialize, serializer.manifest(obj), serializer.identifier())
            with self._lock:
                self._writers[type(obj)] = known
        write, manifest, identifier = known
        return write(obj), manifest, identifier

    def deserialize(self, content: str, manifest: str | None, serializer_id: int | None) -> Any:
        """Rebuild an event; a message without a serializer id is read by the default.

        Raises:
            UnknownSerializerError: no serializer has the id.
            DeserializationError: the content is malformed or invalid.
            UnknownManifestError: no class is known for the manifest.
        """
        if serializer_id is None:
            if self._default is None:
                raise UnknownSerializerError("message has no serializer id and there is no default")
            return self._by_name[self._default].deserialize(content, manifest)
        serializer = self._by_id.get(serializer_id)
        if serializer is None:
            raise UnknownSerializerError(f"no serializer with id {serializer_id}")
        return serializer.deserialize(content, manifest)


def _default_config() -> dict[str, Any]:
    serializers: dict[str, Serializer] = {
        "json": JsonSerializer(),
        _DATACLASS: DataclassSerializer(),
    }
    bindings: dict[type, str] = {dict: "json", list: "json"}
    if importlib.util.find_spec("pydantic") is not None:
        import pydantic

        from melange.serializers.pydantic_serializer import PydanticSerializer

        serializers["pydantic"] = PydanticSerializer()
        bindings[pydantic.BaseModel] = "pydantic"
    return {"serializers": serializers, "serializer_bindings": bindings, "default": "json"}
