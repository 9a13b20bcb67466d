"""``ConsumeEngine``: the parts of one dispatcher, the same under both loops."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from melange.broker_calls import BrokerSteps
from melange.consumers import Consumer
from melange.consuming.decisions import MessagePipeline
from melange.consuming.queues import QueueBindings
from melange.consuming.routing import Routes
from melange.consuming.settling import OutcomeCounts, Settler
from melange.middleware import Middleware
from melange.middleware.scope import MessageScopeMiddleware
from melange.models import QueueWrapper
from melange.policies import AckPolicy, RetryPolicy
from melange.serializers import SerializerRegistry

__all__ = ["ConsumeEngine", "EngineOwner"]


class ConsumeEngine:
    """Routes, queues, the pipeline that decides and the settler that applies decisions.

    ``middleware`` wraps every message after melange's own scope middleware
    (the current message, the signals); ``default_visibility_timeout`` and
    ``default_max_receive_count`` are the backend's.
    """

    def __init__(
        self,
        serializers: SerializerRegistry,
        *,
        middleware: Sequence[Middleware],
        ack_policy: AckPolicy,
        retry: RetryPolicy,
        visibility_timeout: float | None,
        default_visibility_timeout: float,
        default_max_receive_count: int,
        async_listeners: bool,
    ) -> None:
        self.retry = retry
        self.routes = Routes(serializers, async_listeners=async_listeners)
        self.queues = QueueBindings(visibility_timeout, default_visibility_timeout)
        self.pipeline = MessagePipeline(
            self.routes.consumers_for,
            serializers,
            middleware=[MessageScopeMiddleware(), *middleware],
            ack_policy=ack_policy,
            retry=retry,
            learn_event_types=self.routes.learn_event_types,
        )
        self.settler = Settler(ack_policy, retry, redrive_limit=2 * default_max_receive_count)

    def declaring(
        self,
        queue: str,
        *,
        topics: Iterable[str] = (),
        dead_letter_queue_name: str | None = None,
        **queue_options: Any,
    ) -> BrokerSteps[tuple[QueueWrapper, QueueWrapper | None]]:
        """The steps of ``declare``: the queue, its dead-letter queue, every accepted topic.

        ``filter_events=True`` becomes the manifests the consumers take. The
        broker's own dead-letter limit is, unless told, one receive beyond the
        retry policy's, so that the dispatcher dead-letters first, with the
        error headers.
        """
        self.routes.learn_event_types()
        queue_options.setdefault("max_receive_count", self.retry.max_deliveries + 1)
        if queue_options.get("filter_events") is True:
            queue_options["filter_events"] = self.routes.filter_manifests()
        names = sorted(set(self.routes.topics()) | set(topics))
        return self.queues.declaring(
            queue, names, dead_letter_queue_name=dead_letter_queue_name, **queue_options
        )


class EngineOwner:
    """What both dispatchers are: their settings, their consumers and the engine they own.

    ``MessageDispatcher`` and ``AsyncMessageDispatcher`` subclass it and add
    their consume loop: how they receive, wait and run handlers.
    """

    #: Whether listeners may be ``async def`` (only a loop that awaits them allows them).
    async_listeners = False

    def __init__(
        self,
        *,
        serializers: SerializerRegistry | None,
        middleware: Sequence[Middleware],
        ack_policy: AckPolicy,
        retry: RetryPolicy | None,
        batch_size: int,
        visibility_timeout: float | None,
        default_visibility_timeout: float,
        default_max_receive_count: int,
    ) -> None:
        self.serializers = serializers if serializers is not None else SerializerRegistry()
        self.ack_policy = ack_policy
        self.retry = retry if retry is not None else RetryPolicy()
        self.batch_size = batch_size
        self.visibility_timeout = visibility_timeout
        #: Routes, queues, the pipeline that decides and the settler that applies decisions.
        self.engine = ConsumeEngine(
            self.serializers,
            middleware=middleware,
            ack_policy=ack_policy,
            retry=self.retry,
            visibility_timeout=visibility_timeout,
            default_visibility_timeout=default_visibility_timeout,
            default_max_receive_count=default_max_receive_count,
            async_listeners=self.async_listeners,
        )
        self.routes = self.engine.routes
        self.queues = self.engine.queues
        self.pipeline = self.engine.pipeline
        self.settler = self.engine.settler

    @property
    def outcomes(self) -> OutcomeCounts:
        """Return how many handled messages came to each outcome, since this dispatcher was made."""
        return self.settler.outcomes

    def attach_consumer(self, consumer: Consumer) -> None:
        """Add a consumer; its event classes (and their known subclasses) become readable.

        Raises:
            ConfigurationError: it has ``async def`` listeners this loop cannot await.
        """
        self.routes.attach(consumer)
        if consumer.runtime is not None:
            consumer.runtime.start()

    def unattach_consumer(self, consumer: Consumer) -> None:
        """Remove a consumer (closing its runtime); its events are skipped from now on."""
        self.routes.unattach(consumer)
        if consumer.runtime is not None:
            consumer.runtime.close()

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """Return the attached consumers."""
        return self.routes.consumers

    def event_types(self) -> list[type]:
        """Return every class some consumer accepts: its listener types and their subclasses."""
        return self.routes.event_types()

    def topics(self) -> list[str]:
        """Return the manifest topics a queue of this dispatcher subscribes to."""
        return self.routes.topics()
