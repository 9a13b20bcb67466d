"""Message groups: which events must be handled one at a time, in order.

An event class names the attribute that holds its group with
``__melange_group__ = "order_id"``, or a publish says ``group_by=`` (an
attribute name or a function of the event). The group travels in the
``message_group_id`` header, which an SQS FIFO queue or topic takes as its
``MessageGroupId``; a dispatcher runs a group's messages one at a time, in
the order it received them (``melange.consuming.groups``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from melange.exceptions import ConfigurationError
from melange.models import Message

__all__ = ["GROUP_ATTRIBUTE", "GROUP_HEADER", "GroupBy", "group_key", "group_of"]

#: The class attribute naming the attribute that holds an event's group.
GROUP_ATTRIBUTE = "__melange_group__"
#: The header a message's group travels in (SQS FIFO's ``MessageGroupId``).
GROUP_HEADER = "message_group_id"
_LONGEST = 128  # characters: SQS's limit on MessageGroupId

#: An attribute name, or a function that returns an event's group.
GroupBy = str | Callable[[Any], object]


def group_key(event: Any, group_by: GroupBy | None = None) -> str | None:
    """Return the group of an event: by ``group_by``, else its class's ``__melange_group__``.

    ``None`` when neither is given. An attribute is read with ``getattr``, or
    as a key of a mapping event.

    Raises:
        ConfigurationError: the attribute is missing, or the group is empty or
            longer than 128 characters.
    """
    how = group_by if group_by is not None else getattr(type(event), GROUP_ATTRIBUTE, None)
    if how is None:
        return None
    if callable(how):
        value = how(event)
    elif isinstance(how, str):
        value = _attribute(event, how)
    else:
        raise ConfigurationError(
            f"group_by must be an attribute name or a function, not {type(how).__name__}"
        )
    group = str(value)
    if not group or len(group) > _LONGEST:
        raise ConfigurationError(
            f"the message group of a {type(event).__qualname__} must be 1 to {_LONGEST}"
            f" characters, not {group[:40]!r}{'…' if len(group) > 40 else ''}"
        )
    return group


def group_of(message: Message) -> str | None:
    """Return the group a received message belongs to (its ``message_group_id``), if any."""
    group = message.metadata.get(GROUP_HEADER)
    return group if isinstance(group, str) and group else None


def _attribute(event: Any, name: str) -> object:
    if isinstance(event, Mapping):
        if name in event:
            return event[name]
    elif hasattr(event, name):
        return getattr(event, name)
    raise ConfigurationError(
        f"a {type(event).__qualname__} has no {name!r} to take its message group from"
    )
