"""``melange`` as a user runs it: from a folder of their own, with no PYTHONPATH."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from melange._logs import masked
from melange.backends.sqlite import SQLiteBackend
from melange.models import Message
from melange.publishers import MessagePublisher

SERVICE = """
from melange import Consumer, listener


class Boom(Consumer):
    @listener
    def on_event(self, event: dict) -> None:
        if event.get("fail"):
            raise RuntimeError("boom " + str(event["n"]))
"""


def melange(
    folder: Path, *arguments: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MELANGE_BACKEND_URL")}
    return subprocess.run(
        [sys.executable, "-m", "melange", *arguments],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "shop.py").write_text(textwrap.dedent(SERVICE))
    return tmp_path


def test_version_and_help_texts(folder: Path) -> None:
    version = melange(folder, "--version")
    assert version.returncode == 0
    assert version.stdout.startswith("melange ")
    worker_help = melange(folder, "worker", "--help").stdout
    for option in (
        "--queue",
        "--threads",
        "--processes",
        "--prefetch",
        "--idempotency",
        "--visibility-timeout",
        "--idle-timeout",
        "--max-messages",
        "--no-declare",
        "--middleware",
        "--backend",
        "--log-level",
        "--log-format",
    ):
        assert option in worker_help, option
    top_help = " ".join(melange(folder, "--help").stdout.split())
    assert "$MELANGE_BACKEND_URL, else sqlite:///melange.db" in top_help
    assert "(default: None)" not in worker_help


@pytest.mark.parametrize(
    ("target", "said"),
    [
        ("shop:Nope", "'shop' has no"),
        ("nowhere:Boom", "cannot import 'nowhere'"),
        ("shop", "expected module:attribute"),
    ],
)
def test_a_wrong_target_is_one_line(folder: Path, target: str, said: str) -> None:
    result = melange(folder, "worker", target, "--queue", "q", "--backend", "memory://")
    assert result.returncode == 2
    assert said in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_worker_logs_failures_dead_letters_and_a_final_count(folder: Path) -> None:
    path = folder / "broker.db"
    with SQLiteBackend(path) as backend:
        backend.declare_queue("q", dead_letter_queue_name="q-dlq", visibility_timeout=1)
        publisher = MessagePublisher(backend)
        sent = [publisher.publish({"n": n, "fail": n == 2}, queue="q") for n in range(3)]
    result = melange(
        folder,
        "worker",
        "shop:Boom",
        "--queue",
        "q",
        "--idle-timeout",
        "4",
        "--backend",
        f"sqlite:///{path}",  # after the subcommand
        "--log-format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert records[0]["message"].startswith(f"worker on sqlite:///{path}: queue q")
    failures = [r for r in records if "failed on" in r["message"]]
    assert failures
    assert all(sent[2].message_id in r["message"] for r in failures)
    assert all("shop.Boom" in r["message"] and "attempt" in r["message"] for r in failures)
    assert all("RuntimeError: boom 2" in r["traceback"] for r in failures)
    [dead] = [r for r in records if r["message"].startswith("dead-lettered")]
    assert dead["level"] == "error"
    assert sent[2].message_id in dead["message"]
    assert "2 succeeded, 2 retried, 1 dead-lettered, 0 skipped" in result.stdout


def test_passwords_are_masked() -> None:
    assert masked("amqp://shop:s3cret@rabbit:5672/orders") == "amqp://shop:***@rabbit:5672/orders"
    assert masked("redis://:s3cret@cache/0") == "redis://:***@cache/0"
    assert masked("sqlite:///melange.db") == "sqlite:///melange.db"


def write_billing(folder: Path) -> None:
    """Write ``orders.py``: a ``Billing`` consumer of ``OrderPaid``."""
    (folder / "orders.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from melange import Consumer, listener

            class OrderPaid(BaseModel):
                order_id: str

            class Billing(Consumer):
                @listener
                def on_paid(self, event: OrderPaid) -> None: ...
            """
        )
    )


def test_declare_creates_the_queue_its_dead_letters_and_subscriptions(folder: Path) -> None:
    write_billing(folder)
    url = f"sqlite:///{folder / 'broker.db'}"
    result = melange(
        folder,
        "declare",
        "orders:Billing",
        "--queue",
        "billing",
        "--topic",
        "audit",
        "--backend",
        url,
    )
    assert result.returncode == 0, result.stderr
    assert "declared billing (dead letters: billing-dlq), subscribed to: OrderPaid, audit" in (
        result.stdout
    )
    with SQLiteBackend(folder / "broker.db") as backend:
        queue = backend.get_queue("billing")
        backend.get_queue("billing-dlq")
        MessagePublisher(backend).publish({"x": 1}, topic="audit")
        assert len(backend.retrieve_messages(queue)) == 1


def test_declare_filter_events_keeps_a_shared_topics_other_events_out(folder: Path) -> None:
    write_billing(folder)
    url = f"sqlite:///{folder / 'broker.db'}"
    args = ("declare", "orders:Billing", "--queue", "billing", "--topic", "audit")
    result = melange(folder, *args, "--filter-events", "--backend", url)
    assert result.returncode == 0, result.stderr
    with SQLiteBackend(folder / "broker.db") as backend:
        queue = backend.get_queue("billing")
        audit = backend.declare_topic("audit")
        backend.publish_batch_to_topic(
            [Message(content="{}", manifest=m) for m in ("OrderPaid", "OrderShipped")], audit
        )
        assert [m.manifest for m in backend.retrieve_messages(queue)] == ["OrderPaid"]


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("sqs", marks=pytest.mark.sqs),
    ]
)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    if request.param == "rabbitmq":
        return str(request.getfixturevalue("rabbitmq_node").url)
    return str(request.getfixturevalue("moto").url)


