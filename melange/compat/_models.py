"""Melange 7's message and handles: a positional ``Message``, ``unwrapped_obj``, ``MessageDto``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from melange import models as current

__all__ = ["Message", "MessageDto", "QueueWrapper", "TopicWrapper"]


class Message(current.Message):
    """``Message(message_id, content, metadata, serializer_id, manifest)``, Melange 7's order.

    A ``None`` message id gets a new one; metadata that is not a mapping of
    headers (Melange 7 kept the broker's own object there) is dropped.
    """

    __slots__ = ()

    def __init__(  # noqa: PLR0917 - Melange 7's positional order
        self,
        message_id: str | None,
        content: str,
        metadata: Any = None,
        serializer_id: int | None = None,
        manifest: str | None = None,
        receive_count: int = 0,
        receipt: Any = None,
    ) -> None:
        super().__init__(
            content=content,
            message_id=message_id or current.new_message_id(),
            metadata=dict(metadata) if isinstance(metadata, Mapping) else {},
            serializer_id=serializer_id,
            manifest=manifest,
            receive_count=receive_count,
            receipt=receipt,
        )

    @staticmethod
    def create(
        content: str, manifest: str | None, serializer_id: int | None, metadata: Any = None
    ) -> Message:
        """Return a new message to publish (Melange 7's argument order)."""
        return Message(None, content, metadata, serializer_id, manifest)

    def get_message_manifest(self) -> str | None:
        """Return the manifest."""
        return self.manifest


class QueueWrapper(current.QueueWrapper):
    """A queue handle with Melange 7's ``unwrapped_obj``."""

    __slots__ = ()

    @property
    def unwrapped_obj(self) -> Any:
        """Return the broker's own object for this queue (``unwrap()``)."""
        return self.obj


class TopicWrapper(current.TopicWrapper):
    """A topic handle with Melange 7's ``unwrapped_obj``."""

    __slots__ = ()

    @property
    def unwrapped_obj(self) -> Any:
        """Return the broker's own object for this topic (``unwrap()``)."""
        return self.obj


@dataclass(frozen=True, slots=True)
class MessageDto:
    """A message to send in a batch, with its FIFO group and deduplication ids (7.3)."""

    message: current.Message
    message_group_id: str | None = None
    message_deduplication_id: str | None = None
