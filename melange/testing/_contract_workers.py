"""What ``melange worker`` runs in the dispatcher-on-backend contract's process tests.

    melange worker melange.testing._contract_workers:consumers \
        --middleware melange.testing._contract_workers:Crash ...

The environment tells the worker what to do: ``CONTRACT_OUT`` (a file of
``event number pid`` lines, one per side effect, fsynced), ``CONTRACT_MARKS``
(a file where ``started N`` / ``settled N`` is written when a message reaches
that point), ``CONTRACT_SECONDS`` (how long each handler takes) and
``CONTRACT_HANG`` (``before``: hang in the handler before its side effect;
``after``: hang after the handler and its idempotency record, before the ack;
anything else: never hang).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from melange import Consumer, Message, Middleware, listener
from melange.backends.interfaces import MessagingBackend
from melange.middleware import Handling
from melange.outcomes import Outcome

__all__ = ["ContractEvent", "Crash", "SideEffects", "consumers"]

_FOREVER = 3600.0


@dataclass(frozen=True)
class ContractEvent:
    """The event the dispatcher contract publishes: a number to count side effects by."""

    number: int


def _append(path: str | None, line: str) -> None:
    if path is None:
        return
    with open(path, "a") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


class SideEffects(Consumer):
    """Records one line per handled event: the side effect whose count the tests check."""

    def __init__(self) -> None:
        super().__init__(consumer_id="contract-side-effects")
        self.out = os.environ["CONTRACT_OUT"]
        self.marks = os.environ.get("CONTRACT_MARKS")
        self.seconds = float(os.environ.get("CONTRACT_SECONDS", "0"))
        self.hang = os.environ.get("CONTRACT_HANG", "")

    @listener
    def on_number(self, event: ContractEvent, message: Message) -> None:
        _append(self.marks, f"started {event.number} {os.getpid()}")
        if self.hang == "before":
            time.sleep(_FOREVER)  # killed here, before the side effect
        time.sleep(self.seconds)
        _append(self.out, f"{event.number} {os.getpid()}")


def consumers(backend: MessagingBackend) -> list[Consumer]:
    """Return the consumers of a contract worker."""
    return [SideEffects()]


class Crash(Middleware):
    """With ``CONTRACT_HANG=after``: hangs once a message is handled and recorded, not acked."""

    def __init__(self) -> None:
        self.marks = os.environ.get("CONTRACT_MARKS")
        self.hang = os.environ.get("CONTRACT_HANG", "")

    def handle_message(self, handling: Handling, call_next: Callable[[], Outcome]) -> Outcome:
        outcome = call_next()
        number = getattr(handling.event, "number", "?")
        _append(self.marks, f"settled {number} {os.getpid()}")
        if self.hang == "after":
            time.sleep(_FOREVER)  # killed here: handled, recorded, not acknowledged
        return outcome
