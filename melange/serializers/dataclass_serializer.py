"""Dataclasses as JSON, validated by pydantic when it is installed."""

from __future__ import annotations

import dataclasses
import json
from functools import lru_cache
from typing import Any

from melange.exceptions import (
    DeserializationError,
    MessageValidationError,
    SerializationError,
)
from melange.serializers.base import TypedSerializer

__all__ = ["DataclassSerializer"]


@lru_cache(maxsize=1024)
def _adapter(cls: type) -> Any:
    try:
        from pydantic import TypeAdapter
    except ImportError:
        return None
    return TypeAdapter(cls)


class DataclassSerializer(TypedSerializer):
    """Dataclass instances; nested dataclasses, Decimal, datetime and UUID need pydantic."""

    @staticmethod
    def identifier() -> int:
        return 5

    def serialize(self, data: Any) -> str:
        if not dataclasses.is_dataclass(data) or isinstance(data, type):
            raise SerializationError(f"{type(data).__qualname__} is not a dataclass instance")
        adapter = _adapter(type(data))
        try:
            if adapter is not None:
                return str(adapter.dump_json(data).decode())
            return json.dumps(dataclasses.asdict(data), separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise SerializationError(f"cannot serialize {type(data).__qualname__}: {e}") from e

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        cls = self.event_types.resolve(manifest)
        adapter = _adapter(cls)
        if adapter is not None:
            import pydantic

            try:
                return adapter.validate_json(data)
            except pydantic.ValidationError as e:
                if any(item["type"] == "json_invalid" for item in e.errors()):
                    raise DeserializationError(f"malformed JSON for {cls.__qualname__}") from e
                raise MessageValidationError(f"invalid {cls.__qualname__}: {e}") from e
        try:
            fields = json.loads(data)
        except ValueError as e:
            raise DeserializationError(f"malformed JSON for {cls.__qualname__}: {e}") from e
        if not isinstance(fields, dict):
            raise MessageValidationError(f"{cls.__qualname__} needs a JSON object")
        try:
            return cls(**fields)
        except TypeError as e:
            raise MessageValidationError(f"invalid {cls.__qualname__}: {e}") from e
