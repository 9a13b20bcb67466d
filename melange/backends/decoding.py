"""Turning what a broker hands out into a ``Message``, one message at a time.

A backend decodes each received message on its own: a field it cannot parse
makes that one message *undecodable* (the ``DECODE_ERROR`` header says why)
instead of raising out of ``retrieve_messages``; the dispatcher dead-letters it
with its original content. Text that is not UTF-8 is kept byte for byte with
``surrogateescape``, so a dead-letter copy carries the original bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from melange.exceptions import UndecodableMessageError
from melange.models import DECODE_ERROR, Message, _unchecked, new_message_id

__all__ = [
    "bytes_of",
    "header_text",
    "integer_of",
    "original_form",
    "text_of",
    "undecodable",
]


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
    return str(value)


def integer_of(value: Any, what: str) -> int:
    """Return ``value`` (an int, or text or bytes of one) as an int.

    Raises:
        UndecodableMessageError: it is not an integer (``what`` names it in the message).
    """
    if type(value) is int:
        return value
    text = header_text(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    raise UndecodableMessageError(f"{what} is not an integer: {text[:80]!r}")


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
    headers = {str(k): header_text(v) for k, v in metadata.items()}
    headers[DECODE_ERROR] = reason
    return _unchecked(
        content, message_id or new_message_id(), headers, None, manifest, receive_count, receipt
    )
