"""pydantic models as JSON."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from melange.exceptions import (
    DeserializationError,
    MessageValidationError,
    MissingExtraError,
    SerializationError,
)
from melange.manifests import EventTypes
from melange.serializers.base import TypedSerializer

try:
    import pydantic
    import pydantic_core
except ImportError as e:
    raise MissingExtraError("pydantic", "pydantic") from e

__all__ = ["PydanticSerializer"]

_ToJson = Callable[[Any], bytes]
_FromJson = Callable[[str], Any]


class PydanticSerializer(TypedSerializer):
    """``model_dump_json`` out, ``model_validate_json`` into the class of the manifest.

    Both go straight to the model's compiled serializer and validator (what
    those two methods call, with their defaults), looked up once per class; a
    model that overrides either method is called through it. A manifest known
    here as a dataclass or a ``TypedDict`` is read with a ``TypeAdapter``.
    """

    def __init__(self, event_types: EventTypes | None = None) -> None:
        self._writers: dict[type, _ToJson] = {}
        # manifest -> reader; valid as long as event_types is the same map (it only grows)
        self._readers: dict[str | None, _FromJson] = {}
        super().__init__(event_types)

    @staticmethod
    def identifier() -> int:
        """Return 3."""
        return 3

    def serialize(self, data: Any) -> str:
        """Return the model as JSON.

        Raises:
            SerializationError: ``data`` is not a pydantic model, or a field cannot be written.
        """
        cls = type(data)
        to_json = self._writers.get(cls)
        if to_json is None:
            to_json = self._writer_for(cls)
        try:
            return to_json(data).decode()
        except pydantic_core.PydanticSerializationError as e:
            raise SerializationError(f"cannot serialize {cls.__qualname__}: {e}") from e

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        """Validate JSON into the class registered for ``manifest``.

        Raises:
            UnknownManifestError: no class is known for the manifest.
            DeserializationError: the text is not JSON.
            MessageValidationError: the JSON does not make a valid instance.
        """
        readers = self._readers
        from_json = readers.get(manifest)
        if from_json is None:
            from_json = self._reader_for(readers, manifest)
        try:
            return from_json(data)
        except pydantic.ValidationError as e:
            raise _translate(e, manifest) from e

    def _writer_for(self, cls: type) -> _ToJson:
        if not issubclass(cls, pydantic.BaseModel):
            raise SerializationError(f"{cls.__qualname__} is not a pydantic model")
        if _overrides(cls, "model_dump_json"):
            return _call_model_dump_json
        writer: _ToJson = cls.__pydantic_serializer__.to_json
        self._writers[cls] = writer
        return writer

    def _reader_for(self, readers: dict[str | None, _FromJson], manifest: str | None) -> _FromJson:
        cls = self.event_types.resolve(manifest)
        if isinstance(cls, type) and issubclass(cls, pydantic.BaseModel):
            if _overrides(cls, "model_validate_json") or not cls.__pydantic_complete__:
                # model_validate_json finishes (or reports) an incomplete model itself.
                return cls.model_validate_json
            reader: _FromJson = cls.__pydantic_validator__.validate_json
        else:
            try:
                reader = pydantic.TypeAdapter(cls).validate_json
            except pydantic.PydanticUserError as e:
                raise SerializationError(f"pydantic cannot read {cls!r}: {e}") from e
        readers[manifest] = reader
        return reader

    def _event_types_changed(self) -> None:
        # A new dict, not clear(): a reader resolved concurrently lands in the old one.
        self._readers = {}


def _overrides(cls: type, method: str) -> bool:
    ours, base = getattr(cls, method), getattr(pydantic.BaseModel, method)
    return getattr(ours, "__func__", ours) is not getattr(base, "__func__", base)


def _call_model_dump_json(data: Any) -> bytes:
    return str(data.model_dump_json()).encode()


def _translate(error: pydantic.ValidationError, manifest: str | None) -> DeserializationError:
    if any(item["type"] == "json_invalid" for item in error.errors()):
        return DeserializationError(f"malformed JSON for manifest {manifest!r}: {error}")
    return MessageValidationError(f"invalid event for manifest {manifest!r}: {error}")
