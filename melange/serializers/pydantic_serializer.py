"""pydantic models as JSON."""

from __future__ import annotations

from typing import Any

from melange.exceptions import (
    DeserializationError,
    MessageValidationError,
    MissingExtraError,
    SerializationError,
)
from melange.serializers.base import TypedSerializer

try:
    import pydantic
    import pydantic_core
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("pydantic", "pydantic") from e

__all__ = ["PydanticSerializer"]


class PydanticSerializer(TypedSerializer):
    """``model_dump_json`` out, ``model_validate_json`` into the manifest's class."""

    @staticmethod
    def identifier() -> int:
        return 3

    def serialize(self, data: Any) -> str:
        try:
            text: str = data.__pydantic_serializer__.to_json(data).decode()
        except (AttributeError, pydantic_core.PydanticSerializationError) as e:
            raise SerializationError(f"cannot serialize {type(data).__qualname__}: {e}") from e
        return text

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        cls = self.event_types.resolve(manifest)
        try:
            return cls.__pydantic_validator__.validate_json(data)  # type: ignore[attr-defined]
        except pydantic.ValidationError as e:
            raise _translate(e, cls) from e
        except AttributeError as e:
            raise SerializationError(f"{cls.__qualname__} is not a pydantic model") from e


def _translate(error: pydantic.ValidationError, cls: type) -> DeserializationError:
    if any(item["type"] == "json_invalid" for item in error.errors()):
        return DeserializationError(f"malformed JSON for {cls.__qualname__}: {error}")
    return MessageValidationError(f"invalid {cls.__qualname__}: {error}")
