"""The serializer contract."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

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
        """Return the name the event travels under (its class's manifest)."""
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


class TypedSerializer(Serializer):
    """A serializer that rebuilds classes, found by manifest in ``event_types``.

    A registry gives the serializers registered in it its own ``event_types``
    unless one was passed here. The manifest is only looked up, never imported.
    """

    def __init__(self, event_types: EventTypes | None = None) -> None:
        self._event_types = event_types

    @property
    def event_types(self) -> EventTypes:
        """Return the manifest -> class map this serializer resolves with."""
        if self._event_types is None:
            self._event_types = EventTypes()
        return self._event_types

    def bind_event_types(self, event_types: EventTypes) -> None:
        """Use ``event_types`` unless this serializer was given its own."""
        if self._event_types is None:
            self._event_types = event_types

    def classes(self) -> tuple[type, ...]:
        """Return the classes this serializer is made for (registered on binding)."""
        return ()
