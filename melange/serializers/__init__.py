"""Serializers: events to text and back. pydantic and marshmallow load only when used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from melange.serializers.base import Serializer, TypedSerializer
from melange.serializers.dataclass_serializer import DataclassSerializer
from melange.serializers.json_serializer import JsonSerializer
from melange.serializers.pickle_serializer import PickleSerializer
from melange.serializers.registry import SerializerRegistry

if TYPE_CHECKING:
    from melange.serializers.marshmallow_serializer import MarshmallowSerializer
    from melange.serializers.pydantic_serializer import PydanticSerializer

__all__ = [
    "DataclassSerializer",
    "JsonSerializer",
    "MarshmallowSerializer",
    "PickleSerializer",
    "PydanticSerializer",
    "Serializer",
    "SerializerRegistry",
    "TypedSerializer",
]

# These modules import their library at the top: load them on first use only.
_LAZY = {
    "PydanticSerializer": "melange.serializers.pydantic_serializer",
    "MarshmallowSerializer": "melange.serializers.marshmallow_serializer",
}


def __getattr__(name: str) -> Any:
    """Import ``PydanticSerializer`` or ``MarshmallowSerializer`` when first asked for.

    Raises:
        MissingExtraError: the library is not installed.
        AttributeError: no such name.
    """
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
