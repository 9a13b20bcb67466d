"""Handler threads and supervised worker processes: each message once, a dead worker replaced."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.exceptions import InvalidArgumentError, QueueNotFoundError
from melange.testing import wait_until
from tests.concurrency_workers import Job

ROOT = Path(__file__).resolve().parent.parent


class Overlapping(Consumer):
    """Counts how many handlers run at once."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.running = 0
        self.most = 0
        self.handled: Counter[int] = Counter()
        self.lock = threading.Lock()

    @listener
    def on_job(self, job: Job) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
            self.handled[job.number] += 1


def test_run_with_threads_handles_each_message_once_and_in_parallel() -> None:
    backend = InMemoryMessagingBackend()
    consumer = Overlapping(0.3)
    dispatcher = MessageDispatcher(backend, [consumer], batch_size=1)
    dispatcher.declare("jobs")
    MessagePublisher(backend).publish_batch([Job(n) for n in range(8)], queue="jobs")
    handled = dispatcher.run("jobs", threads=4, idle_timeout=0.5)
    assert handled == 8
    assert consumer.handled == Counter(range(8))
    assert consumer.most == 4


def test_run_with_threads_stops_at_max_messages_and_on_the_stop_event() -> None:
    backend = InMemoryMessagingBackend()
    consumer = Overlapping(0.0)
    dispatcher = MessageDispatcher(backend, [consumer], batch_size=1)
    dispatcher.declare("jobs")
    MessagePublisher(backend).publish_batch([Job(n) for n in range(20)], queue="jobs")
    handled = dispatcher.run("jobs", threads=3, max_messages=5)
    assert 5 <= handled <= 7  # the other threads finish the message they hold
    stop = threading.Event()
    stop.set()
    assert dispatcher.run("jobs", threads=3, stop_event=stop) == 0


def test_run_refuses_no_threads_and_a_missing_queue() -> None:
    dispatcher = MessageDispatcher(InMemoryMessagingBackend(), [Overlapping(0)])
    with pytest.raises(InvalidArgumentError):
        dispatcher.run("jobs", threads=0)
    with pytest.raises(QueueNotFoundError):
        dispatcher.run("missing", threads=2)


def lines(path: Path, what: str) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        kind, number, pid, _ = line.split()
        if kind == what:
            found.append((int(number), int(pid)))
    return found


def publish_jobs(path: Path, count: int) -> None:
    with SQLiteBackend(path) as backend:
        MessageDispatcher(backend, [Overlapping(0)]).declare("jobs", visibility_timeout=1)
        MessagePublisher(backend).publish_batch([Job(n) for n in range(count)], queue="jobs")


