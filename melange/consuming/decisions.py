"""Handling one message, as a decision: what to do with it is an ``Outcome``.

The pipeline deserializes a message, finds the consumers that accept its
event, runs them through the middleware and decides an outcome (ack, release
after a delay, dead-letter, skip, keep). It does no broker I/O: the consume
loops (``MessageDispatcher``, ``AsyncMessageDispatcher``) fetch messages and
``melange.consuming.settling`` applies outcomes.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from melange._bridge import run_on_loop
from melange.consumers import Consumer
from melange.dead_letters import Stage
from melange.exceptions import (
    DeferMessage,
    RejectMessage,
    SerializationError,
    UndecodableMessageError,
    UnknownManifestError,
)
from melange.middleware import (
    ConsumerCall,
    Handling,
    Middleware,
    compose,
    hooks_of,
)
from melange.models import DECODE_ERROR, Message
from melange.outcomes import SUCCEEDED, CallResult, Outcome
from melange.policies import AckPolicy, RetryPolicy
from melange.serializers import SerializerRegistry
from melange.serializers.versions import VERSION_HEADER

__all__ = ["MessagePipeline", "Plan"]

_log = logging.getLogger("melange.pipeline")

_UNDECODABLE = f"{UndecodableMessageError.__module__}.{UndecodableMessageError.__qualname__}"
_REMEMBERED = 10_000


@dataclass(slots=True)
class _Memory:
    """What this process remembers of messages across deliveries (bounded; thread-safe)."""

    succeeded: OrderedDict[str, set[str]] = field(default_factory=OrderedDict)
    deliveries: OrderedDict[str, int] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def delivery_number(self, message: Message) -> int:
        """Return the broker's receive count, or this process's own count when it is unknown."""
        if message.receive_count > 0:
            return message.receive_count
        with self.lock:
            seen = self.deliveries.pop(message.message_id, 0) + 1
            self.deliveries[message.message_id] = seen
            _trim(self.deliveries)
        return seen

    def remember_successes(self, message_id: str, consumer_ids: set[str]) -> None:
        with self.lock:
            self.succeeded[message_id] = consumer_ids
            _trim(self.succeeded)

    def successes_before(self, message_id: str) -> set[str] | None:
        """Return (and forget) who handled this message in an earlier delivery."""
        if not self.succeeded:  # the common case, without the lock
            return None
        with self.lock:
            return self.succeeded.pop(message_id, None)


def _trim(entries: OrderedDict[str, Any]) -> None:
    while len(entries) > _REMEMBERED:
        entries.popitem(last=False)


class MessagePipeline:
    """Decides the outcome of each received message; shared by every consume loop.

    ``handle`` decides on the calling thread. The asyncio loop decides with
    ``AsyncDecisions`` over the same pipeline: both take the same steps
    (``plan``, then each ``ConsumerCall`` of the plan, then its ``outcome``).
    """

    def __init__(
        self,
        consumers: Callable[[type, str | None], Sequence[Consumer]],
        serializers: SerializerRegistry,
        *,
        middleware: Sequence[Middleware] = (),
        ack_policy: AckPolicy = AckPolicy.AFTER_SUCCESS,
        retry: RetryPolicy | None = None,
        learn_event_types: Callable[[], bool] = lambda: False,
    ) -> None:
        self._consumers_for = consumers
        self.serializers = serializers
        self.middleware = tuple(middleware)
        self.ack_policy = ack_policy
        self.retry = retry if retry is not None else RetryPolicy()
        self._learn_event_types = learn_event_types
        self._handle = compose(hooks_of(self.middleware, "handle_message"), self._decide)
        self._call = compose(hooks_of(self.middleware, "call_consumer"), self._attempt)
        self._memory = _Memory()
        #: The outcome of a message handled well (ack, or keep with ``AckPolicy.MANUAL``).
        self.success = (
            Outcome.keep("the handler acknowledges (AckPolicy.MANUAL)")
            if ack_policy is AckPolicy.MANUAL
            else Outcome.ack()
        )

    def handle(self, handling: Handling) -> Outcome:
        """Run the middleware and the consumers for one message; return what to do with it.

        An exception a middleware raises counts as a failed handling: retried,
        then dead-lettered, never out of the consume loop.
        """
        try:
            return self._handle(handling)
        except Exception as e:
            handling.report(e)
            return self.after_failure(handling.message, CallResult.failure(e))

    def _decide(self, handling: Handling) -> Outcome:
        plan = self.plan(handling)
        if isinstance(plan, Outcome):
            return plan
        for call in plan.calls:
            plan.note(call, self._call(call))
        return plan.outcome()

    def _attempt(self, call: ConsumerCall) -> CallResult:
        """Call the consumer up to ``immediate_attempts`` times; the innermost step."""
        handling = call.handling
        for attempt in range(1, self.retry.immediate_attempts + 1):
            try:
                result: Any = call.consumer.handle(handling.event, handling.message)  # type: ignore[func-returns-value]
                if result is not None and inspect.isawaitable(result):  # an async ``handle``
                    run_on_loop(result, f"{type(call.consumer).__qualname__}.handle")
            except Exception as e:
                final = self.failed_attempt(call, e, attempt)
                if final is not None:
                    return final
            else:
                return SUCCEEDED
        raise AssertionError("unreachable: the last attempt returns")

    # -- the steps both loops take ----------------------------------------------------

    def plan(self, handling: Handling) -> Outcome | Plan:
        """Deserialize the message; return its outcome already, or the plan of who handles it."""
        message = handling.message
        reason = message.metadata.get(DECODE_ERROR)  # only melange's decoders set it
        if type(reason) is str:
            return Outcome.dead_letter(Stage.DECODE, reason, error_type=_UNDECODABLE)
        try:
            try:
                handling.event = event = self.serializers.deserialize(
                    message.content,
                    message.manifest,
                    message.serializer_id,
                    message.metadata.get(VERSION_HEADER),
                )
            except UnknownManifestError:
                # A subclass of an accepted class may have been defined since attach.
                if not self._learn_event_types():
                    raise
                handling.event = event = self.serializers.deserialize(
                    message.content,
                    message.manifest,
                    message.serializer_id,
                    message.metadata.get(VERSION_HEADER),
                )
        except UnknownManifestError as e:
            return _skipped(message, str(e))
        except SerializationError as e:
            handling.report(e)
            return Outcome.dead_letter(Stage.DESERIALIZE, str(e), error=e)
        consumers = self._consumers_for(type(event), message.manifest)
        if not consumers:
            return _skipped(message, f"no listener accepts {type(event).__qualname__}")
        return Plan(self, handling, consumers, self._memory.successes_before(message.message_id))

    def failed_attempt(
        self, call: ConsumerCall, error: Exception, attempt: int
    ) -> CallResult | None:
        """Return the result of a consumer call that raised, or ``None`` to try it again.

        ``DeferMessage`` and ``RejectMessage`` end the call; another error is
        logged and tried again until the last immediate attempt.
        """
        handling = call.handling
        if isinstance(error, DeferMessage):
            return CallResult.defer(error.delay, error.reason)
        handling.report(error)
        if isinstance(error, RejectMessage):
            return CallResult.reject(error.reason, error)
        message = handling.message
        attempts = self.retry.immediate_attempts
        _log.warning(
            "%s failed on %s (%s), delivery %s, attempt %d of %d",
            call.consumer.consumer_id,
            message.message_id,
            message.manifest,
            message.receive_count or "?",
            attempt,
            attempts,
            exc_info=error,
        )
        if attempt < attempts:
            return None
        return CallResult.failure(error, attempts)

    def combine(self, message: Message, results: Sequence[CallResult]) -> Outcome:
        """Return the outcome of a message from its consumers' results."""
        rejected = [r for r in results if r.rejected]
        if rejected:
            first = rejected[0]
            return Outcome.dead_letter(Stage.HANDLE, first.reason, error=first.error, attempts=1)
        failed = [r for r in results if r.failed]
        if failed:
            return self.after_failure(message, failed[-1])
        deferred = [r for r in results if r.deferred]
        if deferred:
            longest = max(deferred, key=lambda r: r.delay)
            return Outcome.release(longest.delay, longest.reason)
        if not any(r.succeeded for r in results):
            return Outcome.skip("; ".join(sorted({r.reason for r in results})))
        return self.success

    def after_failure(self, message: Message, failure: CallResult) -> Outcome:
        """Return the outcome of a message whose handling failed (retry or dead-letter)."""
        policy = self.ack_policy
        error = failure.error
        assert error is not None
        if policy is AckPolicy.MANUAL:
            return Outcome.keep(f"failed: {error!r}; the handler acknowledges (AckPolicy.MANUAL)")
        delivery = self._memory.delivery_number(message)
        attempts = delivery * failure.attempts
        if policy is AckPolicy.AFTER_SUCCESS and delivery < self.retry.max_deliveries:
            return Outcome.release(
                self.retry.delay_for(delivery), f"failed: {error!r}", error=error
            )
        return Outcome.dead_letter(Stage.HANDLE, str(error), error=error, attempts=attempts)

    def remember_successes(self, message_id: str, consumer_ids: set[str]) -> None:
        """Remember which consumers handled a message that must come again for another."""
        self._memory.remember_successes(message_id, consumer_ids)


