"""``Relay``: moves committed outbox rows to the broker, then deletes them.

Each round claims a batch (rows no other relay holds, none of which would
overtake an earlier message to its destination), sends each destination's
rows in one batch call, and deletes a row only once the backend returned,
that is once the broker confirmed it. A relay killed in between sends the
rows again later, under the same message ids, for the inbox to absorb.

While rows keep coming (``drain``, ``run``) the database's side of the next
round runs on a thread of its own while the broker takes this one: the next
batch is claimed and the last one settled meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from melange.backends.interfaces import MessagingBackend
from melange.broker_calls import run_calls
from melange.exceptions import (
    BackendConnectionError,
    BackendError,
    BatchPublishError,
    ConfigurationError,
    OutboxError,
)
from melange.outbox._open import open_outbox
from melange.outbox._rows import (
    FailureKind,
    Lane,
    Settlement,
    StoredMessage,
    UnreadableRowError,
    failure_kind,
)
from melange.outbox._store import Claim, OutboxDepth, SQLOutboxStore
from melange.outgoing import Outgoing
from melange.publishers import MessagePublisher

__all__ = ["Relay"]

_log = logging.getLogger("melange.outbox")
_ANY_DELAY = 1e12  # seconds: the horizon of a backend that takes any delay
_POLL_SECONDS = {"sqlite": 0.2, "postgresql": 5.0}  # PostgreSQL's relay wakes on NOTIFY
_Sendable = tuple[StoredMessage, Outgoing]


class Relay:
    """Sends what services committed to an outbox table, in order per destination.

    ``outbox`` is a database URL (``sqlite:///orders.db``,
    ``postgresql://…``) or a store from ``open_outbox``. Several relays may
    run on one outbox: PostgreSQL's locks (``FOR UPDATE SKIP LOCKED``) or
    SQLite's leases keep them from sending a row twice, and a destination's
    rows leave in the order they were written. A row the broker refuses is
    tried again after a growing pause, up to ``max_attempts`` times; one that
    can never leave (too large, no such queue) is kept aside, dead, with the
    reason (``dead_rows``, ``melange dlq peek --outbox``). While the broker
    or the database is down the relay backs off, up to ``max_backoff``
    seconds, and goes on where it was.
    """

    def __init__(
        self,
        outbox: str | SQLOutboxStore,
        backend: MessagingBackend,
        *,
        batch_size: int = 100,
        poll_interval: float | None = None,
        lease_seconds: float = 30.0,
        max_attempts: int = 10,
        max_backoff: float = 30.0,
        create_tables: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if batch_size < 1 or max_attempts < 1:
            raise ConfigurationError("batch_size and max_attempts must be at least 1")
        self._owns_store = isinstance(outbox, str)
        self.store = open_outbox(outbox) if isinstance(outbox, str) else outbox
        self.backend = backend
        self.publisher = MessagePublisher(backend)
        self.batch_size = batch_size
        self.poll_interval = (
            _POLL_SECONDS.get(self.store.dialect, 1.0) if poll_interval is None else poll_interval
        )
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.max_backoff = max_backoff
        self._clock = clock
        #: Counts of what happened: sent, retried, dead, outages, rounds.
        self.stats: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        #: Whether more rows were ready than the last round took (another follows at once).
        self.last_round_was_full = False
        if create_tables:
            self.store.ensure_tables()

    # -- one round ---------------------------------------------------------------------

    def relay_once(self) -> int:
        """Claim one batch, send it and settle it; return how many rows left the outbox.

        Raises:
            BackendConnectionError: the broker cannot be reached (what was sent is settled).
            OutboxError: the database cannot be used.
        """
        claim = self._claim()
        self._round(claim)
        return len(claim.settlement.sent)

    def drain(self, stop: threading.Event | None = None) -> int:
        """Relay rounds back to back while rows are ready (until ``stop`` is set);
        return how many rows left the outbox.

        While the broker takes one batch, a thread of the relay's settles the
        batch before it and claims the next, so the database and the broker
        work at once. A single round (an idle poll) starts no thread.

        Raises:
            BackendConnectionError: the broker cannot be reached (what was sent is settled).
            OutboxError: the database cannot be used.
        """
        stop = stop if stop is not None else self._stopping
        sent_before = self.stats["sent"]
        claim = self._claim()
        if not claim.more or stop.is_set():
            self._round(claim)
            return self.stats["sent"] - sent_before
        blocked: set[Lane] = set()
        settles: list[Future[int]] = []
        with ThreadPoolExecutor(1, thread_name_prefix="melange-outbox-books") as books:
            while True:
                coming: Future[Claim] | None = None
                if claim.more and not stop.is_set():
                    # Its rows go first: the next claim may take the rows behind them.
                    last = settles[-1] if settles else None
                    coming = books.submit(self._claim_after, last, [r.seq for r in claim.rows])
                try:
                    blocked = self._send(claim, blocked)
                except BaseException:
                    books.submit(self._settle, claim)
                    if coming is not None:  # claimed for nothing: give it back unsent
                        books.submit(self._let_go, coming)
                    raise
                settles.append(books.submit(self._settle, claim))
                if coming is None:
                    break
                claim = coming.result()
        for settled in settles:  # all have run (the pool is shut down): a failure raises here
            settled.result()
        return self.stats["sent"] - sent_before

    def _round(self, claim: Claim) -> None:
        """Send a claim and settle it, on this thread."""
        try:
            self._send(claim, set())
        finally:
            self._settle(claim)

    def _claim(self, ahead: Collection[int] = ()) -> Claim:
        """Claim a batch; ``ahead`` are rows of this relay's still being sent before it."""
        now = self._clock()
        max_delay = self.backend.max_delay_seconds
        horizon = now + (_ANY_DELAY if max_delay is None else max_delay)
        claim = self.store.claim(
            self.batch_size, now=now, horizon=horizon, lease_seconds=self.lease_seconds, ahead=ahead
        )
        self.stats["rounds"] += 1
        self.last_round_was_full = claim.more
        return claim

    def _claim_after(self, settling: Future[int] | None, ahead: Collection[int]) -> Claim:
        """Claim the next batch unless settling the one before failed (its error is raised)."""
        if settling is not None:
            settling.result()
        return self._claim(ahead)

    def _settle(self, claim: Claim) -> int:
        """Apply what became of a claim; return how many of its rows left the outbox."""
        self.store.settle(claim, now=self._clock())
        done = claim.settlement
        self.stats["sent"] += len(done.sent)
        self.stats["retried"] += len(done.retried)
        self.stats["dead"] += len(done.dead)
        return len(done.sent)

    def _let_go(self, coming: Future[Claim]) -> None:
        """Give back a claimed round that was never sent."""
        if coming.exception() is None:
            self.store.settle(coming.result(), now=self._clock())

    def _send(self, claim: Claim, blocked: Collection[Lane]) -> set[Lane]:
        """Send a claim's rows, except those of ``blocked`` lanes; return the lanes of the
        rows left unsent, which the next claim's rows must not overtake.
        """
        now = self._clock()
        done = claim.settlement
        lanes: dict[Lane, list[_Sendable]] = {}
        for row in claim.rows:
            if row.lane in blocked:
                continue  # an earlier row of its lane did not leave: it waits behind it
            try:
                lanes.setdefault(row.lane, []).append((row, row.outgoing(now)))
            except UnreadableRowError as e:
                done.dead.append((row.seq, str(e)))
                _log.error("outbox row %s is kept dead: %s", row.seq, e)
        for items in lanes.values():
            self._send_lane(items, done, now)
            if done.retried and not done.sent:
                # Refused and nothing taken: the broker is down, not refusing this message
                # (a RabbitMQ publish with no broker is unconfirmed, not unreachable).
                _, reason, _ = done.retried[0]
                done.retried.clear()
                raise BackendConnectionError(f"the broker took none of the rows: {reason}")
        left = set(done.sent).union(seq for seq, _ in done.dead)
        return {row.lane for row in claim.rows if row.seq not in left}

    def _send_lane(self, items: Sequence[_Sendable], done: Settlement, now: float) -> None:
        """Send one destination's rows: in one batch call when none is delayed."""
        if len(items) > 1 and all(outgoing.delay == 0 for _, outgoing in items):
            try:
                run_calls(self.backend, self.publisher.sending.batch_sent([o for _, o in items]))
            except BatchPublishError as e:
                refused = {message.message_id for message, _ in e.failed}
                done.sent.extend(row.seq for row, o in items if o.built.message_id not in refused)
                items = [(row, o) for row, o in items if o.built.message_id in refused]
            except Exception as e:
                if failure_kind(e) is FailureKind.OUTAGE:
                    raise
                # Which message was refused is not known: each is tried on its own.
            else:
                done.sent.extend(row.seq for row, _ in items)
                return
        for row, outgoing in items:
            try:
                self.publisher.deliver(outgoing)
            except Exception as e:
                kind = failure_kind(e)
                if kind is FailureKind.OUTAGE:
                    raise
                if not self._failed(row, e, kind, done, now):
                    return  # the rest of the lane waits behind it, in order
            else:
                done.sent.append(row.seq)

    def _failed(
        self, row: StoredMessage, error: Exception, kind: FailureKind, done: Settlement, now: float
    ) -> bool:
        """Record a row the broker refused; return whether the rows after it may go on."""
        reason = f"{type(error).__name__}: {error}"
        attempts = row.attempts + 1
        if kind is FailureKind.DEAD or attempts >= self.max_attempts:
            if kind is not FailureKind.DEAD:
                reason = f"gave up after {attempts} attempts: {reason}"
            done.dead.append((row.seq, reason))
            _log.error("outbox row %s (%s) is kept dead: %s", row.seq, row.message_id, reason)
            return True
        pause = min(self.max_backoff, 0.5 * 2 ** (attempts - 1))
        done.retried.append((row.seq, reason, now + pause))
        _log.warning(
            "outbox row %s (%s), attempt %d of %d: %s; again in %.1f s",
            row.seq,
            row.message_id,
            attempts,
            self.max_attempts,
            reason,
            pause,
        )
        return False

    # -- running -----------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> None:
        """Relay until ``stop`` is set (or ``close``): rounds back to back while rows wait,
        a wait for a commit (``NOTIFY`` on PostgreSQL, a poll on SQLite, ``wake``) when none do.

        Set your own ``stop``, then call ``wake`` so that a wait ends at once.
        """
        stopping = stop if stop is not None else self._stopping
        self.store.listen()  # before the first round: a commit during it wakes the next
        pause = 0.0
        while not stopping.is_set() and not self._stopping.is_set():
            self._wake.clear()  # a wake during the rounds makes the next ones follow at once
            try:
                self.drain(stopping)
            except Exception as e:  # the broker or the database is down: wait, then go on
                pause = min(self.max_backoff, max(pause * 2, 0.5))
                self.stats["outages"] += 1
                if isinstance(e, BackendError | OutboxError):
                    _log.warning("outbox relay: %s; trying again in %.1f s", e, pause)
                else:
                    _log.exception("outbox relay failed; trying again in %.1f s", pause)
                self._wake.wait(pause)
                continue
            pause = 0.0
            if not self.last_round_was_full:
                self.store.wait_for_rows(self.poll_interval, self._wake)

    def wake(self) -> None:
        """Have the relay look for rows now: a commit in this process added some."""
        self._wake.set()

    def start(self) -> None:
        """Run the relay on a thread of its own until ``close``."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self.run, name="melange-outbox-relay", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the relay's thread, if started, and close the store it opened."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._owns_store:
            self.store.close()

    # -- what operators look at ----------------------------------------------------------

    def depth(self) -> OutboxDepth:
        """Return how many rows wait, the oldest one's age, and how many are kept dead."""
        return self.store.depth(self._clock())

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
