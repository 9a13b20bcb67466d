"""Serializers: events to text and back. pydantic and marshmallow load only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from melange._lazy import lazy_names
from melange.serializers.base import Serializer, TypedSerializer
from melange.serializers.dataclass_serializer import DataclassSerializer
from melange.serializers.json_serializer import JsonSerializer
from melange.serializers.pickle_serializer import PickleSerializer
from melange.serializers.registry import SerializerRegistry
from melange.serializers.versions import NewerVersionError, Upcasters, upcaster, version_of

if TYPE_CHECKING:
    from melange.serializers.marshmallow_serializer import MarshmallowSerializer
    from melange.serializers.pydantic_serializer import PydanticSerializer

__all__ = [
    "DataclassSerializer",
    "JsonSerializer",
    "MarshmallowSerializer",
    "NewerVersionError",
    "PickleSerializer",
    "PydanticSerializer",
    "Serializer",
    "SerializerRegistry",
    "TypedSerializer",
    "Upcasters",
    "upcaster",
    "version_of",
]

# These modules import their library at the top: load them on first use only.
_LAZY = {
    "PydanticSerializer": "melange.serializers.pydantic_serializer",
    "MarshmallowSerializer": "melange.serializers.marshmallow_serializer",
}


__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY)
