"""Dataclasses as JSON, through pydantic's ``TypeAdapter`` when pydantic is installed."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from melange.exceptions import (
    DeserializationError,
    MessageValidationError,
    SerializationError,
)
from melange.manifests import EventTypes
from melange.serializers.base import TypedSerializer

__all__ = ["DataclassSerializer"]

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_decode = json.JSONDecoder().decode
_UNSET = object()


class DataclassSerializer(TypedSerializer):
    """Dataclass instances as JSON objects.

    With pydantic installed, a ``TypeAdapter`` per class writes and validates
    them, so nested dataclasses, ``Decimal``, ``datetime`` and ``UUID`` fields
    round-trip. Without it, the standard library writes ``dataclasses.asdict``
    and reads with ``cls(**fields)``: JSON-native field types only.
    """

    def __init__(self, event_types: EventTypes | None = None) -> None:
        # class -> TypeAdapter, or None when pydantic is not installed
        self._adapters: dict[type, Any] = {}
        super().__init__(event_types)

    @staticmethod
    def identifier() -> int:
        """Return 5."""
        return 5

    def serialize(self, data: Any) -> str:
        """Return a dataclass instance as a JSON object.

        Raises:
            SerializationError: ``data`` is not a dataclass instance, or a field cannot be written.
        """
        if not dataclasses.is_dataclass(data) or isinstance(data, type):
            raise SerializationError(f"{type(data).__qualname__} is not a dataclass instance")
        cls = type(data)
        adapter = self._adapter(cls)
        try:
            if adapter is not None:
                return str(adapter.dump_json(data).decode())
            return _encode(dataclasses.asdict(data))
        except (TypeError, ValueError, RecursionError) as e:
            # pydantic's PydanticSerializationError is a ValueError
            raise SerializationError(f"cannot serialize {cls.__qualname__}: {e}") from e

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        """Build the class registered for ``manifest`` from a JSON object.

        Raises:
            UnknownManifestError: no class is known for the manifest.
            DeserializationError: the text is not JSON.
            MessageValidationError: the JSON does not make a valid instance.
        """
        cls = self.event_types.resolve(manifest)
        adapter = self._adapter(cls)
        if adapter is not None:
            return _validate(adapter, data, cls)
        try:
            fields = _decode(data)
        except (ValueError, TypeError, RecursionError) as e:
            raise DeserializationError(f"malformed JSON for {cls.__qualname__}: {e}") from e
        if not isinstance(fields, dict):
            raise MessageValidationError(f"{cls.__qualname__} needs a JSON object")
        try:
            return cls(**fields)
        except TypeError as e:
            raise MessageValidationError(f"invalid {cls.__qualname__}: {e}") from e

    def _adapter(self, cls: type) -> Any:
        adapter = self._adapters.get(cls, _UNSET)
        if adapter is _UNSET:
            adapter = self._adapters[cls] = _new_adapter(cls)
        return adapter


def _new_adapter(cls: type) -> Any:
    try:
        import pydantic
    except ImportError:
        return None
    try:
        return pydantic.TypeAdapter(cls)
    except pydantic.PydanticUserError as e:
        raise SerializationError(f"pydantic cannot handle {cls.__qualname__}: {e}") from e


def _validate(adapter: Any, data: str, cls: type) -> Any:
    import pydantic

    try:
        return adapter.validate_json(data)
    except pydantic.ValidationError as e:
        if any(item["type"] == "json_invalid" for item in e.errors()):
            raise DeserializationError(f"malformed JSON for {cls.__qualname__}: {e}") from e
        raise MessageValidationError(f"invalid {cls.__qualname__}: {e}") from e
