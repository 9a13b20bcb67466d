"""The dispatcher on a real backend: one set of end-to-end scenarios for every broker.

A subclass provides three fixtures:

- ``backend``: a fresh backend (closed afterwards);
- ``backend_url``: a URL other processes can open it by (``None``: the broker
  lives in this process, and the process scenarios do not apply);
- ``inject_undecodable``: ``inject(queue_name) -> original`` publishes, with
  the broker's raw client, one message melange cannot read and returns its
  original content as the backend will show it.

``loop`` says which consume loop the scenarios drive: ``"sync"``
(``MessageDispatcher``) or ``"asyncio"`` (``AsyncMessageDispatcher`` on
``async_backend(backend)``: the sync backend bridged, unless overridden
with a native async one). Two more have defaults: ``worker_store_url`` (the idempotency store worker
processes share: a SQLite file) and ``restartable_store`` (a
``RestartableStore`` whose server the outage scenario stops and starts;
without one that scenario is skipped). Class attributes tune timings for
brokers that only take whole seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from melange import (
    Consumer,
    Message,
    MessageDispatcher,
    MessagePublisher,
    RetryPolicy,
    listener,
)
from melange._own_headers import is_own_header
from melange.aio import AsyncMessageDispatcher, AsyncMessagingBackend, BridgedBackend
from melange.aio._worker import consume_until_stopped
from melange.backends.decoding import bytes_of
from melange.backends.interfaces import MessagingBackend
from melange.dead_letters import dead_letter_queue_name
from melange.idempotency.base import IdempotencyStore
from melange.models import DECODE_ERROR
from melange.testing._contract_workers import ContractEvent
from melange.testing._waiting import drain, unique_name, wait_until

__all__ = ["DispatcherContract", "Inject", "RestartableStore"]

#: ``inject(queue_name) -> original``: see the module's docstring.
Inject = Callable[[str], str]
Spawn = Callable[..., "subprocess.Popen[bytes]"]
_WORKERS = "melange.testing._contract_workers"


class RestartableStore(Protocol):
    """An idempotency store's server that a test can stop and start again."""

    def store(self, namespace: str) -> IdempotencyStore:
        """Return a new store client whose keys no other test shares."""

    def stop(self) -> None:
        """Stop the server (its clients' calls fail until ``start``)."""

    def start(self) -> None:
        """Start the server again, on the same address."""


class ConsumeLoop(Protocol):
    """What the scenarios drive: a dispatcher's ``declare`` and ``consume_loop``, blocking."""

    def declare(self, queue: str, **options: Any) -> object: ...

    def consume_loop(
        self,
        queue: str,
        *,
        max_messages: int | None = None,
        idle_timeout: float | None = None,
        stop_event: threading.Event | None = None,
    ) -> int: ...


class OnAsyncio:
    """An ``AsyncMessageDispatcher`` driven from blocking test code, one event loop per call."""

    def __init__(self, dispatcher: AsyncMessageDispatcher) -> None:
        self.dispatcher = dispatcher

    def declare(self, queue: str, **options: Any) -> object:
        return asyncio.run(self.dispatcher.declare(queue, **options))

    def consume_loop(
        self,
        queue: str,
        *,
        max_messages: int | None = None,
        idle_timeout: float | None = None,
        stop_event: threading.Event | None = None,
    ) -> int:
        return consume_until_stopped(
            self.dispatcher,
            queue,
            stop_event or threading.Event(),
            max_messages=max_messages,
            idle_timeout=idle_timeout,
            close_backend=False,
        )


def queue_name(prefix: str = "contract") -> str:
    return unique_name(prefix)


def dlq(queue: str) -> str:
    return dead_letter_queue_name(queue)


class Effects(Consumer):
    """Counts side effects per event number, in this process."""

    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__(consumer_id="contract-side-effects")
        self.seconds = seconds
        self.counts: Counter[int] = Counter()
        self.lock = threading.Lock()

    @listener
    def on_number(self, event: ContractEvent, message: Message) -> None:
        time.sleep(self.seconds)
        with self.lock:
            self.counts[event.number] += 1


