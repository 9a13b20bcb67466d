"""What ``melange worker`` runs in the message group tests.

``GROUPS_OUT`` is a file of ``start|fail|done <group> <seq> <pid> <receives>`` lines, each
appended and fsynced on its own. The first delivery of every message whose
``seq`` is in ``GROUPS_FAIL`` (comma-separated) fails, so it is retried.
"""

from __future__ import annotations

import os
import random
import time

from pydantic import BaseModel

from melange import Consumer, listener
from melange.models import Message


class Step(BaseModel):
    __melange_manifest__ = "groups.step"
    __melange_group__ = "order_id"
    order_id: str
    seq: int


def record(what: str, step: Step, receives: int) -> None:
    line = f"{what} {step.order_id} {step.seq} {os.getpid()} {receives}\n".encode()
    fd = os.open(os.environ["GROUPS_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def failing() -> frozenset[int]:
    listed = os.environ.get("GROUPS_FAIL", "")
    return frozenset(int(n) for n in listed.split(",") if n)


class Steps(Consumer):
    @listener
    def on_step(self, step: Step, message: Message) -> None:
        record("start", step, message.receive_count)
        time.sleep(random.uniform(0, 0.002))
        if step.seq in failing() and message.receive_count == 1:
            record("fail", step, message.receive_count)
            raise RuntimeError(f"step {step.seq} of {step.order_id} fails once")
        record("done", step, message.receive_count)
