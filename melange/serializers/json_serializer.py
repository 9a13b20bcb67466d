"""JSON for dicts, lists and plain values."""

from __future__ import annotations

import json
from typing import Any

from melange.exceptions import DeserializationError, SerializationError
from melange.serializers.base import Serializer

__all__ = ["JsonSerializer"]

# Strict RFC 8259 output: NaN and Infinity are not JSON, other services cannot read them.
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_decode = json.JSONDecoder().decode


class JsonSerializer(Serializer):
    """Plain JSON values (dicts, lists, strings, numbers); they travel without a manifest."""

    @staticmethod
    def identifier() -> int:
        """Return 1."""
        return 1

    def manifest(self, data: Any) -> str | None:
        """Return ``None``: a JSON value is read back as itself, whatever its manifest."""
        return None

    def serialize(self, data: Any) -> str:
        """Return ``data`` as JSON text.

        Raises:
            SerializationError: ``data`` is not made of JSON values (or holds NaN or infinity).
        """
        try:
            return _encode(data)
        except (TypeError, ValueError, RecursionError) as e:
            raise SerializationError(f"not JSON-serializable: {e}") from e

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        """Return the value in JSON text; the manifest is ignored.

        Raises:
            DeserializationError: the text is not JSON (or nests too deep to read).
        """
        try:
            return _decode(data)
        except (ValueError, TypeError, RecursionError) as e:
            raise DeserializationError(f"malformed JSON: {e}") from e
