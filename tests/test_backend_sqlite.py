from __future__ import annotations

import gc
import logging
import multiprocessing
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from melange import Consumer, Message, MessageDispatcher, MessagePublisher, listener, signals
from melange.backends import default_backend_url, from_url
from melange.backends.decoding import bytes_of
from melange.backends.sqlite import SQLiteBackend
from melange.backends.sqlite._queries import UNREAD_METADATA
from melange.exceptions import (
    BackendError,
    ConfigurationError,
    IdempotencyError,
    PublishError,
    QueueNotFoundError,
    StorageError,
    TopicNotFoundError,
)
from melange.models import DECODE_ERROR, QueueWrapper, TopicWrapper
from melange.testing import AsyncBackendContract, BackendContract, receive

pytestmark = pytest.mark.sqlite


class TestSQLiteBackend(BackendContract, AsyncBackendContract):
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


# -- rows melange cannot read ----------------------------------------------------------------


def corrupt(path: Path, sql: str, *parameters: object) -> None:
    """Change the file behind the backend's back, as another program would."""
    db = sqlite3.connect(path)
    try:
        with db:
            assert db.execute(sql, parameters).rowcount >= 1
    finally:
        db.close()


def with_neighbours(backend: SQLiteBackend) -> tuple[QueueWrapper, list[Message]]:
    """Publish a good message, the one a test corrupts (``bad``), and another good one."""
    queue, _ = backend.declare_queue("q", visibility_timeout=60)
    sent = [
        Message(
            content=f'{{"n": {i}}}',
            message_id=name,
            metadata={"k": name},
            serializer_id=3,
            manifest="M",
        )
        for i, name in enumerate(["before", "bad", "after"])
    ]
    backend.publish_batch_to_queue(sent, queue)
    return queue, sent


BAD_ROWS = [
    # (SET clause, part of the reason, the bad message's content bytes)
    ("content = CAST(x'fffe41' AS TEXT)", "content is not UTF-8", b"\xff\xfeA"),
    ("content = x'fffe41'", "content is not UTF-8", b"\xff\xfeA"),  # a BLOB
    ("message_id = CAST(x'ff' AS TEXT)", "message_id is not UTF-8", b'{"n": 1}'),
    ("message_id = ''", "message_id is empty", b'{"n": 1}'),
    ("manifest = CAST(x'c328' AS TEXT)", "manifest is not UTF-8", b'{"n": 1}'),
    ("metadata = CAST(x'7b226b223a22ff227d' AS TEXT)", "metadata is not UTF-8", b'{"n": 1}'),
    ("metadata = '{not json'", "metadata is not JSON", b'{"n": 1}'),
    ('metadata = \'{"k": "1"}, {"k": "2"}\'', "metadata is not JSON", b'{"n": 1}'),
    ('metadata = \'["k", "bad"]\'', "metadata is not a JSON object", b'{"n": 1}'),
    ("metadata = '\"k\"'", "metadata is not a JSON object", b'{"n": 1}'),
    ("serializer_id = 'three'", "serializer_id is not an integer", b'{"n": 1}'),
    ("serializer_id = 1.5", "serializer_id is not an integer", b'{"n": 1}'),
    ("serializer_id = x'ff'", "serializer_id is not an integer", b'{"n": 1}'),
]


@pytest.mark.parametrize(("change", "reason", "content"), BAD_ROWS)
def test_a_bad_row_comes_back_undecodable_and_its_neighbours_intact(
    tmp_path: Path, change: str, reason: str, content: bytes
) -> None:
    path = tmp_path / "b.db"
    with SQLiteBackend(path) as backend:
        queue, sent = with_neighbours(backend)
        corrupt(path, f"UPDATE melange_bodies SET {change} WHERE message_id = 'bad'")
        got = backend.retrieve_messages(queue, max_messages=10)
        assert len(got) == 3
        before, bad, after = got
        assert before == sent[0].received(1, None)
        assert after == sent[2].received(1, None)
        assert reason in bad.metadata[DECODE_ERROR]
        assert bytes_of(bad.content) == content
        assert bad.receive_count == 1
        assert bad.serializer_id is None
        # It can be acknowledged like any other: the queue is not stuck.
        backend.acknowledge_batch(got)
        assert backend.queue_depth(queue) == 0


