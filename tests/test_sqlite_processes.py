"""Several processes on one SQLite file: nothing lost, nothing doubled, crashes survived."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from melange.backends.sqlite import SQLiteBackend
from tests.sqlite_workers import QUEUE, declare

pytestmark = [pytest.mark.sqlite, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


Spawn = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def worker() -> Iterator[Spawn]:
    """Start ``python -m tests.sqlite_workers ...``; kill, by PID, any still running at the end."""
    started: list[subprocess.Popen[str]] = []

    def spawn(*args: str, stdout: int | None = subprocess.DEVNULL) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.sqlite_workers", *args],
            cwd=ROOT,
            stdout=stdout,
            text=True,
        )
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def records(paths: list[Path]) -> list[tuple[int, int, int]]:
    rows = []
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                number, receive_count, pid = map(int, line.split())
                rows.append((number, receive_count, pid))
    return rows


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_four_publishers_four_consumers_lose_and_double_nothing(
    tmp_path: Path, worker: Spawn
) -> None:
    db = str(tmp_path / "broker.db")
    with SQLiteBackend(db) as backend:
        declare(backend, visibility_timeout=60)
    total, publishers = 20_000, 4
    per_publisher = total // publishers
    outs = [tmp_path / f"consumer-{n}.txt" for n in range(4)]
    consumers = [
        worker("consume", "--db", db, "--out", str(out), "--idle-timeout", "8") for out in outs
    ]
    producers = [
        worker(
            "publish",
            "--db",
            db,
            "--start",
            str(n * per_publisher),
            "--count",
            str(per_publisher),
            "--batch",
            "50" if n % 2 else "1",  # half publish one by one, half in batches
        )
        for n in range(publishers)
    ]
    for process in producers + consumers:
        assert process.wait(timeout=240) == 0
    counts = Counter(number for number, _, _ in records(outs))
    lost = total - len(counts)
    duplicated = sum(c - 1 for c in counts.values())
    assert (lost, duplicated) == (0, 0)
    assert set(counts) == set(range(total))
    assert len({pid for _, _, pid in records(outs)}) > 1  # the work was shared
    with SQLiteBackend(db) as backend:
        assert backend.queue_depth(backend.get_queue(QUEUE)) == 0
        assert backend.integrity_check() == "ok"


def test_a_consumer_killed_mid_handler_hands_the_message_to_another(
    tmp_path: Path, worker: Spawn
) -> None:
    db = str(tmp_path / "broker.db")
    with SQLiteBackend(db) as backend:
        declare(backend, visibility_timeout=2)
    publisher = worker("publish", "--db", db, "--start", "7", "--count", "1")
    assert publisher.wait(timeout=60) == 0
    first_out, second_out = tmp_path / "first.txt", tmp_path / "second.txt"
    first = worker("consume", "--db", db, "--out", str(first_out), "--hang")
    wait_for(lambda: first_out.exists() and bool(first_out.read_text().strip()))
    # The second consumer polls while the first still holds the message.
    second = worker("consume", "--db", db, "--out", str(second_out), "--idle-timeout", "6")
    os.kill(first.pid, signal.SIGKILL)  # in the middle of its handler
    assert first.wait(timeout=30) == -signal.SIGKILL
    assert second.wait(timeout=60) == 0
    [(number, count, pid)] = records([second_out])
    assert (number, count) == (7, 2)
    assert pid == second.pid != first.pid
    assert records([first_out]) == [(7, 1, first.pid)]


def test_every_publish_that_returned_survives_a_publisher_killed_mid_burst(
    tmp_path: Path, worker: Spawn
) -> None:
    db = str(tmp_path / "broker.db")
    with SQLiteBackend(db) as backend:
        declare(backend, visibility_timeout=60)
    publisher = worker("publish", "--db", db, "--count", "1000000", stdout=subprocess.PIPE)
    assert publisher.stdout is not None
    returned = []
    for line in publisher.stdout:
        returned.append(int(line))
        if len(returned) >= 500:
            break
    os.kill(publisher.pid, signal.SIGKILL)
    publisher.wait(timeout=30)
    returned.extend(int(line) for line in publisher.stdout.read().split())
    publisher.stdout.close()
    out = tmp_path / "consumed.txt"
    consumer = worker("consume", "--db", db, "--out", str(out), "--idle-timeout", "2")
    assert consumer.wait(timeout=120) == 0
    consumed = Counter(number for number, _, _ in records([out]))
    assert len(returned) >= 500
    assert set(returned) <= set(consumed)  # every publish that returned
    assert set(consumed) <= set(returned) | {max(returned) + 1}  # plus at most the one in flight
    assert max(consumed.values()) == 1
    with SQLiteBackend(db) as backend:
        assert backend.integrity_check() == "ok"
