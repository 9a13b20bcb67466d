"""Message groups on one worker: a group's messages run one at a time, in the order received.

A message is in the group its ``message_group_id`` header names
(``melange.grouping``); one without the header is in none and runs as soon
as a thread or task is free. ``GroupOrder`` is the bookkeeping, with no
waiting: every message of a received batch joins the line of its group, and
only the first in line may start. When one is retried, the messages of its
group in line behind it give way (they go back to the queue unhandled), so
that a FIFO queue delivers the group again from the retried one.
``GroupTurns`` waits for a turn on threads, ``AsyncGroupTurns`` on a loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterable

from melange.grouping import group_of
from melange.models import Message

__all__ = ["AsyncGroupTurns", "GroupOrder", "GroupTurns"]

_Line = tuple[str, str]  # (queue, group)
_WAKE_SECONDS = 0.1  # a waiting thread looks at its stop flag this often


class GroupOrder:
    """Which received message of each group may start; not thread-safe (the turns lock it)."""

    def __init__(self) -> None:
        self._lines: dict[_Line, deque[Message]] = {}
        self._giving_way: set[int] = set()  # ids of messages whose group was retried ahead of them

    def join(self, queue: str, messages: Iterable[Message]) -> None:
        """Put each grouped message at the end of its group's line."""
        for message in messages:
            group = group_of(message)
            if group is not None:
                self._lines.setdefault((queue, group), deque()).append(message)

    def may_start(self, queue: str, message: Message) -> bool:
        """Return whether nothing received earlier in its group is still waiting or running."""
        group = group_of(message)
        if group is None:
            return True
        line = self._lines.get((queue, group))
        return line is None or line[0] is message or _index(line, message) is None

    def gives_way(self, message: Message) -> bool:
        """Return whether the message must go back unhandled: its group was retried ahead of it."""
        return id(message) in self._giving_way

    def leave(self, queue: str, message: Message, *, retried: bool) -> None:
        """Take a message out of its line, done or given back.

        ``retried``: it is to come again, so those behind it give way.
        """
        group = group_of(message)
        self._giving_way.discard(id(message))
        if group is None:
            return
        key = (queue, group)
        line = self._lines.get(key)
        if line is None:
            return
        at = _index(line, message)
        if at is None:
            return
        del line[at]
        if retried:
            self._giving_way.update(id(behind) for behind in line)
        if not line:
            del self._lines[key]


class GroupTurns:
    """``GroupOrder`` for the threads of one dispatcher: ``wait_turn`` blocks for a turn."""

    def __init__(self) -> None:
        self._order = GroupOrder()
        self._changed = threading.Condition()

    def join(self, queue: str, messages: Iterable[Message]) -> None:
        """Line up a received batch."""
        with self._changed:
            self._order.join(queue, messages)

    def wait_turn(self, queue: str, message: Message, stopping: Callable[[], bool]) -> bool:
        """Wait until the message may start; return ``False`` if it must go back unhandled.

        It must when its group was retried ahead of it, or when ``stopping()``
        becomes true while it waits.
        """
        with self._changed:
            while not self._order.may_start(queue, message):
                if stopping():
                    return False
                self._changed.wait(_WAKE_SECONDS)
            return not self._order.gives_way(message)

    def leave(self, queue: str, message: Message, *, retried: bool = False) -> None:
        """Take the message out of its line and wake those waiting for their turn."""
        with self._changed:
            self._order.leave(queue, message, retried=retried)
            self._changed.notify_all()


class AsyncGroupTurns:
    """``GroupOrder`` for the tasks of one consume loop, all on one event loop."""

    def __init__(self) -> None:
        self._order = GroupOrder()
        self._changed = asyncio.Condition()

    def join(self, queue: str, messages: Iterable[Message]) -> None:
        """Line up a received batch."""
        self._order.join(queue, messages)

    async def wait_turn(self, queue: str, message: Message) -> bool:
        """Wait until the message may start; return ``False`` if it must go back unhandled."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._order.may_start(queue, message))
            return not self._order.gives_way(message)

    async def leave(self, queue: str, message: Message, *, retried: bool = False) -> None:
        """Take the message out of its line and wake the tasks waiting for their turn."""
        async with self._changed:
            self._order.leave(queue, message, retried=retried)
            self._changed.notify_all()


def _index(line: deque[Message], message: Message) -> int | None:
    """Return where this very message (not an equal one: a redelivery) is in the line."""
    return next((n for n, waiting in enumerate(line) if waiting is message), None)
