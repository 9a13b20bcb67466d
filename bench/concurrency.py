"""``melange worker --threads N``: 8 messages whose handlers sleep 1 s, on the SQLite broker.

Wall time from the worker's start to its exit (``--idle-timeout 1``, which
is subtracted), for ``--threads 1`` and ``--threads 4``, beside the floor: the
same eight 1 s sleeps on a ``ThreadPoolExecutor`` of 4 threads.

    .venv/bin/python bench/concurrency.py [--messages 8] [--seconds 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from melange import MessageDispatcher, MessagePublisher
from melange.backends.sqlite import SQLiteBackend
from tests.concurrency_workers import Job, Sleeper

ROOT = Path(__file__).resolve().parent.parent
IDLE = 1.0


def worker_seconds(folder: Path, threads: int, messages: int, seconds: float) -> float:
    broker = folder / f"broker-{threads}.db"
    with SQLiteBackend(broker) as backend:
        MessageDispatcher(backend, [Sleeper()]).declare("jobs")
        MessagePublisher(backend).publish_batch([Job(n) for n in range(messages)], queue="jobs")
    env = {
        **os.environ,
        "CONCURRENCY_OUT": str(folder / f"out-{threads}.txt"),
        "CONCURRENCY_SECONDS": str(seconds),
    }
    started = time.perf_counter()
    subprocess.run(
        [
            *(sys.executable, "-m", "melange.cli", "--backend", f"sqlite:///{broker}"),
            *("worker", "tests.concurrency_workers:Sleeper", "--queue", "jobs", "--no-declare"),
            *("--threads", str(threads), "--idle-timeout", str(IDLE)),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started - IDLE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        one = worker_seconds(folder, 1, args.messages, args.seconds)
        four = worker_seconds(folder, 4, args.messages, args.seconds)
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: time.sleep(args.seconds), range(args.messages)))
    floor = time.perf_counter() - started
    print(
        f"{args.messages} messages, handlers sleeping {args.seconds:g} s (process start included)"
    )
    print(f"melange worker --threads 1 : {one:6.2f} s")
    print(f"melange worker --threads 4 : {four:6.2f} s   ({one / four:.1f}x faster)")
    print(f"ThreadPoolExecutor(4) floor: {floor:6.2f} s")


if __name__ == "__main__":
    main()
