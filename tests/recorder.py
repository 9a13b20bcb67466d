"""The event and consumer that worker processes of the crash tests share."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel

from melange import Consumer, Message, listener


class Numbered(BaseModel):
    number: int


class Recorder(Consumer):
    """Appends ``number receive_count pid`` per handled event to a file, on disk at once.

    With ``hang`` it then sleeps in the handler until the process is killed.
    """

    def __init__(self, out: str, hang: bool) -> None:
        super().__init__()
        self.out = out
        self.hang = hang

    @listener
    def on_number(self, event: Numbered, message: Message) -> None:
        with open(self.out, "a") as out:
            out.write(f"{event.number} {message.receive_count} {os.getpid()}\n")
            out.flush()
            os.fsync(out.fileno())
        if self.hang:
            time.sleep(3600)  # killed here, in the middle of the handler
