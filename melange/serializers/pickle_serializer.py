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
    """Pickle behind an HMAC-SHA256 signature, checked before anything is unpickled.

    The content is base64 of ``HMAC-SHA256(secret_key, pickled) + pickled``.
    Every peer must share ``secret_key``; anyone who has it can run code in
    every reader, so keep it as secret as a password.

    Raises:
        ConfigurationError: ``secret_key`` is empty or not bytes or str.
    """

    def __init__(self, secret_key: bytes | str) -> None:
        key = secret_key.encode() if isinstance(secret_key, str) else secret_key
        if not isinstance(key, bytes) or not key:
            raise ConfigurationError("PickleSerializer needs a non-empty secret_key (bytes or str)")
        self._key = key

    @staticmethod
    def identifier() -> int:
        """Return 2."""
        return 2

    def serialize(self, data: Any) -> str:
        """Return ``data`` pickled, signed and base64-encoded.

        Raises:
            SerializationError: ``data`` cannot be pickled.
        """
        try:
            payload = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as e:
            raise SerializationError(f"cannot pickle {type(data).__qualname__}: {e}") from e
        signature = hmac.new(self._key, payload, _DIGEST).digest()
        return base64.b64encode(signature + payload).decode("ascii")

    def deserialize(self, data: str, manifest: str | None = None) -> Any:
        """Check the signature, then unpickle; the manifest is ignored.

        Raises:
            DeserializationError: the text is not base64, or the signed pickle cannot be loaded.
            UnsafePayloadError: the signature is missing or was not made with this key.
        """
        try:
            raw = base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError, AttributeError) as e:
            raise DeserializationError(f"malformed signed pickle: {e}") from e
        signature, payload = raw[:_SIGNATURE_BYTES], raw[_SIGNATURE_BYTES:]
        expected = hmac.new(self._key, payload, _DIGEST).digest()
        if not payload or not hmac.compare_digest(signature, expected):
            raise UnsafePayloadError("pickle payload signature does not match: not loaded")
        try:
            return pickle.loads(payload)
        except Exception as e:
            # The payload is signed by a peer we trust, so any failure is a broken message.
            raise DeserializationError(f"signed pickle cannot be loaded: {e}") from e
