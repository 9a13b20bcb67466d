"""The serializer contract."""

from __future__ import annotations

import abc
import enum
import threading
from typing import Any, ClassVar

from melange.exceptions import ConfigurationError
from melange.manifests import EventTypes, manifest_of

__all__ = ["Serializer", "TypedSerializer"]


class Serializer(abc.ABC):
    """Turns events into text and back. Each class has a unique integer ``identifier()``.

    ``manifest_by_class`` says the manifest depends only on the event's class,
    so a registry may remember it per class; set it to ``False`` when
    ``manifest()`` looks at the instance.
    """

    manifest_by_class: ClassVar[bool] = True

    @staticmethod
    @abc.abstractmethod
    def identifier() -> int:
        """Return the id that travels with every message this serializer wrote."""

    def manifest(self, data: Any) -> str | None:
        """Return the name the event travels under (its class's manifest).

        Raises:
            ConfigurationError: the class declares a manifest that is not a string.
        """
        return manifest_of(type(data))

    @abc.abstractmethod
    def serialize(self, data: Any) -> str:
        """Return the event as text.

        Raises:
            SerializationError: the event cannot be serialized.
        """

    @abc.abstractmethod
    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        """Rebuild an event from text.

        Raises:
            DeserializationError: the text is malformed.
            MessageValidationError: the text does not make a valid event.
            UnknownManifestError: no class is known for the manifest.
        """


class _Source(enum.Enum):
    """Where a ``TypedSerializer``'s event types came from."""

    UNSET = "unset"
    OWN = "own"  # made on first use, before any registry
    GIVEN = "given"  # passed by the caller: never replaced
    REGISTRY = "registry"  # the first registry's; another one is refused


class TypedSerializer(Serializer):
    """A serializer that rebuilds classes, found by manifest in ``event_types``.

    Given no ``event_types``, it uses those of the first registry it is
    registered in. The manifest is only looked up there, never imported.
    """

    # Class-level defaults keep subclasses that skip ``super().__init__`` working.
    _event_types: EventTypes | None = None
    _event_types_source: _Source = _Source.UNSET
    _binding_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, event_types: EventTypes | None = None) -> None:
        if event_types is not None:
            self.event_types = event_types

    @property
    def event_types(self) -> EventTypes:
        """Return the manifest -> class map this serializer resolves with."""
        types = self._event_types
        if types is None:
            with self._binding_lock:
                if self._event_types is None:
                    self._event_types, self._event_types_source = EventTypes(), _Source.OWN
                types = self._event_types
        return types

    @event_types.setter
    def event_types(self, event_types: EventTypes) -> None:
        with self._binding_lock:
            self._event_types, self._event_types_source = event_types, _Source.GIVEN
        self._event_types_changed()

    def bind_event_types(self, event_types: EventTypes) -> None:
        """Resolve with a registry's ``event_types`` unless this serializer has been given its own.

        Classes registered in a map this serializer made for itself (before it
        was registered anywhere) are carried over.

        Raises:
            ConfigurationError: it already resolves with another registry's event types.
        """
        with self._binding_lock:
            current, source = self._event_types, self._event_types_source
            if source is _Source.GIVEN or current is event_types:
                return
            if source is _Source.REGISTRY:
                raise ConfigurationError(
                    f"this {type(self).__qualname__} already reads with another registry's"
                    " event types: give each registry its own instance, or pass event_types"
                )
            if current is not None:
                for manifest in current.manifests():
                    event_types.register(current.resolve(manifest))
            self._event_types, self._event_types_source = event_types, _Source.REGISTRY
        self._event_types_changed()

    def _event_types_changed(self) -> None:
        """Drop whatever was cached from the previous ``event_types`` (for subclasses)."""

    def classes(self) -> tuple[type, ...]:
        """Return the classes this serializer is made for (registered and bound by a registry)."""
        return ()
