from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from melange import Consumer, Message, MessageDispatcher, MessagePublisher, RetryPolicy, listener
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.cli import load_consumers, main
from melange.dead_letters import redrive
from melange.exceptions import BatchPublishError, ConfigurationError
from melange.models import QueueWrapper
from melange.testing import receive
from tests.events import OrderPaid

ROOT = Path(__file__).resolve().parent.parent


class Refuses(Consumer):
    @listener
    def on_paid(self, event: OrderPaid) -> None:
        raise RuntimeError(f"no {event.order_id}")


CONSUMERS = [Refuses()]


def test_load_consumers_accepts_classes_instances_lists_and_factories(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "b.db")
    assert isinstance(load_consumers("tests.test_cli:Refuses", backend)[0], Refuses)
    assert load_consumers("tests.test_cli:CONSUMERS", backend) == CONSUMERS
    [billing] = load_consumers("examples.quickstart:billing_service", backend)
    assert billing.publisher.backend is backend  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError):
        load_consumers("tests.test_cli", backend)
    with pytest.raises(ConfigurationError):
        load_consumers("tests.test_cli:ROOT", backend)
    backend.close_connection()


def test_dlq_peek_and_redrive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with SQLiteBackend(tmp_path / "b.db") as backend:
        dispatcher = MessageDispatcher(backend, [Refuses()], retry=RetryPolicy.none())
        dispatcher.declare("paid")
        sent = MessagePublisher(backend).publish(OrderPaid(order_id="o-1"))
        dispatcher.consume_loop("paid", idle_timeout=0)
    assert main(["--backend", url, "dlq", "peek", "paid"]) == 0
    peeked = capsys.readouterr().out
    assert sent.message_id in peeked
    assert "no o-1" in peeked
    assert main(["--backend", url, "dlq", "redrive", "paid"]) == 0
    assert "moved 1 message(s)" in capsys.readouterr().out
    with SQLiteBackend(tmp_path / "b.db") as backend:
        [back] = receive(backend, backend.get_queue("paid"), 1)
        assert back.message_id == sent.message_id
        assert back.content == sent.content
        assert "error_type" not in back.metadata
        assert backend.queue_depth(backend.get_queue("paid-dlq")) == 0


def test_worker_command_consumes_a_queue(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with SQLiteBackend(tmp_path / "b.db") as backend:
        MessageDispatcher(backend, [Refuses()]).declare("paid")
        MessagePublisher(backend).publish(OrderPaid(order_id="o-2"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "melange",
            "--backend",
            url,
            "worker",
            "tests.test_cli:Refuses",
            "--queue",
            "paid",
            "--max-messages",
            "1",
            "--idle-timeout",
            "10",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "handled 1 message(s) from paid" in result.stdout
    assert "no o-2" in result.stderr


def test_a_broker_error_is_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--backend", f"sqlite:///{tmp_path}/missing/b.db", "dlq", "peek", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_dlq_peek_says_when_the_broker_moved_a_message_on_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue(
            "paid", dead_letter_queue_name="paid-dlq", visibility_timeout=0.1, max_receive_count=1
        )
        sent = MessagePublisher(backend).publish(OrderPaid(order_id="o-1"), queue="paid")
        assert len(backend.retrieve_messages(queue)) == 1  # received, never acknowledged
        time.sleep(0.2)
        assert backend.retrieve_messages(queue) == []  # moved to paid-dlq by the broker
    assert main(["--backend", url, "dlq", "peek", "paid"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    peeked = json.loads(line)
    assert peeked["message_id"] == sent.message_id
    assert "moved by the broker on its own" in peeked["reason"]


def test_worker_options_build_the_store_and_the_middleware(tmp_path: Path) -> None:
    from melange.cli import build_parser, load_middleware
    from melange.idempotency import SQLiteIdempotencyStore, store_from_url

    args = build_parser().parse_args(
        ["worker", "m:C", "--queue", "q", "--idempotency", "memory://", "--middleware", "a:B"]
    )
    assert (args.idempotency, args.middleware, args.visibility_timeout) == (
        "memory://",
        ["a:B"],
        None,
    )
    store = store_from_url(f"sqlite:///{tmp_path}/claims.db?lease_seconds=5")
    assert isinstance(store, SQLiteIdempotencyStore)
    assert store.lease_seconds == 5
    store.close()
    with pytest.raises(ConfigurationError, match="unknown idempotency store"):
        store_from_url("mongodb://x")
    with pytest.raises(ConfigurationError, match="unknown options"):
        store_from_url("memory://?colour=red")
    assert type(load_middleware("melange.testing._contract_workers:Crash")).__name__ == "Crash"
    with pytest.raises(ConfigurationError, match="not a Middleware"):
        load_middleware("tests.test_cli:ROOT")


class RefusesOne(InMemoryMessagingBackend):
    """Takes every message of a batch but the one whose content is ``refused``."""

    default_visibility_timeout = 0.5

    def publish_batch_to_queue(self, messages: Sequence[Message], queue: QueueWrapper) -> None:
        taken = [m for m in messages if m.content != "refused"]
        super().publish_batch_to_queue(taken, queue)
        if len(taken) < len(messages):
            raise BatchPublishError([(m, "refused") for m in messages if m not in taken])


def test_a_partly_failed_redrive_moves_what_it_sent_and_keeps_the_rest() -> None:
    backend = RefusesOne()
    queue, dead_letters = backend.declare_queue("paid", dead_letter_queue_name="paid-dlq")
    assert dead_letters is not None
    for content in ("a", "refused", "b"):
        backend.publish_to_queue(
            Message(content=content, metadata={"error_type": "x"}), dead_letters
        )
    with pytest.raises(BatchPublishError):
        redrive(backend, "paid")
    moved = receive(backend, queue, 2)
    assert sorted(m.content for m in moved) == ["a", "b"]
    assert all("error_type" not in m.metadata for m in moved)
    [kept] = receive(backend, dead_letters, 1, timeout=5)
    assert kept.content == "refused"
    assert kept.metadata["error_type"] == "x"