def test_worker_threads_handle_each_message_once(tmp_path: Path) -> None:
    broker = tmp_path / "broker.db"
    publish_jobs(broker, 8)
    out = tmp_path / "out.txt"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "melange.cli", "--backend", f"sqlite:///{broker}"),
            *("worker", "tests.concurrency_workers:Sleeper", "--queue", "jobs"),
            *("--no-declare", "--threads", "4", "--idle-timeout", "1"),
        ],
        cwd=ROOT,
        env={**os.environ, "CONCURRENCY_OUT": str(out), "CONCURRENCY_SECONDS": "0.5"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "handled 8 message(s) from jobs" in result.stdout
    done = lines(out, "done")
    assert sorted(number for number, _ in done) == list(range(8))
    threads = {line.split()[3] for line in out.read_text().splitlines()}
    assert len(threads) == 4


def test_a_killed_worker_process_is_replaced_and_its_message_redelivered(tmp_path: Path) -> None:
    broker = tmp_path / "broker.db"
    publish_jobs(broker, 2)
    out, release, log = tmp_path / "out.txt", tmp_path / "release", tmp_path / "supervisor.log"
    with open(log, "wb") as errors:
        supervisor = subprocess.Popen(
            [
                *(sys.executable, "-m", "melange.cli", "--backend", f"sqlite:///{broker}"),
                *("worker", "tests.concurrency_workers:Sleeper", "--queue", "jobs"),
                *("--no-declare", "--processes", "2", "--prefetch", "1"),
                *("--visibility-timeout", "1"),
            ],
            cwd=ROOT,
            env={**os.environ, "CONCURRENCY_OUT": str(out), "CONCURRENCY_RELEASE": str(release)},
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    try:
        assert wait_until(lambda: len(lines(out, "started")) == 2, timeout=60)
        [(_, doomed), (_, other)] = lines(out, "started")
        assert doomed != other  # one message in each process
        os.kill(doomed, signal.SIGKILL)
        assert wait_until(lambda: "died with signal SIGKILL; restarting" in log.read_text(), 30)
        # Its message comes back after the visibility timeout, to the new worker.
        assert wait_until(lambda: len(lines(out, "started")) == 3, timeout=60)
        pids = [pid for _, pid in lines(out, "started")]
        assert pids[2] not in (doomed, other)
        release.touch()
        assert wait_until(lambda: len(lines(out, "done")) == 2, timeout=60)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    assert sorted(number for number, _ in lines(out, "done")) == [0, 1]
    started = re.findall(r"worker \d started \(pid (\d+)\)", log.read_text())
    assert len(started) == 3


def test_a_worker_of_async_listeners_runs_them_together_on_asyncio(tmp_path: Path) -> None:
    broker = tmp_path / "broker.db"
    publish_jobs(broker, 8)
    out = tmp_path / "out.txt"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "melange.cli", "--backend", f"sqlite:///{broker}"),
            *("worker", "tests.concurrency_workers:AsyncSleeper", "--queue", "jobs"),
            # Not told the queue's visibility timeout (1 s): it reads it, and renews in time.
            *("--no-declare", "--concurrency", "8", "--idle-timeout", "1"),
        ],
        cwd=ROOT,
        env={**os.environ, "CONCURRENCY_OUT": str(out), "CONCURRENCY_SECONDS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "asyncio, 8 in flight" in result.stderr  # detected: no --async needed
    assert "handled 8 message(s) from jobs: 8 succeeded" in result.stdout
    started, done = lines(out, "started"), lines(out, "done")
    assert sorted(number for number, _ in done) == list(range(8))
    events = [line.split()[0] for line in out.read_text().splitlines()]
    assert events[:8] == ["started"] * 8  # all eight in flight before the first ended
    assert len({line.split()[3] for line in out.read_text().splitlines()}) == 1  # the loop's
    assert len(started) == 8


def test_sigterm_to_an_async_worker_finishes_what_runs_and_leaves_the_rest(tmp_path: Path) -> None:
    broker = tmp_path / "broker.db"
    publish_jobs(broker, 6)
    out, release = tmp_path / "out.txt", tmp_path / "release"
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "melange.cli", "--backend", f"sqlite:///{broker}"),
            *("worker", "tests.concurrency_workers:AsyncSleeper", "--queue", "jobs"),
            *("--no-declare", "--async", "--concurrency", "2", "--prefetch", "2"),
            *("--visibility-timeout", "1"),
        ],
        cwd=ROOT,
        env={**os.environ, "CONCURRENCY_OUT": str(out), "CONCURRENCY_RELEASE": str(release)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: len(lines(out, "started")) == 2, timeout=60)
        worker.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert worker.poll() is None  # waiting for the two in flight
        release.touch()
        stdout, stderr = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, stderr
    assert "handled 2 message(s) from jobs: 2 succeeded" in stdout
    assert len(lines(out, "done")) == 2
    with SQLiteBackend(broker) as backend:
        left = backend.retrieve_messages(backend.get_queue("jobs"), max_messages=10)
    assert len(left) == 4


def test_a_killed_async_worker_loses_nothing_its_messages_come_back(tmp_path: Path) -> None:
    broker = tmp_path / "broker.db"
    publish_jobs(broker, 3)
    out, release = tmp_path / "out.txt", tmp_path / "release"
    command = [
        *(sys.executable, "-m", "melange.cli", "--backend", f"sqlite:///{broker}"),
        *("worker", "tests.concurrency_workers:AsyncSleeper", "--queue", "jobs"),
        *("--no-declare", "--concurrency", "2", "--prefetch", "2", "--visibility-timeout", "1"),
    ]
    env = {**os.environ, "CONCURRENCY_OUT": str(out), "CONCURRENCY_RELEASE": str(release)}
    doomed = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    heir = None
    try:
        assert wait_until(lambda: len(lines(out, "started")) == 2, timeout=60)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=30)
        release.touch()
        heir = subprocess.Popen(
            [*command, "--idle-timeout", "3"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        stdout, _ = heir.communicate(timeout=120)
    finally:
        for process in (doomed, heir):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert heir.returncode == 0
    assert "handled 3 message(s) from jobs: 3 succeeded" in stdout
    done = lines(out, "done")
    assert sorted(number for number, _ in done) == [0, 1, 2]  # each once, none lost
    assert {pid for _, pid in done} == {heir.pid}
