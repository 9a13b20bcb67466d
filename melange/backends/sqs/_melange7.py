"""The wire of the original Melange 7.x on SNS/SQS, written and read (no I/O).

Melange 7 carries a message's manifest and serializer id in two attributes,
``manifest`` (String) and ``serializer_id`` (Number); a message sent straight
to a queue has the body ``{"Message": <content>}``; a topic's subscriptions
deliver the SNS envelope (no raw delivery), whose ``MessageAttributes`` hold
the two. With ``wire="melange7"`` a backend writes that, beside melange's own
message id and headers (which Melange 7 ignores), and reads it, and still
reads what melange writes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from melange.backends.sqs import _wire as wire
from melange.models import Message

__all__ = ["MANIFEST", "SERIALIZER_ID", "WIRES", "attributes_for", "queue_body", "unwrapped"]

MANIFEST = "manifest"
SERIALIZER_ID = "serializer_id"
#: The values of a backend's ``wire`` option.
WIRES = ("melange", "melange7")
#: Melange 7's JsonSerializer: its id, and the manifest it writes (melange's writes none).
_JSON_ID, _JSON_MANIFEST = 1, "json"
_RENAMES = {wire.MANIFEST: MANIFEST, wire.SERIALIZER_ID: SERIALIZER_ID}


def attributes_for(message: Message) -> wire.Attributes:
    """Return the attributes of a message on Melange 7's wire.

    The manifest and serializer id take Melange 7's names; a JSON message with
    no manifest gets ``"json"``, as Melange 7 writes it (it reads no
    attribute of a queue message without one, and SNS refuses an empty one).
    """
    attributes = {_RENAMES.get(k, k): v for k, v in wire.attributes_for(message).items()}
    if MANIFEST not in attributes and message.serializer_id == _JSON_ID:
        attributes[MANIFEST] = {"DataType": "String", "StringValue": _JSON_MANIFEST}
    return attributes


def queue_body(content: str) -> str:
    """Return the body of a message sent straight to a queue: ``{"Message": content}``."""
    return json.dumps({"Message": content})


def unwrapped(received: Mapping[str, Any]) -> Mapping[str, Any]:
    """Return a ``ReceiveMessage`` entry as melange's wire has it; never raises.

    An SNS envelope gives its ``Message`` and its attributes; a
    ``{"Message": …}`` body gives its content, unless melange's own wire sent
    it (its attributes name the manifest or serializer melange's way: then
    the body is the content, whatever it holds). ``manifest`` and
    ``serializer_id`` stand for melange's own unless those are there too.
    """
    body = received.get("Body")
    attributes: dict[str, Any] = dict(received.get("MessageAttributes") or {})
    content = _wrapped_content(body)
    if content is not None and not _is_envelope(content[1]) and set(_RENAMES) & set(attributes):
        content = None
    if content is not None:
        body, envelope = content
        for name, value in _envelope_attributes(envelope).items():
            attributes.setdefault(name, value)
    for ours, theirs in _RENAMES.items():
        if theirs in attributes:
            value = attributes.pop(theirs)
            attributes.setdefault(ours, value)
    if content is None and attributes == (received.get("MessageAttributes") or {}):
        return received
    return {**received, "Body": body, "MessageAttributes": attributes}


def _wrapped_content(body: object) -> tuple[str, Mapping[str, Any]] | None:
    """Return (content, envelope) of a ``{"Message": "…"}`` body, or ``None``."""
    if not isinstance(body, str) or not body.startswith("{"):
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("Message"), str):
        return None
    return parsed["Message"], parsed


def _is_envelope(parsed: Mapping[str, Any]) -> bool:
    return parsed.get("Type") == "Notification" and isinstance(parsed.get("TopicArn"), str)


def _envelope_attributes(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """Return an SNS envelope's ``MessageAttributes`` in SQS's shape, but unreadable ones."""
    found = envelope.get("MessageAttributes")
    if not isinstance(found, dict):
        return {}
    attributes: dict[str, Any] = {}
    for name, attribute in found.items():
        if not isinstance(name, str) or not isinstance(attribute, dict):
            continue
        kind, value = attribute.get("Type"), attribute.get("Value")
        if not isinstance(kind, str) or not isinstance(value, str):
            continue
        if kind.startswith("Binary"):
            try:
                binary = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                continue
            attributes[name] = {"DataType": kind, "BinaryValue": binary}
        else:
            attributes[name] = {"DataType": kind, "StringValue": value}
    return attributes
