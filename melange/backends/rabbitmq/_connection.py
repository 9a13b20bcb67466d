"""The I/O thread of the RabbitMQ backend: one pika ``SelectConnection``, kept alive.

Every pika object lives on this thread; other threads hand it work through
``ioloop.add_callback_threadsafe`` and wait on futures or events. The thread
sends heartbeats whatever the handlers are doing, reconnects with backoff,
replays the declared topology, restarts subscriptions, and tracks publisher
confirms.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple, Protocol

from melange.backends.rabbitmq._confirms import Confirms, Outgoing, PublishBatch
from melange.backends.rabbitmq._errors import describe, detached, translate
from melange.exceptions import BackendConnectionError, MissingExtraError, PublishError

try:
    import pika
    import pika.exceptions as pika_errors
    from pika.adapters.select_connection import IOLoop
except ImportError as e:  # pragma: no cover - depends on the environment
    raise MissingExtraError("pika", "rabbitmq") from e

__all__ = ["ConnectionObserver", "ConnectionThread", "Declared", "Step", "TopologyKey"]

log = logging.getLogger("melange.backends.rabbitmq")

#: One AMQP method: called with a channel and the callback its reply goes to.
Step = Callable[[Any, Callable[[Any], None]], None]

_TICK_SECONDS = 0.05


class Declared(enum.Enum):
    """The kinds of topology a connection thread declares again after a reconnect."""

    EXCHANGE = "exchange"
    QUEUE = "queue"
    BINDING = "binding"
    DELAY = "delay"


class TopologyKey(NamedTuple):
    """One declared thing: its kind, its name, and for a binding the exchange."""

    kind: Declared
    name: str
    source: str = ""


def _address(parameters: Any) -> str:
    return f"{getattr(parameters, 'host', '?')}:{getattr(parameters, 'port', '?')}"


class ConnectionObserver(Protocol):
    """What the connection thread needs from a subscription (all called on the I/O thread)."""

    def on_connection_open(self) -> None:
        """The connection is (again) open: resume consuming if wanted."""

    def on_connection_lost(self) -> None:
        """The connection is gone: everything unacknowledged was requeued by the broker."""

    def tick(self, now: float) -> None:
        """Called every few tens of milliseconds while connected."""

    def stop_gracefully(self, done: Callable[[], None]) -> None:
        """Stop consuming and hand buffered messages back; then call ``done``."""


class ConnectionThread:
    """One connection to RabbitMQ, owned by a daemon I/O thread started on first use.

    ``parameters`` are pika's connection parameters. Operations submitted
    while disconnected wait (each caller bounds its own wait) and run once
    the connection is open again.
    """

    def __init__(
        self,
        nodes: Sequence[Any],
        *,
        reconnect_delay: float = 0.2,
        max_reconnect_delay: float = 10.0,
    ) -> None:
        self.nodes = list(nodes)
        self._node = 0  # the node tried next, or connected to
        self._tried = 0  # nodes tried since the last open connection
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.observers: list[ConnectionObserver] = []
        #: (kind, name...) -> steps to run again after a reconnect, in declaration order.
        self.topology: dict[TopologyKey, list[Step]] = {}
        self.topology_lock = threading.Lock()
        self.last_error: BaseException | None = None
        self._lock = threading.Lock()
        self._ioloop: Any = None
        self._thread: threading.Thread | None = None
        self._connection: Any = None
        self._open = False
        self._closing = False
        self._backoff = reconnect_delay
        self._waiting: deque[tuple[Callable[[], None], Callable[[Exception], None]]] = deque()
        self._confirms = Confirms()
        self._pub_waiting: deque[Callable[[], None]] = deque()
        self._ticker: Any = None
        self._failing: PublishError | None = None

    @property
    def parameters(self) -> Any:
        """Return pika's parameters of the node connected to, or tried next."""
        return self.nodes[self._node]

    @property
    def address(self) -> str:
        """Return ``host:port`` of that node (never the credentials)."""
        return _address(self.parameters)

    @property
    def addresses(self) -> str:
        """Return ``host:port`` of every node, comma-separated."""
        return ", ".join(_address(node) for node in self.nodes)

    # -- any thread ------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Return whether the connection is open right now."""
        return self._open

    @property
    def closed(self) -> bool:
        """Return whether ``close()`` was called."""
        return self._closing

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the I/O thread, connected or not; never waits.

        Raises:
            BackendConnectionError: the connection thread is closed.
        """
        if self._closing:  # the loop may be gone already: nothing would ever run it
            raise BackendConnectionError("the RabbitMQ backend is closed")
        self._start()
        try:
            self._ioloop.add_callback_threadsafe(callback)
        except (AttributeError, RuntimeError, OSError) as e:  # the loop is already gone
            raise BackendConnectionError("the RabbitMQ backend is closed") from e

    def when_open(self, run: Callable[[], None], fail: Callable[[Exception], None]) -> None:
        """Call ``run`` on the I/O thread once connected, or ``fail`` if that cannot happen."""
        self.call_soon(lambda: self._run_when_open(run, fail))

    def run_steps(self, steps: Sequence[Step], timeout: float) -> list[Any]:
        """Run AMQP methods in order on a fresh channel and return their replies.

        A broker error closes only that channel; the pika error is raised for
        the caller to translate with what it knows of the target.

        Raises:
            BackendConnectionError: the broker was not reachable in time.
        """
        future: Future[list[Any]] = Future()

        def fail(error: Exception) -> None:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)

        self.when_open(lambda: self._start_steps(steps, future, self._connection), fail)
        replies: list[Any] = self.wait(future, timeout)
        return replies

    def wait(self, future: Future[Any], timeout: float) -> Any:
        """Return the future's result within ``timeout`` seconds.

        Raises:
            BackendConnectionError: the broker was unreachable all that time.
        """
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.cancel():
                error = self.last_error
                reason = f": {describe(error)}" if error is not None else ""
                raise BackendConnectionError(
                    f"RabbitMQ at {self.addresses} was not reachable within {timeout:g} s{reason}"
                ) from None
            return future.result(timeout)  # started already: give it as long again

    def publish(self, items: Sequence[Outgoing], batch: PublishBatch) -> None:
        """Publish on the confirm channel; outcomes settle ``batch``. Never waits."""
        if threading.current_thread() is self._thread:
            self._publish(items, batch, internal=True)
            return
        try:
            self.call_soon(lambda: self._publish(items, batch))
        except BackendConnectionError as e:
            batch.fail_unsettled(PublishError(str(e)))

    def close(self, timeout: float = 10.0) -> None:
        """Stop subscriptions gracefully, close the connection and end the thread; idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            thread = self._thread
        if thread is None:
            return
        try:
            self._ioloop.add_callback_threadsafe(lambda: self._shutdown(timeout))
        except (AttributeError, RuntimeError, OSError):
            return
        if thread is not threading.current_thread():
            thread.join(timeout + 5.0)

    # -- I/O thread: lifecycle -----------------------------------------------------------

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._closing:
                raise BackendConnectionError("the RabbitMQ backend is closed")
            if self._thread is not None:
                return
            self._ioloop = IOLoop()
            thread = threading.Thread(target=self._run, name="melange-rabbitmq-io", daemon=True)
            self._thread = thread
        thread.start()

    def _run(self) -> None:
        self._ioloop.add_callback_threadsafe(self._connect)
        try:
            self._ioloop.start()
        finally:
            self._fail_waiting(BackendConnectionError("the RabbitMQ backend is closed"))
            self._ioloop.close()

    def _connect(self) -> None:
        if self._closing:
            return
        try:
            self._connection = pika.SelectConnection(
                self.parameters,
                on_open_callback=self._on_open,
                on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_close,
                custom_ioloop=self._ioloop,
            )
        except (pika_errors.AMQPError, OSError) as e:
            self._on_open_error(None, e)

    def _on_open_error(self, connection: Any, error: BaseException) -> None:
        self._connection = None
        if self._closing:
            self._ioloop.stop()
            return
        self.last_error = error
        log.warning("cannot connect to RabbitMQ at %s: %s", self.address, describe(error))
        if isinstance(
            error, pika_errors.ProbableAuthenticationError | pika_errors.AuthenticationError
        ):
            # Retrying will not fix credentials: fail what waits now, keep trying slowly.
            self._fail_waiting(translate(error))
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        """Try the next node at once; back off only once every node failed in a row."""
        self._node = (self._node + 1) % len(self.nodes)
        self._tried += 1
        if self._tried < len(self.nodes):
            self._ioloop.call_later(0.0, self._connect)
            return
        self._tried = 0
        delay = self._backoff * random.uniform(0.8, 1.2)
        self._backoff = min(self._backoff * 2, self.max_reconnect_delay)
        self._ioloop.call_later(delay, self._connect)

    def _on_open(self, connection: Any) -> None:
        connection.channel(on_open_callback=self._on_publisher_channel)

    def _on_publisher_channel(self, channel: Any) -> None:
        channel.add_on_close_callback(self._on_publisher_closed)
        self._confirms.attach(channel, self._publisher_ready, self._on_nack)

    def _on_nack(self, channel: Any) -> None:
        # On RabbitMQ 3.10 a channel that published while a quorum queue had no
        # leader keeps being refused after a new one is elected; a fresh channel
        # is not. The nacked messages failed already: their callers send again.
        if channel is not None and channel.is_open:
            log.warning("RabbitMQ refused a publish (nack); reopening the publishing channel")
            channel.close()

    def _publisher_ready(self) -> None:
        if self._open:  # only the channel was reopened, the connection stayed up
            self._drain_publishes()
            return
        with self.topology_lock:
            entries = list(self.topology.items())
        self._replay(self._connection, entries, 0)

    def _replay(
        self, connection: Any, entries: list[tuple[TopologyKey, list[Step]]], index: int
    ) -> None:
        if connection is not self._connection:
            return  # lost again while replaying: the next connection starts over
        if index == len(entries):
            self._connected()
            return
        key, steps = entries[index]
        future: Future[list[Any]] = Future()

        def next_entry(done: Future[list[Any]]) -> None:
            error = done.exception()
            if error is not None:
                log.error("could not declare %s again after reconnecting: %s", key, error)
            self._replay(connection, entries, index + 1)

        future.add_done_callback(next_entry)
        self._start_steps(steps, future, connection)

    def _connected(self) -> None:
        self._open = True
        self._tried = 0
        if len(self.nodes) > 1:
            log.info("connected to RabbitMQ at %s", self.address)
        self._backoff = self.reconnect_delay
        self.last_error = None
        self._ticker = self._ioloop.call_later(_TICK_SECONDS, self._tick)
        for subscriber in list(self.observers):
            subscriber.on_connection_open()
        while self._waiting and self._open:
            run, _ = self._waiting.popleft()
            run()
        self._drain_publishes()

    def _drain_publishes(self) -> None:
        waiting = self._pub_waiting
        while waiting and self._confirms.channel is not None:
            waiting.popleft()()

    def _on_close(self, connection: Any, reason: BaseException) -> None:
        if connection is not self._connection:
            return
        self._connection = None
        self._open = False
        if self._ticker is not None:
            self._ioloop.remove_timeout(self._ticker)
            self._ticker = None
        self._confirms.detach(reason)
        for subscriber in list(self.observers):
            subscriber.on_connection_lost()
        if self._closing:
            self._ioloop.stop()
            return
        self.last_error = reason
        log.warning(
            "lost the RabbitMQ connection to %s (%s); reconnecting", self.address, describe(reason)
        )
        self._schedule_reconnect()

    def _shutdown(self, timeout: float) -> None:
        self._ioloop.call_later(timeout, self._force_stop)
        self._fail_waiting(BackendConnectionError("the RabbitMQ backend is closed"))
        connection = self._connection
        if connection is None:
            self._ioloop.stop()
            return
        if not self._open:
            if connection.is_closing or connection.is_closed:
                return
            connection.close()  # still opening: _on_open_error or _on_close stops the loop
            return
        stopping = list(self.observers)
        remaining = [len(stopping)]

        def one_stopped() -> None:
            remaining[0] -= 1
            if remaining[0] == 0 and connection.is_open:
                connection.close()

        if not stopping:
            connection.close()
        for subscriber in stopping:
            subscriber.stop_gracefully(one_stopped)

    def _force_stop(self) -> None:
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()  # _on_close stops the loop
            self._ioloop.call_later(2.0, self._ioloop.stop)
        else:
            self._ioloop.stop()

    @property
    def connection(self) -> Any:
        """Return pika's connection while it is open (I/O thread only)."""
        return self._connection

    def _tick(self) -> None:
        now = time.monotonic()
        for subscriber in list(self.observers):
            subscriber.tick(now)
        self._ticker = self._ioloop.call_later(_TICK_SECONDS, self._tick)

    # -- I/O thread: operations ------------------------------------------------------------

    def _run_when_open(self, run: Callable[[], None], fail: Callable[[Exception], None]) -> None:
        if self._closing:
            fail(BackendConnectionError("the RabbitMQ backend is closed"))
        elif self._open:
            run()
        else:
            self._waiting.append((run, fail))

    def _fail_waiting(self, error: Exception) -> None:
        while self._waiting:
            _, fail = self._waiting.popleft()
            fail(error)
        waiting, self._pub_waiting = self._pub_waiting, deque()
        self._failing = PublishError(str(error))
        try:
            for publish in waiting:
                publish()
        finally:
            self._failing = None

    def _start_steps(
        self, steps: Sequence[Step], future: Future[list[Any]], connection: Any
    ) -> None:
        if not future.set_running_or_notify_cancel():
            return
        if connection is None or not connection.is_open or self._closing:
            future.set_exception(BackendConnectionError("not connected to RabbitMQ"))
            return
        replies: list[Any] = []

        def on_close(channel: Any, reason: BaseException) -> None:
            if not future.done():
                future.set_exception(detached(reason))

        def run(channel: Any, index: int) -> None:
            if index == len(steps):
                future.set_result(replies)
                channel.close()
                return

            def reply(frame: Any) -> None:
                replies.append(frame)
                run(channel, index + 1)

            try:
                steps[index](channel, reply)
            except pika_errors.AMQPError as e:
                if not future.done():
                    future.set_exception(e)
                if channel.is_open:
                    channel.close()

        def on_open(channel: Any) -> None:
            channel.add_on_close_callback(on_close)
            run(channel, 0)

        try:
            connection.channel(on_open_callback=on_open)
        except pika_errors.AMQPError as e:
            future.set_exception(e)

    # -- I/O thread: publishing with confirms ------------------------------------------------

    def _publish(
        self, items: Sequence[Outgoing], batch: PublishBatch, internal: bool = False
    ) -> None:
        if batch.done.is_set():
            return  # the caller stopped waiting before this ran: never send it
        if self._failing is not None:
            batch.fail_unsettled(self._failing)
        elif self._closing and not internal:  # subscriptions still hand messages back while closing
            batch.fail_unsettled(PublishError("the RabbitMQ backend is closed"))
        elif self._confirms.channel is None or not self._confirms.channel.is_open or not self._open:
            self._pub_waiting.append(lambda: self._publish(items, batch, internal))
        else:
            self._confirms.publish(items, batch)

    def _on_publisher_closed(self, channel: Any, reason: BaseException) -> None:
        if channel is not self._confirms.channel:
            return
        self._confirms.detach(reason)
        connection = self._connection
        if connection is not None and connection.is_open and not self._closing:
            if not isinstance(reason, pika_errors.ChannelClosedByClient):  # else: after a nack
                log.warning("RabbitMQ closed the publishing channel (%s); reopening it", reason)
            connection.channel(on_open_callback=self._on_publisher_channel)
