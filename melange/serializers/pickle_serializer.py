"""Signed pickle, for trusted peers only: never read unless registered with a key."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import pickle
from typing import Any

from melange.exceptions import (
    ConfigurationError,
    DeserializationError,
    SerializationError,
    UnsafePayloadError,
)
from melange.serializers.base import Serializer

__all__ = ["PickleSerializer"]

_DIGEST = hashlib.sha256
_SIGNATURE_BYTES = _DIGEST().digest_size


class PickleSerializer(Serializer):
    """Pickle signed with HMAC-SHA256; the signature is checked before anything is unpickled.

    Raises:
        ConfigurationError: no secret key was given.
    """

    def __init__(self, secret_key: bytes | str) -> None:
        key = secret_key.encode() if isinstance(secret_key, str) else secret_key
        if not key:
            raise ConfigurationError("PickleSerializer needs a non-empty secret_key")
        self._key = key

    @staticmethod
    def identifier() -> int:
        return 2

    def serialize(self, data: Any) -> str:
        try:
            payload = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise SerializationError(f"cannot pickle {type(data).__qualname__}: {e}") from e
        signature = hmac.new(self._key, payload, _DIGEST).digest()
        return base64.b64encode(signature + payload).decode("ascii")

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        try:
            raw = base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as e:
            raise DeserializationError(f"malformed signed pickle: {e}") from e
        signature, payload = raw[:_SIGNATURE_BYTES], raw[_SIGNATURE_BYTES:]
        expected = hmac.new(self._key, payload, _DIGEST).digest()
        if len(raw) <= _SIGNATURE_BYTES or not hmac.compare_digest(signature, expected):
            raise UnsafePayloadError("pickle payload signature does not match: not loaded")
        try:
            return pickle.loads(payload)
        except Exception as e:
            raise DeserializationError(f"signed pickle cannot be loaded: {e}") from e
