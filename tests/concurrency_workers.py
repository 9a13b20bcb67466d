"""What ``melange worker`` runs in the concurrency tests.

``CONCURRENCY_OUT`` is a file of ``started|done <number> <pid> <thread>``
lines (fsynced); a handler sleeps ``CONCURRENCY_SECONDS``, or, when
``CONCURRENCY_RELEASE`` names a file, waits until that file exists.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass

from melange import Consumer, listener


@dataclass(frozen=True)
class Job:
    number: int


def record(what: str, number: int) -> None:
    line = f"{what} {number} {os.getpid()} {threading.get_ident()}\n"
    with open(os.environ["CONCURRENCY_OUT"], "a") as out:
        out.write(line)
        out.flush()
        os.fsync(out.fileno())


class Sleeper(Consumer):
    @listener
    def on_job(self, job: Job) -> None:
        record("started", job.number)
        release = os.environ.get("CONCURRENCY_RELEASE")
        if release:
            while not os.path.exists(release):
                time.sleep(0.05)
        else:
            time.sleep(float(os.environ.get("CONCURRENCY_SECONDS", "0")))
        record("done", job.number)


class AsyncSleeper(Consumer):
    """``Sleeper`` with an ``async def`` listener: ``melange worker`` runs it on asyncio."""

    @listener
    async def on_job(self, job: Job) -> None:
        record("started", job.number)
        release = os.environ.get("CONCURRENCY_RELEASE")
        if release:
            while not os.path.exists(release):
                await asyncio.sleep(0.05)
        else:
            await asyncio.sleep(float(os.environ.get("CONCURRENCY_SECONDS", "0")))
        record("done", job.number)