def at_kill_point(marks: Path, moment: str) -> bool:
    """Return whether a worker hanging at ``moment`` is where the test kills it.

    ``before``: a handler started. ``after``: one settled, and so did every
    handler started with it: a concurrent loop's other handlers, killed
    between their side effect and its idempotency record, would run again,
    a window no claim closes (the transactional inbox does, issue 19).
    """
    if not marks.exists():
        return False
    seen = [line.split()[:2] for line in marks.read_text().splitlines() if line.strip()]
    started = {number for point, number in seen if point == "started"}
    settled = {number for point, number in seen if point == "settled"}
    if moment == "before":
        return bool(started)
    return bool(settled) and started <= settled


def effects_in(path: Path) -> Counter[int]:
    if not path.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in path.read_text().splitlines())


class DispatcherContract:
    """Scenarios every backend passes under the dispatcher."""

    #: The shortest visibility timeout the broker takes (seconds).
    visibility_timeout: float = 1.0
    #: The consume loop the scenarios run: ``"sync"`` or ``"asyncio"``.
    loop: str = "sync"

    def async_backend(self, backend: MessagingBackend) -> AsyncMessagingBackend:
        """Return the async backend the asyncio loop consumes (the sync one, bridged)."""
        return BridgedBackend(backend)

    # -- in this process --------------------------------------------------------------

    def undeclared_dispatcher(
        self, backend: MessagingBackend, consumers: list[Consumer], **options: Any
    ) -> ConsumeLoop:
        """Return a dispatcher of ``loop``'s kind for ``consumers``; it declares nothing."""
        if self.loop == "asyncio":
            aio = AsyncMessageDispatcher(self.async_backend(backend), consumers, **options)
            return OnAsyncio(aio)
        return MessageDispatcher(backend, consumers=consumers, **options)

    def dispatcher(
        self, backend: MessagingBackend, queue: str, consumer: Consumer, **options: Any
    ) -> ConsumeLoop:
        visibility = options.pop("visibility_timeout", self.visibility_timeout)
        dispatcher = self.undeclared_dispatcher(backend, [consumer], **options)
        dispatcher.declare(queue, visibility_timeout=visibility)
        return dispatcher

    def test_a_handler_longer_than_twice_the_visibility_timeout_runs_once(
        self, backend: MessagingBackend
    ) -> None:
        queue = queue_name()
        effects = Effects(seconds=4 * self.visibility_timeout)
        workers = [
            self.dispatcher(backend, queue, effects, visibility_timeout=2 * self.visibility_timeout)
            for _ in range(2)
        ]
        self.assert_handled_once(backend, queue, workers, effects)

    def test_a_dispatcher_that_did_not_declare_the_queue_keeps_to_its_visibility_timeout(
        self, backend: MessagingBackend
    ) -> None:
        queue = queue_name()
        backend.declare_queue(
            queue, dead_letter_queue_name=dlq(queue), visibility_timeout=self.visibility_timeout
        )
        effects = Effects(seconds=3 * self.visibility_timeout)
        # Told nothing, they would assume the backend's default (30 s) and renew too late.
        workers = [self.undeclared_dispatcher(backend, [effects]) for _ in range(2)]
        self.assert_handled_once(backend, queue, workers, effects)

    def assert_handled_once(
        self,
        backend: MessagingBackend,
        queue: str,
        workers: list[ConsumeLoop],
        effects: Effects,
    ) -> None:
        """Publish one event, let ``workers`` consume it together, and check it ran once."""
        MessagePublisher(backend).publish(ContractEvent(number=1), queue=queue)
        stop = threading.Event()
        threads = [
            threading.Thread(target=w.consume_loop, args=(queue,), kwargs={"stop_event": stop})
            for w in workers
        ]
        for thread in threads:
            thread.start()
        try:
            assert wait_until(lambda: sum(effects.counts.values()) > 0, timeout=30)
            time.sleep(2 * self.visibility_timeout)  # a second delivery would have started
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        assert effects.counts == Counter({1: 1})
        assert drain(backend, queue) == []
        assert drain(backend, dlq(queue)) == []

    def test_a_handler_that_always_fails_is_retried_then_dead_lettered_with_its_reason(
        self, backend: MessagingBackend
    ) -> None:
        class Refuses(Consumer):
            def __init__(self) -> None:
                super().__init__()
                self.deliveries: list[int] = []

            @listener
            def on_number(self, event: ContractEvent, message: Message) -> None:
                self.deliveries.append(message.receive_count)
                raise RuntimeError(f"no {event.number}")

        queue = queue_name()
        refuses = Refuses()
        retry = RetryPolicy(immediate_attempts=2, max_deliveries=3, backoff_seconds=0.1, jitter=0)
        dispatcher = self.dispatcher(backend, queue, refuses, retry=retry)
        sent = MessagePublisher(backend).publish(ContractEvent(number=7), queue=queue)
        dispatcher.consume_loop(queue, max_messages=3, idle_timeout=10 * self.visibility_timeout)
        # Two attempts per delivery; released with a delay twice, counted across releases.
        assert refuses.deliveries == [1, 1, 2, 2, 3, 3]
        [dead] = drain(backend, dlq(queue))
        assert (dead.message_id, dead.content, dead.manifest) == (
            sent.message_id,
            sent.content,
            sent.manifest,
        )
        assert dead.metadata["error_type"] == "builtins.RuntimeError"
        assert dead.metadata["error_message"] == "no 7"
        assert dead.metadata["error_stage"] == "handle"
        assert dead.metadata["attempts"] == "6"
        assert dead.metadata["source_queue"] == queue
        assert dead.metadata["correlation_id"] == sent.metadata["correlation_id"]
        assert drain(backend, queue) == []

    def test_an_undecodable_message_is_dead_lettered_and_the_rest_handled(
        self, backend: MessagingBackend, inject_undecodable: Inject
    ) -> None:
        queue = queue_name()
        effects = Effects()
        dispatcher = self.dispatcher(backend, queue, effects)
        publisher = MessagePublisher(backend)
        publisher.publish(ContractEvent(number=1), queue=queue)
        original = inject_undecodable(queue)
        publisher.publish(ContractEvent(number=2), queue=queue)
        dispatcher.consume_loop(queue, idle_timeout=2 * self.visibility_timeout)
        assert effects.counts == Counter({1: 1, 2: 1})
        [dead] = drain(backend, dlq(queue))
        assert bytes_of(dead.content) == bytes_of(original)
        assert dead.metadata["error_stage"] in ("decode", "deserialize")
        assert dead.metadata["error_message"]
        assert dead.metadata["source_queue"] == queue
        # The copy carries the reason in its error headers, none of melange's own.
        assert not any(is_own_header(key) for key in dead.metadata if key != DECODE_ERROR)
        if dead.metadata["error_stage"] == "decode":
            assert dead.metadata["error_type"] == "melange.exceptions.UndecodableMessageError"
        assert drain(backend, queue) == []

    @pytest.fixture
    def restartable_store(self) -> RestartableStore:
        """Override with a ``RestartableStore`` to run the outage scenario."""
        pytest.skip("no restartable idempotency store given (fixture restartable_store)")

    @pytest.fixture
    def worker_store_url(self, tmp_path: Path) -> str:
        """The idempotency store URL the worker processes of a scenario share."""
        return f"sqlite:///{tmp_path / 'claims.db'}"

    def test_a_store_outage_mid_run_loses_and_dead_letters_nothing(
        self, backend: MessagingBackend, restartable_store: RestartableStore
    ) -> None:
        queue = queue_name()
        effects = Effects(seconds=0.05)
        store = restartable_store.store(queue)
        dispatcher = self.dispatcher(backend, queue, effects, idempotency=store)
        MessagePublisher(backend).publish_batch(
            [ContractEvent(number=n) for n in range(40)], queue=queue
        )
        stop = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                dispatcher.consume_loop(queue, stop_event=stop)
            except BaseException as e:  # the test asserts there was none
                errors.append(e)

        worker = threading.Thread(target=run)
        worker.start()
        try:
            assert wait_until(lambda: sum(effects.counts.values()) >= 5, timeout=30)
            restartable_store.stop()
            time.sleep(2.0)
            restartable_store.start()
            assert wait_until(lambda: len(effects.counts) == 40, timeout=60)
        finally:
            stop.set()
            worker.join(timeout=60)
            store.close()
        assert errors == []
        assert worker.is_alive() is False
        assert effects.counts == Counter(dict.fromkeys(range(40), 1))
        assert drain(backend, dlq(queue)) == []

    # -- worker processes ----------------------------------------------------------------

    @pytest.fixture
    def spawn(self, tmp_path: Path) -> Iterator[Spawn]:
        """Start ``melange worker`` processes; kill, by PID, any still running at the end."""
        started: list[subprocess.Popen[bytes]] = []

        def start(
            backend_url: str, queue: str, *, store: str | None, told: bool = True, **env: str
        ) -> Any:
            command = [
                sys.executable,
                "-m",
                "melange.cli",
                "--backend",
                backend_url,
                "worker",
                f"{_WORKERS}:consumers",
                "--middleware",
                f"{_WORKERS}:Crash",
                "--queue",
                queue,
                "--no-declare",
            ]
            if told:  # else the worker reads the queue's visibility timeout from the broker
                command += ["--visibility-timeout", str(self.visibility_timeout)]
            if store is not None:
                command += ["--idempotency", store]
            if self.loop == "asyncio":
                command += ["--async"]
            log = open(tmp_path / f"worker-{len(started)}.log", "wb")  # noqa: SIM115
            process = subprocess.Popen(
                command,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            started.append(process)
            return process

        yield start
        for process in started:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def require_url(self, backend_url: str | None) -> str:
        if backend_url is None:
            pytest.skip("this broker lives inside one process: no other process can reach it")
        return backend_url

    def test_two_workers_with_handlers_longer_than_the_visibility_timeout(
        self, backend: MessagingBackend, backend_url: str | None, spawn: Spawn, tmp_path: Path
    ) -> None:
        url = self.require_url(backend_url)
        queue = queue_name()
        self.dispatcher(backend, queue, Effects())
        MessagePublisher(backend).publish_batch(
            [ContractEvent(number=n) for n in range(4)], queue=queue
        )
        out = tmp_path / "effects.txt"
        env = {"CONTRACT_OUT": str(out), "CONTRACT_SECONDS": str(2 * self.visibility_timeout)}
        workers = [spawn(url, queue, store=None, told=False, **env) for _ in range(2)]
        try:
            assert wait_until(lambda: sum(effects_in(out).values()) >= 4, timeout=90)
            time.sleep(2 * self.visibility_timeout)  # a redelivery would have run by now
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                worker.wait(timeout=60)
        assert effects_in(out) == Counter(dict.fromkeys(range(4), 1))
        assert drain(backend, dlq(queue)) == []
        assert drain(backend, queue) == []
        assert [w.returncode for w in workers] == [0, 0]

    @pytest.mark.parametrize("moment", ["before", "after"])
    def test_a_worker_killed_around_its_side_effect_loses_and_repeats_nothing(  # noqa: PLR0917
        self,
        backend: MessagingBackend,
        backend_url: str | None,
        spawn: Spawn,
        tmp_path: Path,
        moment: str,
        worker_store_url: str,
    ) -> None:
        url = self.require_url(backend_url)
        queue = queue_name()
        store = worker_store_url
        self.dispatcher(backend, queue, Effects())
        MessagePublisher(backend).publish_batch(
            [ContractEvent(number=n) for n in range(4)], queue=queue
        )
        out, marks = tmp_path / "effects.txt", tmp_path / "marks.txt"
        env = {"CONTRACT_OUT": str(out), "CONTRACT_MARKS": str(marks)}
        doomed = spawn(url, queue, store=store, CONTRACT_HANG=moment, **env)
        assert wait_until(lambda: at_kill_point(marks, moment), timeout=60)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
        survivor = spawn(url, queue, store=store, **env)
        try:
            assert wait_until(lambda: len(effects_in(out)) == 4, timeout=90)
            time.sleep(2 * self.visibility_timeout)  # a repeat would run by now
        finally:
            survivor.send_signal(signal.SIGTERM)
            survivor.wait(timeout=60)
        assert effects_in(out) == Counter(dict.fromkeys(range(4), 1))
        assert drain(backend, dlq(queue)) == []
        assert drain(backend, queue) == []