def test_a_bad_row_alone_in_its_receive_and_in_a_full_batch(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with SQLiteBackend(path) as backend:
        queue, _ = with_neighbours(backend)
        corrupt(path, "UPDATE melange_bodies SET content = CAST(x'80' AS TEXT)")
        for _ in range(3):
            [message] = backend.retrieve_messages(queue, max_messages=1)
            assert bytes_of(message.content) == b"\x80"
            assert "content is not UTF-8" in message.metadata[DECODE_ERROR]
            backend.acknowledge(message)
        assert backend.queue_depth(queue) == 0


def test_an_undecodable_message_can_be_released_and_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with SQLiteBackend(path) as backend:
        queue, _ = with_neighbours(backend)
        corrupt(path, "UPDATE melange_bodies SET metadata = 'nope' WHERE message_id = 'bad'")
        bad = next(m for m in backend.retrieve_messages(queue) if DECODE_ERROR in m.metadata)
        backend.release(bad)
        [again] = backend.retrieve_messages(queue)
        assert (again.message_id, again.receive_count) == ("bad", 2)
        assert again.metadata[UNREAD_METADATA] == "nope"  # the original text is kept


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ('{"a":"}', '{"}'),  # a string that would run across the two rows
        ('{"a":"1"', '"b":"2"}'),  # an object that would run across them
    ],
)
def test_rows_that_only_parse_together_are_read_one_by_one(
    tmp_path: Path, first: str, second: str
) -> None:
    # With the last row holding two objects, the four rows parse together as
    # four objects: a parse for the whole batch would give the good row (m2)
    # the headers of its neighbour.
    path = tmp_path / "b.db"
    with SQLiteBackend(path) as backend:
        queue, _ = backend.declare_queue("q", visibility_timeout=60)
        backend.publish_batch_to_queue(
            [
                Message(content=str(i), message_id=f"m{i}", metadata={"k": f"v{i}"})
                for i in range(4)
            ],
            queue,
        )
        for message_id, metadata in (
            ("m0", first),
            ("m1", second),
            ("m3", '{"x":"1"},{"y":"2"}'),
        ):
            corrupt(
                path,
                "UPDATE melange_bodies SET metadata = ? WHERE message_id = ?",
                metadata,
                message_id,
            )
        got = {m.message_id: m for m in backend.retrieve_messages(queue)}
        assert got["m2"].metadata == {"k": "v2"}
        assert all(DECODE_ERROR in got[name].metadata for name in ("m0", "m1", "m3"))


def test_header_values_that_are_not_strings_reach_handlers_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with SQLiteBackend(path) as backend:
        queue, sent = with_neighbours(backend)
        corrupt(
            path,
            "UPDATE melange_bodies SET metadata = ? WHERE message_id = 'bad'",
            '{"n": 1, "f": 1.5, "z": null, "b": true, "o": {"k": [1, "x"]}, "s": "é"}',
        )
        before, odd, after = backend.retrieve_messages(queue)
        assert dict(odd.metadata) == {
            "n": "1",
            "f": "1.5",
            "z": "null",
            "b": "true",
            "o": '{"k":[1,"x"]}',
            "s": "é",
        }
        assert (odd.content, odd.serializer_id, odd.manifest) == ('{"n": 1}', 3, "M")
        assert before == sent[0].received(1, None)
        assert after == sent[2].received(1, None)