def test_stats_prints_ready_in_flight_and_dead_lettered_counts(
    folder: Path, broker_url: str
) -> None:
    from melange.backends import from_url
    from melange.testing import unique_name

    queue = unique_name("stats")
    with from_url(broker_url) as backend:
        wrapper, dead = backend.declare_queue(queue, dead_letter_queue_name=f"{queue}-dlq")
        assert dead is not None
        backend.publish_batch_to_queue([Message(content=str(n)) for n in range(3)], wrapper)
        backend.publish_to_queue(Message(content="dead"), dead)
        result = melange(folder, "stats", queue, "--json", "--backend", broker_url)
        assert result.returncode == 0, result.stderr
        counts = json.loads(result.stdout)
        assert (counts["ready"], counts["dead_lettered"]) == (3, 1)
        assert counts["in_flight"] in (0, None)
        text = melange(folder, "stats", queue, "--backend", broker_url).stdout
        assert f"{queue}: 3 ready" in text
        assert f"1 dead-lettered ({queue}-dlq)" in text
    missing = melange(folder, "stats", unique_name("missing"), "--backend", broker_url)
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1


def _get(port: int, route: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def _publish_to_q(path: Path, count: int) -> None:
    with SQLiteBackend(path) as backend:
        backend.declare_queue("q", dead_letter_queue_name="q-dlq", visibility_timeout=1)
        publisher = MessagePublisher(backend)
        for n in range(count):
            publisher.publish({"n": n, "fail": False}, queue="q")


def _limit_files_to_1024(pid: int) -> None:
    import resource

    resource.prlimit(pid, resource.RLIMIT_NOFILE, (1024, 1024))  # a service manager's usual limit


def _metrics_worker(folder: Path, path: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "melange",
            "worker",
            "shop:Boom",
            "--queue",
            "q",
            "--backend",
            f"sqlite:///{path}",
            "--metrics-port",
            str(port),
        ],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _limit_files_to_1024(worker.pid)
    return worker


def _stopped(worker: subprocess.Popen[str]) -> str:
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out
    return out


def test_a_worker_serves_prometheus_metrics_and_liveness(folder: Path) -> None:
    from melange.testing import wait_until
    from tests.support import free_port

    path = folder / "broker.db"
    _publish_to_q(path, 3)
    port = free_port()
    worker = _metrics_worker(folder, path, port)

    def consumed_line() -> str:
        lines = _get(port, "/metrics")[1].splitlines()
        return next((x for x in lines if x.startswith("messaging_client_consumed_messages")), "")

    try:
        assert wait_until(lambda: _get(port, "/healthz") == (200, "ok\n"), timeout=60)
        assert wait_until(lambda: " 3.0" in consumed_line(), timeout=30)
        text = _get(port, "/metrics")[1]
        assert 'messaging_destination_name="q"' in text
        assert "messaging_process_duration" in text
        assert _get(port, "/nothing")[0] == 404
    finally:
        out = _stopped(worker)
    assert "handled 3 message(s) from q: 3 succeeded" in out


def _threads_and_files(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(next(x for x in status.splitlines() if x.startswith("Threads:")).split()[1])
    return threads, len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_cannot_exhaust_the_worker(folder: Path) -> None:
    """2,000 idle connections to a worker limited to 1,024 files: it consumes on, then answers."""
    import resource
    import socket

    from melange.testing import wait_until
    from tests.support import free_port

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2_200:
        pytest.fail(f"this test holds 2,000 sockets; the file limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2_200), hard))
    path = folder / "broker.db"
    _publish_to_q(path, 3)
    port = free_port()
    worker = _metrics_worker(folder, path, port)
    idle: list[socket.socket] = []
    try:
        assert wait_until(lambda: _get(port, "/healthz") == (200, "ok\n"), timeout=60)
        before = _threads_and_files(worker.pid)
        most = before
        for _ in range(2_000):
            sock = socket.socket()
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            idle.append(sock)
            if len(idle) % 100 == 0:
                now = _threads_and_files(worker.pid)
                most = (max(most[0], now[0]), max(most[1], now[1]))
        assert worker.poll() is None
        _publish_to_q(path, 3)  # handled while the connections are held
        with SQLiteBackend(path) as backend:
            queue = backend.get_queue("q")
            assert wait_until(lambda: backend.queue_stats(queue).ready == 0, timeout=30)
        print(f"threads, files: before {before}, most during 2,000 idle connections {most}")
        # max_threads, and the keeper thread that runs while the worker holds messages
        assert most[0] <= before[0] + 8 + 1
        assert most[1] <= before[1] + 8 + 4
    finally:
        for sock in idle:
            sock.close()
        try:
            assert wait_until(lambda: _get(port, "/healthz") == (200, "ok\n"), timeout=30)
        finally:
            out = _stopped(worker)
    assert "handled 6 message(s) from q: 6 succeeded" in out