class Plan:
    """Who handles one deserialized message, and what their results come to.

    Made by ``MessagePipeline.plan``. The loop runs each of ``calls`` (through
    the ``call_consumer`` middleware) and hands its result to ``note``; then
    ``outcome`` says what to do with the message. A consumer that handled it
    in an earlier delivery (when another had failed) is not called again.
    """

    __slots__ = ("_pipeline", "_results", "_succeeded", "calls", "handling")

    def __init__(
        self,
        pipeline: MessagePipeline,
        handling: Handling,
        consumers: Sequence[Consumer],
        done_before: set[str] | None,
    ) -> None:
        self._pipeline = pipeline
        self.handling = handling
        self._results: list[CallResult] = []
        self._succeeded: set[str] = set(done_before or ())
        if done_before:
            self._results.extend(
                CallResult.skip("handled by an earlier delivery")
                for c in consumers
                if c.consumer_id in done_before
            )
            consumers = [c for c in consumers if c.consumer_id not in done_before]
        #: The consumer calls to make, in order.
        self.calls: list[ConsumerCall] = [ConsumerCall(handling, c) for c in consumers]

    def note(self, call: ConsumerCall, result: CallResult) -> None:
        """Record how one of ``calls`` went."""
        if result is SUCCEEDED or result.succeeded:
            self._succeeded.add(call.consumer.consumer_id)
        else:
            self.handling.unsuccessful = (*self.handling.unsuccessful, (call.consumer, result))
        self._results.append(result)

    def outcome(self) -> Outcome:
        """Return what to do with the message now that every call was noted."""
        pipeline, results = self._pipeline, self._results
        if len(results) == 1 and results[0] is SUCCEEDED:  # the common case, kept short
            return pipeline.success
        if self._succeeded and any(r.failed or r.deferred for r in results):
            pipeline.remember_successes(self.handling.message.message_id, self._succeeded)
        return pipeline.combine(self.handling.message, results)


def _skipped(message: Message, reason: str) -> Outcome:
    """Acknowledge a message nobody here takes, saying so in the log."""
    _log.info("skipped %s (%s): %s", message.message_id, message.manifest, reason)
    return Outcome.skip(reason)