@pytest.mark.parametrize(
    ("change", "content"),
    [
        ("content = CAST(x'fffe41' AS TEXT)", b"\xff\xfeA"),
        ("metadata = CAST(x'7b226b223a22ff227d' AS TEXT)", b'{"n": 1}'),
        ("message_id = CAST(x'ff' AS TEXT), manifest = CAST(x'c328' AS TEXT)", b'{"n": 1}'),
    ],
)
def test_a_dead_letter_copy_keeps_the_original_bytes(
    tmp_path: Path, change: str, content: bytes
) -> None:
    path = tmp_path / "b.db"
    with SQLiteBackend(path) as backend:
        queue, _ = with_neighbours(backend)
        dead, _ = backend.declare_queue("dead", visibility_timeout=60)
        topic = backend.declare_topic("graveyard")
        also, _ = backend.declare_queue("also", topic)
        corrupt(path, f"UPDATE melange_bodies SET {change} WHERE message_id = 'bad'")
        bad = next(m for m in backend.retrieve_messages(queue) if DECODE_ERROR in m.metadata)
        backend.publish_to_queue(bad, dead)
        backend.publish_to_topic(bad, topic)
        copies = [*backend.retrieve_messages(dead), *backend.retrieve_messages(also)]
        assert len(copies) == 2
        for copy in copies:
            assert bytes_of(copy.content) == content
            assert copy.content == bad.content
            assert (copy.message_id, copy.manifest) == (bad.message_id, bad.manifest)
            # The header it was sent with is not trusted: it is kept as foreign.
            assert copy.metadata["x-foreign-decode-error"] == bad.metadata[DECODE_ERROR]
            ours = {DECODE_ERROR, "x-foreign-decode-error"}
            assert {k: v for k, v in copy.metadata.items() if k not in ours} == {
                k: v for k, v in bad.metadata.items() if k not in ours
            }


def test_text_kept_as_bytes_is_stored_beside_normal_text(tmp_path: Path) -> None:
    escaped = b"caf\xe9".decode("utf-8", "surrogateescape")
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q")
        backend.publish_batch_to_queue(
            [Message(content="plain"), Message(content=escaped), Message(content="zoë")], queue
        )
        got = backend.retrieve_messages(queue)
        assert [m.content for m in got] == ["plain", escaped, "zoë"]
        assert [DECODE_ERROR in m.metadata for m in got] == [False, True, False]
        [(kinds,)] = backend._file.read(
            "SELECT group_concat(typeof(content), ',') FROM melange_bodies ORDER BY id"
        )
        assert kinds == "text,blob,text"


