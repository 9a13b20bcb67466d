"""JSON for dicts, lists and plain values."""

from __future__ import annotations

import json
from typing import Any

from melange.exceptions import DeserializationError, SerializationError
from melange.serializers.base import Serializer

__all__ = ["JsonSerializer"]


class JsonSerializer(Serializer):
    """Plain JSON values; dicts travel without a manifest."""

    @staticmethod
    def identifier() -> int:
        return 1

    def manifest(self, data: Any) -> str | None:
        return None

    def serialize(self, data: Any) -> str:
        try:
            return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise SerializationError(f"not JSON-serializable: {e}") from e

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        try:
            return json.loads(data)
        except ValueError as e:
            raise DeserializationError(f"malformed JSON: {e}") from e
