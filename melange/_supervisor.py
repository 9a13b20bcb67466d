"""``melange worker --processes N``: N worker processes, restarted when one dies.

The supervisor runs each worker as ``python -m melange.cli`` with the same
arguments and ``--processes 1``; SIGTERM and SIGINT are forwarded to every
worker, which finishes the messages it holds and hands back the rest. A
worker that exits with 0 (``--idle-timeout``, ``--max-messages``) is done; one
that dies otherwise is started again, with a pause that grows while workers
keep dying within seconds of starting.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ["supervise"]

_QUICK_DEATH = 5.0  # seconds: a worker dying sooner than this backs the restarts off
_MAX_PAUSE = 30.0


def supervise(arguments: Sequence[str], processes: int) -> int:
    """Run ``processes`` workers with ``arguments`` until they end; return the exit status."""
    command = [sys.executable, "-m", "melange.cli", *arguments]
    workers: dict[int, subprocess.Popen[bytes]] = {}
    started: dict[int, float] = {}
    pause = 0.0
    stopping: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        for worker in workers.values():
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)

    def start(slot: int) -> None:
        workers[slot] = subprocess.Popen(command)
        started[slot] = time.monotonic()
        _say(f"worker {slot} started (pid {workers[slot].pid})")

    for slot in range(1, processes + 1):
        start(slot)
    codes: dict[int, int] = {}
    while len(codes) < processes:
        time.sleep(0.1)
        for slot, worker in list(workers.items()):
            code = worker.poll()
            if code is None or slot in codes:
                continue
            if code == 0 or stopping:
                codes[slot] = code
                continue
            lived = time.monotonic() - started[slot]
            pause = min(max(pause * 2, 0.5), _MAX_PAUSE) if lived < _QUICK_DEATH else 0.0
            _say(f"worker {slot} (pid {worker.pid}) died with {_how(code)}; restarting")
            time.sleep(pause)
            if not stopping:
                start(slot)
    _say(f"all {processes} workers stopped")
    return 0 if all(code == 0 or stopping for code in codes.values()) else 1


def _how(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def _say(line: str) -> None:
    print(f"melange: {line}", file=sys.stderr, flush=True)
