"""A worker SIGKILLed mid-handler: the next one runs the message within seconds, once.

Real processes (``melange worker``) on a real broker and idempotency store:
SQLite with a SQLite store, RabbitMQ with Redis. The claim's lease (10 s)
is renewed by the keeper while the handler runs, so a long handler keeps it
however long it takes, and a killed worker's claim ends within the lease,
not with the visibility timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.backends import from_url
from melange.backends.memory import InMemoryMessagingBackend
from melange.idempotency.base import Claim
from melange.idempotency.memory import InMemoryIdempotencyStore
from melange.testing import receive, wait_until
from tests.servers.rabbitmq import RabbitMQNode

SERVICE = """
import os
import time
from pathlib import Path

from pydantic import BaseModel

from melange import Consumer, listener


class Job(BaseModel):
    __melange_manifest__ = "recovery.job"
    number: int


class Worker(Consumer):
    @listener
    def on_job(self, event: Job) -> None:
        out = Path(os.environ["RECOVERY_OUT"])
        first = not out.exists()
        with out.open("a") as f:
            f.write(f"start {os.getpid()} {time.time()}\\n")
        time.sleep(600 if first else 0.1)  # the first run hangs until it is killed
        with out.open("a") as f:
            f.write(f"done {os.getpid()} {time.time()}\\n")
"""

LEASE = 10.0


class Job(BaseModel):
    __melange_manifest__ = "recovery.job"
    number: int


def _events(out: Path) -> list[tuple[str, int, float]]:
    if not out.exists():
        return []
    rows = []
    for line in out.read_text().splitlines():
        what, pid, at = line.split()
        rows.append((what, int(pid), float(at)))
    return rows


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[object]:
    (tmp_path / "recovery_service.py").write_text(textwrap.dedent(SERVICE))
    started: list[subprocess.Popen[str]] = []

    def start(backend_url: str, store_url: str, visibility: float) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["RECOVERY_OUT"] = str(tmp_path / "events.txt")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "melange",
                "worker",
                "recovery_service:Worker",
                "--queue",
                "jobs",
                "--backend",
                backend_url,
                "--idempotency",
                store_url,
                "--visibility-timeout",
                str(visibility),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()


def _killed_mid_handler_then_recovered(
    tmp_path: Path, start_worker: object, backend_url: str, store_url: str, visibility: float
) -> float:
    """Hang a job's worker, SIGKILL it with a second worker running; return seconds to the rerun."""
    start = start_worker  # type: ignore[assignment]
    out = tmp_path / "events.txt"
    with from_url(backend_url) as backend:
        MessageDispatcher(backend, consumers=[]).declare("jobs", visibility_timeout=visibility)
        MessagePublisher(backend).publish(Job(number=1), queue="jobs")
    first = start(backend_url, store_url, visibility)  # type: ignore[operator]
    assert wait_until(lambda: len(_events(out)) == 1, timeout=60)
    second = start(backend_url, store_url, visibility)  # type: ignore[operator]
    time.sleep(LEASE)  # a long handler: its claim lives on the keeper's renewals
    assert [what for what, _, _ in _events(out)] == ["start"]  # the claim held meanwhile
    os.kill(first.pid, signal.SIGKILL)
    killed_at = time.time()
    assert first.wait(timeout=30) == -signal.SIGKILL
    assert wait_until(lambda: len(_events(out)) == 3, timeout=visibility + LEASE + 60)
    [(_, first_pid, _), (what, second_pid, rerun_at), (done, _, _)] = _events(out)
    assert (what, done, first_pid, second_pid) == ("start", "done", first.pid, second.pid)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0
    with from_url(backend_url) as backend:
        assert backend.queue_stats(backend.get_queue("jobs")).ready == 0
        assert receive(backend, backend.get_queue("jobs-dlq"), 1, timeout=1) == []
    return rerun_at - killed_at


def test_sqlite_with_a_sqlite_store_recovers_within_visibility_and_lease(
    tmp_path: Path, start_worker: object
) -> None:
    visibility = 20.0
    took = _killed_mid_handler_then_recovered(
        tmp_path,
        start_worker,
        f"sqlite:///{tmp_path}/broker.db",
        f"sqlite:///{tmp_path}/claims.db",
        visibility,
    )
    print(f"SQLite + SQLite store: rerun {took:.1f} s after SIGKILL (visibility {visibility} s)")
    assert took < visibility + LEASE + 5


def test_rabbitmq_with_redis_recovers_within_the_lease(
    tmp_path: Path, start_worker: object, rabbitmq_node: RabbitMQNode, redis_url: str
) -> None:
    took = _killed_mid_handler_then_recovered(
        tmp_path, start_worker, rabbitmq_node.url, redis_url, 60.0
    )
    print(f"RabbitMQ + Redis: rerun {took:.1f} s after SIGKILL (visibility 60 s, lease {LEASE} s)")
    assert took < LEASE + 5


class SlowConsumer(Consumer):
    def __init__(self) -> None:
        super().__init__(consumer_id="recovery.slow")
        self.started = threading.Event()

    @listener
    def on_job(self, event: Job) -> None:
        self.started.set()
        time.sleep(1.5)


def test_a_claim_shorter_than_its_handler_is_renewed_until_it_ends() -> None:
    backend = InMemoryMessagingBackend()
    store = InMemoryIdempotencyStore(lease_seconds=0.3)
    consumer = SlowConsumer()
    dispatcher = MessageDispatcher(backend, consumers=[consumer], idempotency=store)
    dispatcher.declare("slow", visibility_timeout=30)
    message = MessagePublisher(backend).publish(Job(number=1), queue="slow")
    loop = threading.Thread(
        target=dispatcher.consume_loop, args=("slow",), kwargs={"max_messages": 1}
    )
    loop.start()
    assert consumer.started.wait(10)
    seen = []
    while loop.is_alive():  # five times the lease: only renewals keep the claim
        seen.append(store.claim("recovery.slow", message.message_id))
        time.sleep(0.1)
    loop.join()
    assert seen
    assert set(seen) == {Claim.IN_PROGRESS}
    assert store.claim("recovery.slow", message.message_id) is Claim.DONE