def test_a_surrogate_that_stands_for_no_byte_is_refused(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q")
        with pytest.raises(PublishError, match="cannot be stored"):
            backend.publish_batch_to_queue(
                [Message(content="ok"), Message(content="\ud800")], queue
            )
        assert backend.queue_depth(queue) == 0


# -- extending visibility ---------------------------------------------------------------------


def test_an_extended_message_is_not_delivered_again(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q", visibility_timeout=0.3)
        backend.publish_batch_to_queue([Message(content="a"), Message(content="b")], queue)
        held, other = backend.retrieve_messages(queue)
        backend.extend_visibility(held, 30)
        time.sleep(0.6)
        [again] = backend.retrieve_messages(queue)  # only the one not extended
        assert again.message_id == other.message_id
        # The receipt followed the extension: acknowledging still works, in a batch too.
        backend.acknowledge_batch([held, again])
        assert backend.queue_depth(queue) == 0


def test_an_extension_can_be_extended_and_then_released(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q", visibility_timeout=30)
        backend.publish_to_queue(Message(content="a"), queue)
        [held] = backend.retrieve_messages(queue)
        backend.extend_visibility(held, 60)
        backend.extend_visibility(held, 90)
        assert backend.retrieve_messages(queue) == []
        backend.release(held)
        [again] = backend.retrieve_messages(queue)
        assert (again.message_id, again.receive_count) == (held.message_id, 2)


def test_extending_after_acknowledge_or_release_changes_nothing(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q", visibility_timeout=30)
        backend.publish_batch_to_queue([Message(content="acked"), Message(content="freed")], queue)
        acked, freed = backend.retrieve_messages(queue)
        backend.acknowledge(acked)
        backend.release(freed)
        backend.extend_visibility(acked, 60)
        backend.extend_visibility(freed, 60)  # released: must stay visible
        [again] = backend.retrieve_messages(queue)
        assert again.message_id == freed.message_id
        assert backend.queue_depth(queue) == 1


def test_a_late_extension_leaves_the_next_receive_alone(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q", visibility_timeout=0.2)
        backend.publish_to_queue(Message(content="x"), queue)
        [first] = receive(backend, queue, 1)
        [second] = receive(backend, queue, 1, timeout=10)
        backend.extend_visibility(first, 60)  # too late: handed out again
        backend.acknowledge(second)
        assert backend.queue_depth(queue) == 0


def test_an_extension_needs_the_claim_not_only_the_due_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stopped clock and no visibility timeout: a second receive leaves the
    # delivery where the first one did, with only the claim telling them apart.
    monkeypatch.setattr("melange.backends.sqlite._backend._now", lambda: 1_000_000.0)
    with SQLiteBackend(tmp_path / "b.db") as backend:
        queue, _ = backend.declare_queue("q", visibility_timeout=0)
        backend.publish_to_queue(Message(content="x"), queue)
        [first] = backend.retrieve_messages(queue)
        [second] = backend.retrieve_messages(queue)
        assert second.receive_count == 2
        backend.extend_visibility(first, 60)
        backend.acknowledge(second)
        assert backend.queue_depth(queue) == 0


def test_extend_visibility_from_another_thread(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with SQLiteBackend(path) as backend, SQLiteBackend(path) as rival:
        queue, _ = backend.declare_queue("q", visibility_timeout=0.3)
        backend.publish_to_queue(Message(content="slow"), queue)
        [held] = backend.retrieve_messages(queue)
        stop = threading.Event()
        errors: list[BaseException] = []

        def heartbeat() -> None:
            try:
                while not stop.wait(0.05):
                    backend.extend_visibility(held, 0.3)
            except BaseException as e:  # reported by the assertion below
                errors.append(e)

        thread = threading.Thread(target=heartbeat)
        thread.start()
        try:
            deadline = time.monotonic() + 1.5  # five visibility timeouts
            while time.monotonic() < deadline:
                assert rival.retrieve_messages(queue, wait_seconds=0.1) == []
        finally:
            stop.set()
            thread.join()
        assert errors == []
        backend.acknowledge(held)
        assert backend.queue_depth(queue) == 0


def test_a_message_from_another_backend_cannot_be_extended(tmp_path: Path) -> None:
    with (
        SQLiteBackend(tmp_path / "b.db") as backend,
        pytest.raises(ValueError, match="not received from an SQLiteBackend"),
    ):
        backend.extend_visibility(Message(content="x"), 10)


# -- publishing to nobody -----------------------------------------------------------------------


def test_a_topic_without_queues_reports_each_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[Any, Message, str]] = []

    def on_unrouted(sender: Any, message: Message, topic: str) -> None:
        seen.append((sender, message, topic))

    with (
        SQLiteBackend(tmp_path / "b.db") as backend,
        signals.message_unrouted.connected_to(on_unrouted),
        caplog.at_level(logging.WARNING, logger="melange.backends"),
    ):
        topic = backend.declare_topic("lonely")
        one, two, three = (Message(content=str(i)) for i in range(3))
        backend.publish_to_topic(one, topic)
        backend.publish_batch_to_topic([two, three], topic)
        assert seen == [
            (backend, one, "lonely"),
            (backend, two, "lonely"),
            (backend, three, "lonely"),
        ]
        assert "lonely" in caplog.text
        queue, _ = backend.declare_queue("q", topic)
        backend.publish_to_topic(Message(content="heard"), topic)
        backend.publish_batch_to_topic([Message(content="heard too")], topic)
        assert len(seen) == 3
        assert backend.queue_depth(queue) == 2


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
        db.execute("UPDATE melange_schema_versions SET version = 99 WHERE component = 'broker'")
    db.close()
    with pytest.raises(StorageError, match="newer melange"):
        SQLiteBackend(path)


def test_each_component_versions_its_own_tables(tmp_path: Path) -> None:
    from melange.idempotency import SQLiteIdempotencyStore

    path = tmp_path / "app.db"
    SQLiteBackend(path).close_connection()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT * FROM melange_schema_versions").fetchall() == [("broker", 1)]
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert not any("idempotency" in table for table in tables)  # the store's, not the broker's
    SQLiteIdempotencyStore(path).close()
    with sqlite3.connect(path) as db:
        versions = dict(db.execute("SELECT * FROM melange_schema_versions").fetchall())
        db.execute(
            "UPDATE melange_schema_versions SET version = 99 WHERE component = 'idempotency'"
        )
    db.close()
    assert versions == {"broker": 1, "idempotency": 1}
    SQLiteBackend(path).close_connection()  # a newer store's tables do not stop the broker
    with pytest.raises(IdempotencyError, match="newer melange"):
        SQLiteIdempotencyStore(path)


def test_a_file_of_melange_0_1_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with SQLiteBackend(path) as backend:
        queue, _ = backend.declare_queue("q")
        backend.publish_to_queue(Message(content="from before"), queue)
    with sqlite3.connect(path) as db:  # the layout 0.1.0 wrote: one version, in melange_schema
        db.execute("DROP TABLE melange_schema_versions")
        db.execute("CREATE TABLE melange_schema (version INTEGER NOT NULL)")
        db.execute("INSERT INTO melange_schema VALUES (1)")
    db.close()
    with SQLiteBackend(path) as backend:
        [message] = receive(backend, backend.get_queue("q"), 1)
        assert message.content == "from before"
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT * FROM melange_schema_versions").fetchall() == [("broker", 1)]
    db.close()


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


# -- message groups: FIFO order, as on an SQS FIFO queue -------------------------------------


def grouped(group: str | None, text: str) -> Message:
    return Message(content=text, metadata={"message_group_id": group} if group else {})


def test_a_group_is_handed_out_in_order_and_held_back_while_some_of_it_is_out(
    tmp_path: Path,
) -> None:
    with SQLiteBackend(tmp_path / "broker.db") as backend:
        queue, _ = backend.declare_queue("q", visibility_timeout=30)
        backend.publish_batch_to_queue(
            [grouped("a", f"a{n}") for n in range(4)]
            + [grouped("b", "b0"), grouped(None, "free"), grouped("b", "b1")],
            queue,
        )
        first = backend.retrieve_messages(queue, max_messages=2)
        assert [m.content for m in first] == ["a0", "a1"]
        # a is out: its later messages wait, the rest of the queue does not.
        second = backend.retrieve_messages(queue, max_messages=10)
        assert [m.content for m in second] == ["b0", "free", "b1"]
        backend.acknowledge(first[1])  # a1 done, a0 still out: a stays held
        assert backend.retrieve_messages(queue, max_messages=10) == []
        backend.release(first[0], delay=0.3)  # a0 to be retried: nothing of a before it
        assert backend.retrieve_messages(queue, max_messages=10) == []
        again = backend.retrieve_messages(queue, max_messages=10, wait_seconds=2)
        assert [(m.content, m.receive_count) for m in again] == [("a0", 2), ("a2", 1), ("a3", 1)]


def test_a_held_group_at_the_head_does_not_stall_the_queue(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "broker.db") as backend:
        queue, _ = backend.declare_queue("q")
        backend.publish_batch_to_queue([grouped("big", str(n)) for n in range(300)], queue)
        backend.publish_to_queue(grouped(None, "behind"), queue)
        out = backend.retrieve_messages(queue, max_messages=1)
        assert [m.content for m in out] == ["0"]
        assert [m.content for m in backend.retrieve_messages(queue, max_messages=1)] == ["behind"]


def test_a_spent_delivery_of_a_group_is_dead_lettered_and_the_next_one_comes(
    tmp_path: Path,
) -> None:
    with SQLiteBackend(tmp_path / "broker.db") as backend:
        queue, dead = backend.declare_queue(
            "q", dead_letter_queue_name="q-dlq", max_receive_count=1, visibility_timeout=30
        )
        assert dead is not None
        backend.publish_batch_to_queue([grouped("a", "a0"), grouped("a", "a1")], queue)
        [a0] = backend.retrieve_messages(queue, max_messages=1)
        backend.release(a0)
        assert [m.content for m in backend.retrieve_messages(queue)] == ["a1"]
        assert [m.content for m in backend.retrieve_messages(dead)] == ["a0"]


def test_a_group_held_by_a_dead_receiver_is_free_again_when_its_claim_expires(
    tmp_path: Path,
) -> None:
    path = tmp_path / "broker.db"
    with SQLiteBackend(path) as first:
        queue, _ = first.declare_queue("q", visibility_timeout=30)
        first.publish_batch_to_queue([grouped("a", f"a{n}") for n in range(3)], queue)
        taken = first.retrieve_messages(queue, max_messages=1, visibility_timeout=2)
        assert [m.content for m in taken] == ["a0"]  # then this receiver dies, unsettled
    with SQLiteBackend(path) as second:
        assert second.retrieve_messages(queue, max_messages=10) == []  # a0 still out
        again = second.retrieve_messages(queue, max_messages=10, wait_seconds=5)
        assert [(m.content, m.receive_count) for m in again] == [("a0", 2), ("a1", 1), ("a2", 1)]
