from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from melange.backends import from_url
from melange.backends.sqlite import SQLiteBackend
from melange.exceptions import ConfigurationError, QueueNotFoundError, StorageError
from melange.models import Message, QueueWrapper
from tests.conformance import BackendContract, receive

pytestmark = pytest.mark.sqlite


class TestSQLiteBackend(BackendContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[SQLiteBackend]:
        with SQLiteBackend(tmp_path / "broker.db") as backend:
            yield backend


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        SQLiteBackend(tmp_path / "nowhere" / "broker.db")
    assert not (tmp_path / "nowhere").exists()


def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    original = b"these are my notes, not a database\n" * 200
    path.write_bytes(original)
    with pytest.raises(StorageError, match="not a database"):
        SQLiteBackend(path)
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_unknown_queue_is_a_typed_error(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        with pytest.raises(QueueNotFoundError):
            backend.get_queue("ghost")
        with pytest.raises(QueueNotFoundError):
            backend.publish_to_queue(Message(content="x"), QueueWrapper("ghost"))


def test_durability_settings_are_in_force(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        db = backend._file.connection()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with SQLiteBackend(tmp_path / "b.db", synchronous="NORMAL") as backend:
        assert backend._file.connection().execute("PRAGMA synchronous").fetchone()[0] == 1


def test_bad_synchronous_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        SQLiteBackend(tmp_path / "b.db", synchronous="SOMETIMES")


def test_from_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absolute = from_url(f"sqlite:///{tmp_path}/abs.db?synchronous=NORMAL&poll_interval=0.01")
    assert isinstance(absolute, SQLiteBackend)
    assert absolute.path == f"{tmp_path}/abs.db"
    assert absolute.poll_interval == 0.01
    absolute.close_connection()
    monkeypatch.chdir(tmp_path)
    relative = from_url("sqlite:///rel.db")
    assert isinstance(relative, SQLiteBackend)
    relative.close_connection()
    assert (tmp_path / "rel.db").exists()
    with pytest.raises(ConfigurationError):
        from_url("sqlite:///x.db?colour=blue")
    with pytest.raises(ConfigurationError):
        from_url("sqlite://")


def test_the_default_url_is_the_embedded_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from melange.backends import default_backend_url

    monkeypatch.delenv("MELANGE_BACKEND_URL", raising=False)
    assert default_backend_url() == "sqlite:///melange.db"
    monkeypatch.setenv("MELANGE_BACKEND_URL", "memory://")
    assert default_backend_url() == "memory://"


def test_two_backends_on_one_file_share_messages(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    with SQLiteBackend(path) as producer, SQLiteBackend(path) as consumer:
        topic = producer.declare_topic("orders")
        consumer.declare_queue("billing", consumer.declare_topic("orders"))
        producer.publish_to_topic(Message(content="hello"), topic)
        [message] = receive(consumer, consumer.get_queue("billing"), 1)
        assert message.content == "hello"
        assert consumer.integrity_check() == "ok"


def test_messages_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    with SQLiteBackend(path) as backend:
        queue, _ = backend.declare_queue("q")
        backend.publish_batch_to_queue([Message(content=str(i)) for i in range(5)], queue)
    with SQLiteBackend(path) as backend:
        got = receive(backend, backend.get_queue("q"), 5)
        assert sorted(m.content for m in got) == ["0", "1", "2", "3", "4"]


def test_a_stale_acknowledgement_does_not_delete_a_redelivered_message(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q", visibility_timeout=0.2)
        backend.publish_to_queue(Message(content="x"), queue)
        [first] = receive(backend, queue, 1)
        [second] = receive(backend, queue, 1, timeout=5)
        backend.acknowledge(first)  # too late: the message was handed out again
        assert backend.queue_depth(queue) == 1
        backend.acknowledge(second)
        assert backend.queue_depth(queue) == 0


def test_backend_out_of_scope_is_collected(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "b.db")
    backend.declare_queue("q")
    ref = weakref.ref(backend)
    del backend
    gc.collect()
    assert ref() is None
