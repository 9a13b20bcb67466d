"""Turning what a broker hands out into a ``Message``, one message at a time.

A backend decodes each received message on its own: a field it cannot parse
makes that one message *undecodable* (the ``DECODE_ERROR`` header says why)
instead of raising out of ``retrieve_messages``; the dispatcher dead-letters it
with its original content. Text that is not UTF-8 is kept byte for byte with
``surrogateescape``, so a dead-letter copy carries the original bytes.

Decoders are total: ``decoded_or_undecodable`` wraps each one, so that even a
failure nobody foresaw marks that one message undecodable.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any

from melange._own_headers import (
    FOREIGN_PREFIX,
    OWN_PREFIX,
    SERIALIZER_HEADER,
    disowned,
    foreign_name,
    is_own_header,
    warn_foreign_once,
)
from melange.exceptions import UndecodableMessageError
from melange.models import DECODE_ERROR, Message, new_message_id, unchecked_message

__all__ = [
    "FOREIGN_PREFIX",
    "OWN_PREFIX",
    "SERIALIZER_HEADER",
    "binary_in_json",
    "binary_of_json",
    "bytes_of",
    "decoded_or_undecodable",
    "disowned",
    "foreign_name",
    "header_text",
    "integer_of",
    "is_own_header",
    "original_form",
    "text_of",
    "undecodable",
    "warn_foreign_once",
]

#: Where a backend keeps headers as JSON, a binary value is ``{"base64": "<its bytes>"}``.
_BINARY_KEY = "base64"

# ASCII digits only (``str.isdigit`` also takes "²"), and no more than a 64-bit integer has.
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}", re.ASCII)
_MAX_INTEGER = 2**63 - 1
_MAX_INTEGER_BITS = 10_000


def text_of(raw: bytes) -> tuple[str, str | None]:
    """Return ``raw`` as text and, if it is not valid UTF-8, why (else ``None``)."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return raw.decode("utf-8", "surrogateescape"), f"not UTF-8 text: {e.reason} at {e.start}"


def bytes_of(text: str) -> bytes:
    """Return the bytes ``text_of`` read ``text`` from (UTF-8, surrogates restored)."""
    return text.encode("utf-8", "surrogateescape")


def original_form(text: str) -> str | bytes:
    """Return ``text`` as a driver writes it: itself, or the non-UTF-8 bytes it was read from."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return bytes_of(text)
    return text


def header_text(value: Any) -> str:
    """Return a header value as the string handlers see."""
    if type(value) is str:
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "surrogateescape")
    if type(value) is int and value.bit_length() > _MAX_INTEGER_BITS:
        return f"<an integer of {value.bit_length()} bits>"  # str() refuses 4,300 digits
    try:
        return str(value)
    except Exception as e:  # a value whose str() fails is still a header
        return f"<unreadable {type(value).__name__}: {type(e).__name__}>"


def integer_of(value: Any, what: str) -> int:
    """Return ``value`` (an int, or text or bytes of one) as an int.

    Raises:
        UndecodableMessageError: it is not an integer (``what`` names it in the message).
    """
    if type(value) is int and -_MAX_INTEGER <= value <= _MAX_INTEGER:
        return value
    text = header_text(value).strip()
    if _INTEGER.fullmatch(text) and abs(number := int(text)) <= _MAX_INTEGER:
        return number
    raise UndecodableMessageError(f"{what} is not an integer: {text[:80]!r}")


def decoded_or_undecodable(
    decode: Callable[[], Message], fallback: Callable[[], tuple[str, str | None, Any]]
) -> Message:
    """Return ``decode()``, or, if it fails in any way, the message marked undecodable.

    ``fallback`` gives what can still be read without parsing: the content,
    the message id (or ``None``) and the receipt. It must not raise.
    """
    try:
        return decode()
    except Exception as e:  # the wire is untrusted: no failure may leave a receive
        content, message_id, receipt = fallback()
        reason = f"cannot be decoded: {type(e).__name__}: {header_text(e)[:200]}"
        return undecodable(content, message_id, {}, reason, 0, receipt)


def undecodable(  # noqa: PLR0917 - mirrors Message's fields
    content: str,
    message_id: str | None,
    metadata: Mapping[str, Any],
    reason: str,
    receive_count: int,
    receipt: Any,
    manifest: str | None = None,
) -> Message:
    """Return a message the dispatcher will dead-letter for ``reason``, headers as text."""
    headers = {header_text(k): header_text(v) for k, v in metadata.items()}
    headers[DECODE_ERROR] = reason
    return unchecked_message(
        content, message_id or new_message_id(), headers, None, manifest, receive_count, receipt
    )


def binary_in_json(value: bytes) -> dict[str, str]:
    """Return how a binary header value is written where headers are kept as JSON."""
    return {_BINARY_KEY: base64.b64encode(value).decode("ascii")}


def binary_of_json(value: Any) -> bytes | None:
    """Return the bytes of a ``binary_in_json`` value; ``None`` if ``value`` is not one."""
    if not (type(value) is dict and len(value) == 1 and type(value.get(_BINARY_KEY)) is str):
        return None
    try:
        return base64.b64decode(value[_BINARY_KEY], validate=True)
    except (binascii.Error, ValueError):
        return None
