from __future__ import annotations

import gc
import multiprocessing
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from melange import Consumer, Message, MessageDispatcher, MessagePublisher, listener
from melange.backends import default_backend_url, from_url
from melange.backends.sqlite import SQLiteBackend
from melange.exceptions import (
    BackendError,
    ConfigurationError,
    QueueNotFoundError,
    StorageError,
    TopicNotFoundError,
)
from melange.models import QueueWrapper, TopicWrapper
from tests.conformance import BackendContract, receive

pytestmark = pytest.mark.sqlite


class TestSQLiteBackend(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[SQLiteBackend]:
        with SQLiteBackend(tmp_path / "broker.db") as backend:
            yield backend


# -- bad input ------------------------------------------------------------------------


def test_a_missing_folder_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        SQLiteBackend(tmp_path / "nowhere" / "broker.db")
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    original = b"these are my notes, not a database\n" * 200
    path.write_bytes(original)
    with pytest.raises(StorageError, match="not a database"):
        SQLiteBackend(path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # no -wal, no -shm


def test_another_applications_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "theirs.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA application_id = 1234")
        db.execute("CREATE TABLE t (x)")
    db.close()
    original = path.read_bytes()
    with pytest.raises(StorageError, match="another application"):
        SQLiteBackend(path)
    assert path.read_bytes() == original


def test_a_folder_is_not_a_database_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        SQLiteBackend(tmp_path)


def test_unknown_queues_and_topics_are_typed_errors(tmp_path: Path) -> None:
    ghost = QueueWrapper("ghost")
    with SQLiteBackend(tmp_path / "b.db") as backend:
        with pytest.raises(QueueNotFoundError, match="ghost"):
            backend.get_queue("ghost")
        with pytest.raises(QueueNotFoundError):
            backend.publish_to_queue(Message(content="x"), ghost)
        with pytest.raises(QueueNotFoundError):
            backend.publish_batch_to_queue([Message(content="x")], ghost)
        with pytest.raises(QueueNotFoundError):
            backend.publish_delayed_to_queue(Message(content="x"), ghost, 1.0)
        with pytest.raises(QueueNotFoundError):
            backend.retrieve_messages(ghost)
        with pytest.raises(TopicNotFoundError):
            backend.publish_to_topic(Message(content="x"), TopicWrapper("nobody"))


def test_bad_options_are_configuration_errors(tmp_path: Path) -> None:
    for options in ({"synchronous": "SOMETIMES"}, {"poll_interval": 0}, {"busy_timeout": -1}):
        with pytest.raises(ConfigurationError):
            SQLiteBackend(tmp_path / "b.db", **options)
    with pytest.raises(ConfigurationError, match="memory://"):
        SQLiteBackend(":memory:")


def test_receiving_nothing_is_refused(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q")
        with pytest.raises(ValueError, match="max_messages"):
            backend.retrieve_messages(queue, max_messages=0)


def test_a_message_from_another_backend_cannot_be_acknowledged(tmp_path: Path) -> None:
    with (
        SQLiteBackend(tmp_path / "b.db") as backend,
        pytest.raises(ValueError, match="not received from an SQLiteBackend"),
    ):
        backend.acknowledge(Message(content="x"))


def test_using_a_closed_backend_is_an_error(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "b.db")
    backend.close_connection()
    backend.close_connection()
    with pytest.raises(BackendError, match="closed"):
        backend.declare_queue("q")


# -- durability and files ------------------------------------------------------------------


def test_durability_settings_are_in_force(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db", busy_timeout=7) as backend:
        db = backend._file.connection()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 7000
    with SQLiteBackend(tmp_path / "b.db", synchronous="normal") as backend:
        assert backend._file.connection().execute("PRAGMA synchronous").fetchone()[0] == 1
        assert backend.synchronous == "NORMAL"


def test_every_thread_gets_its_connection_with_the_same_settings(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db", synchronous="EXTRA") as backend:
        seen: list[Any] = []

        def probe() -> None:
            db = backend._file.connection()
            seen.append((id(db), db.execute("PRAGMA synchronous").fetchone()[0]))

        thread = threading.Thread(target=probe)
        thread.start()
        thread.join()
        probe()
        assert len({connection for connection, _ in seen}) == 2
        assert [level for _, level in seen] == [3, 3]  # EXTRA


def test_messages_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    with SQLiteBackend(path) as backend:
        queue, _ = backend.declare_queue("q")
        backend.publish_batch_to_queue([Message(content=str(i)) for i in range(5)], queue)
    with SQLiteBackend(path) as backend:
        got = receive(backend, backend.get_queue("q"), 5)
        assert sorted(m.content for m in got) == ["0", "1", "2", "3", "4"]
        assert backend.integrity_check() == "ok"


def test_a_file_from_a_newer_melange_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    SQLiteBackend(path).close_connection()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE melange_schema SET version = 99")
    db.close()
    with pytest.raises(StorageError, match="newer melange"):
        SQLiteBackend(path)


# -- URLs ---------------------------------------------------------------------------------


def test_from_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = from_url(f"sqlite:///{tmp_path}/abs.db?synchronous=NORMAL&poll_interval=0.01")
    assert isinstance(absolute, SQLiteBackend)
    assert absolute.path == f"{tmp_path}/abs.db"
    assert (absolute.synchronous, absolute.poll_interval) == ("NORMAL", 0.01)
    absolute.close_connection()
    assert str(tmp_path).startswith("/")  # so the URL above had four slashes
    monkeypatch.chdir(tmp_path)
    relative = from_url("sqlite:///rel.db?busy_timeout=2.5")
    assert isinstance(relative, SQLiteBackend)
    assert relative._file.busy_timeout == 2.5
    relative.close_connection()
    spaced = SQLiteBackend.from_url("sqlite:///with%20space.db")
    spaced.close_connection()
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["abs.db", "rel.db", "with space.db"]


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///",
        "sqlite://host/x.db",
        "sqlite:///x.db?colour=blue",
        "sqlite:///x.db?busy_timeout=soon",
        "sqlite:///x.db?synchronous=SOMETIMES",
    ],
)
def test_bad_urls_are_configuration_errors(url: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError):
        from_url(url)
    assert list(tmp_path.iterdir()) == []


def test_the_default_url_is_the_embedded_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MELANGE_BACKEND_URL", raising=False)
    assert default_backend_url() == "sqlite:///melange.db"
    monkeypatch.setenv("MELANGE_BACKEND_URL", "memory://")
    assert default_backend_url() == "memory://"


# -- semantics beyond the contract ----------------------------------------------------------


def test_two_backends_on_one_file_share_messages_and_claims(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with SQLiteBackend(path) as producer, SQLiteBackend(path) as consumer:
        topic = producer.declare_topic("orders")
        consumer.declare_queue("billing", consumer.declare_topic("orders"))
        producer.publish_to_topic(Message(content="hello"), topic)
        [message] = receive(consumer, consumer.get_queue("billing"), 1)
        assert message.content == "hello"
        assert producer.retrieve_messages(producer.get_queue("billing")) == []  # claimed
        consumer.acknowledge(message)
        assert producer.queue_depth(producer.get_queue("billing")) == 0


def test_a_waiting_receive_sees_a_publish_from_another_backend(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with SQLiteBackend(path) as consumer, SQLiteBackend(path) as producer:
        queue, _ = consumer.declare_queue("q")
        timer = threading.Timer(0.3, producer.publish_to_queue, (Message(content="late"), queue))
        timer.start()
        try:
            got = consumer.retrieve_messages(queue, wait_seconds=30)
        finally:
            timer.join()
        assert [m.content for m in got] == ["late"]


def test_an_idle_receive_takes_no_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with SQLiteBackend(path, busy_timeout=0) as backend:
        queue, _ = backend.declare_queue("q")
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            assert backend.retrieve_messages(queue, wait_seconds=0.2) == []
            with pytest.raises(BackendError, match="locked"):
                backend.publish_to_queue(Message(content="x"), queue)
        finally:
            other.execute("ROLLBACK")
            other.close()


def test_a_topic_publish_is_one_transaction(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        topic = backend.declare_topic("t")
        first, _ = backend.declare_queue("a", topic)
        second, _ = backend.declare_queue("b", topic)
        db = backend._file.connection()
        db.execute(
            "CREATE TRIGGER refuse_b BEFORE INSERT ON melange_deliveries WHEN new.queue = 'b'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        with pytest.raises(BackendError, match="refused"):
            backend.publish_to_topic(Message(content="x"), topic)
        assert backend.queue_depth(first) == backend.queue_depth(second) == 0
        db.execute("DROP TRIGGER refuse_b")
        backend.publish_to_topic(Message(content="x"), topic)
        assert backend.queue_depth(first) == backend.queue_depth(second) == 1


def test_a_stale_acknowledgement_does_not_delete_a_redelivered_message(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q", visibility_timeout=0.2)
        backend.publish_to_queue(Message(content="x"), queue)
        [first] = receive(backend, queue, 1)
        [second] = receive(backend, queue, 1, timeout=10)
        assert (first.receive_count, second.receive_count) == (1, 2)
        backend.acknowledge(first)  # too late: the message was handed out again
        backend.release(first)  # too late as well: changes nothing
        assert backend.retrieve_messages(queue) == []
        assert backend.queue_depth(queue) == 1
        backend.acknowledge(second)
        assert backend.queue_depth(queue) == 0


def test_one_acknowledgement_batch_spans_receives_and_large_batches(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q", visibility_timeout=60)
        backend.publish_batch_to_queue([Message(content=str(i)) for i in range(1205)], queue)
        first = backend.retrieve_messages(queue, max_messages=1200)
        second = backend.retrieve_messages(queue, max_messages=3)
        assert (len(first), len(second)) == (1200, 3)
        assert len({m.message_id for m in first + second}) == 1203
        backend.acknowledge_batch(second[:1] + first + second[1:])
        assert backend.queue_depth(queue) == 2
        [(bodies,)] = backend._file.read("SELECT count(*) FROM melange_bodies")
        assert bodies == 2  # the bodies went with their deliveries


def test_a_dead_letter_move_keeps_every_field(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, dead = backend.declare_queue(
            "q", dead_letter_queue_name="q-dlq", visibility_timeout=0, max_receive_count=1
        )
        assert dead is not None
        sent = Message(content="é", metadata={"a": "1"}, serializer_id=7, manifest="M")
        backend.publish_to_queue(sent, queue)
        [once] = backend.retrieve_messages(queue)
        assert backend.retrieve_messages(queue) == []  # moved on this read
        [moved] = backend.retrieve_messages(dead)
        assert moved == sent.received(1, None)
        assert (once.receive_count, moved.receive_count) == (1, 1)


def test_a_receive_that_dead_letters_some_still_fills_the_batch(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, dead = backend.declare_queue(
            "q", dead_letter_queue_name="q-dlq", visibility_timeout=0, max_receive_count=1
        )
        assert dead is not None
        backend.publish_batch_to_queue([Message(content="a"), Message(content="b")], queue)
        assert len(backend.retrieve_messages(queue, max_messages=2)) == 2  # visible again at once
        backend.publish_batch_to_queue([Message(content="c"), Message(content="d")], queue)
        got = backend.retrieve_messages(queue, max_messages=2)
        assert sorted(m.content for m in got) == ["c", "d"]
        assert [m.receive_count for m in got] == [1, 1]
        assert sorted(m.content for m in backend.retrieve_messages(dead)) == ["a", "b"]


def test_threads_never_receive_the_same_message(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q", visibility_timeout=60)
        backend.publish_batch_to_queue([Message(content=str(i)) for i in range(400)], queue)
        got: list[str] = []
        lock = threading.Lock()

        def drain() -> None:
            while batch := backend.retrieve_messages(queue, max_messages=7):
                backend.acknowledge_batch(batch)
                with lock:
                    got.extend(m.content for m in batch)

        threads = [threading.Thread(target=drain) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(got, key=int) == [str(i) for i in range(400)]


def _publish_from_child(backend: SQLiteBackend) -> None:
    backend.publish_to_queue(Message(content="from the child"), backend.get_queue("q"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork with threads, Python 3.12+
def test_a_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q")
        child = multiprocessing.get_context("fork").Process(
            target=_publish_from_child, args=(backend,)
        )
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        [message] = receive(backend, queue, 1)
        assert message.content == "from the child"
        assert backend.integrity_check() == "ok"


def open_files(folder: Path) -> list[str]:
    """Return this process's open files inside ``folder`` (Linux)."""
    links = (str(Path(fd).resolve()) for fd in Path("/proc/self/fd").iterdir())
    return sorted(link for link in links if link.startswith(str(folder)))


def test_backend_out_of_scope_is_collected_and_its_files_closed(tmp_path: Path) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to list open files")
    backend = SQLiteBackend(tmp_path / "b.db")
    queue, _ = backend.declare_queue("q")
    worker = threading.Thread(target=backend.publish_to_queue, args=(Message(content="x"), queue))
    worker.start()
    worker.join()
    assert open_files(tmp_path)  # the database, its WAL and shared memory
    ref = weakref.ref(backend)
    del backend
    gc.collect()
    assert ref() is None
    assert open_files(tmp_path) == []


def test_close_connection_closes_every_threads_connection(tmp_path: Path) -> None:
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to list open files")
    backend = SQLiteBackend(tmp_path / "b.db")
    queue, _ = backend.declare_queue("q")
    worker = threading.Thread(target=backend.publish_to_queue, args=(Message(content="x"), queue))
    worker.start()
    worker.join()
    backend.close_connection()
    assert open_files(tmp_path) == []


# -- end to end ----------------------------------------------------------------------------


class OrderCreated(BaseModel):
    order_id: str
    total: float


class Billing(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[OrderCreated, int]] = []

    @listener
    def on_created(self, event: OrderCreated, message: Message) -> None:
        self.seen.append((event, message.receive_count))


def test_publisher_and_dispatcher_move_a_typed_event(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with SQLiteBackend(path) as consuming, SQLiteBackend(path) as publishing:
        billing = Billing()
        dispatcher = MessageDispatcher(consuming, consumers=[billing])
        dispatcher.declare("billing", visibility_timeout=30, max_receive_count=5)
        sent = MessagePublisher(publishing).publish(OrderCreated(order_id="o-1", total=9.5))
        assert dispatcher.consume_loop("billing", idle_timeout=0.5) == 1
        [(event, count)] = billing.seen
        assert isinstance(event, OrderCreated)
        assert (event, count) == (OrderCreated(order_id="o-1", total=9.5), 1)
        assert sent.header("correlation_id") is not None
        assert consuming.queue_depth(consuming.get_queue("billing")) == 0
