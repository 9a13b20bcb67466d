"""Melange 7's serializers and registry: its config dicts, ``Dict`` bindings and lookups."""

from __future__ import annotations

import os
import secrets
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from melange import serializers as current
from melange.compat._deprecation import deprecated

__all__ = [
    "PICKLE_KEY_VARIABLE",
    "JsonSerializer",
    "PickleSerializer",
    "Serializer",
    "SerializerRegistry",
    "sort",
]

_T = TypeVar("_T")
#: Where ``PickleSerializer()`` finds the key its peers share.
PICKLE_KEY_VARIABLE = "MELANGE_PICKLE_KEY"
_process_key = secrets.token_bytes(32)
# Melange 7 bound its config to typing's aliases; melange binds classes.
_ALIASES: dict[Any, type] = {
    typing.Dict: dict,  # noqa: UP006 - the alias Melange 7 configs name
    typing.List: list,  # noqa: UP006
    typing.Mapping: dict,
}


class Serializer(current.Serializer, Generic[_T]):
    """Melange 7's serializer base: generic in what it writes, no manifest by default."""

    def manifest(self, data: Any) -> str | None:
        """Return ``None``, as Melange 7's base did."""
        return None


class JsonSerializer(current.JsonSerializer):
    """JSON with Melange 7's manifest ``"json"`` (id 1, as in 7.x)."""

    def manifest(self, data: Any) -> str | None:
        """Return ``"json"``."""
        return "json"


class PickleSerializer(current.PickleSerializer):
    """Melange 7's ``PickleSerializer()`` (id 2), signed as melange's always is.

    Built with no key, as Melange 7's registry builds it, it signs with
    ``MELANGE_PICKLE_KEY`` when that is set (every peer must share it), and
    otherwise with a random key of this process: only this process can read
    what it wrote. Unsigned pickles (Melange 7's own) are never loaded.
    """

    def __init__(self, secret_key: bytes | str | None = None) -> None:
        if secret_key is None:
            secret_key = os.environ.get(PICKLE_KEY_VARIABLE) or _process_key
        super().__init__(secret_key)

    def manifest(self, data: Any) -> str | None:
        """Return the class's qualified name, as Melange 7 did (``"dict"``, ``"Outer.Inner"``)."""
        return type(data).__qualname__


class SerializerRegistry(current.SerializerRegistry):
    """``SerializerRegistry(config)`` with Melange 7's keys and method names.

    ``typing.Dict`` (and ``List``, ``Mapping``) in ``serializer_bindings`` bind
    ``dict`` (and ``list``); everything else is ``melange.serializers.SerializerRegistry``.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        deprecated("SerializerRegistry(config)", "melange.SerializerRegistry(config)")
        bindings = {
            _ALIASES.get(cls, cls): name
            for cls, name in (config.get("serializer_bindings") or {}).items()
        }
        super().__init__({**config, "serializer_bindings": bindings})

    def find_serializer_for(self, obj: Any) -> current.Serializer:
        """Return the serializer for an object (``serializer_for``)."""
        return self.serializer_for(obj)

    def get_serializer_by_id(self, identifier: int) -> current.Serializer:
        """Return the serializer with this id (``by_id``)."""
        return self.by_id(identifier)

    def get_serializer_by_name(self, name: str) -> current.Serializer:
        """Return the serializer registered under ``name`` (``by_name``)."""
        return self.by_name(name)

    def deserialize_with_serializerid(
        self, data: str, serializer_id: int, manifest: str | None = None
    ) -> Any:
        """Read ``data`` with the serializer of that id."""
        return self.deserialize(data, manifest, serializer_id)

    def deserialize_with_class(self, data: str, klass: type, manifest: str | None = None) -> Any:
        """Read ``data`` with the serializer ``klass`` is bound to."""
        return self.serializer_for_class(klass).deserialize(data, manifest)


def sort(bindings: Sequence[tuple[type, _T]]) -> list[tuple[type, _T]]:
    """Return ``(class, serializer)`` pairs with every subclass before its bases.

    Melange 7 ordered its bindings this way to pick the most specific one;
    melange's registry walks each class's MRO instead, with the same result.
    """
    ordered: list[tuple[type, _T]] = []
    for pair in bindings:
        place = next(
            (n for n, (cls, _) in enumerate(ordered) if issubclass(pair[0], cls)), len(ordered)
        )
        ordered.insert(place, pair)
    return ordered
