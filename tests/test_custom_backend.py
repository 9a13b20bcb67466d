"""A user's backend that implements only the spec's methods works with melange."""

from __future__ import annotations

import time
from typing import Any

from melange import Consumer, MessageDispatcher, MessagePublisher, RetryPolicy, listener
from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.models import Message, QueueWrapper, TopicWrapper
from tests.events import OrderCreated


class SpecOnlyBackend(MessagingBackend):
    """Implements exactly the spec's methods; batches, delays and release use the defaults."""

    def __init__(self) -> None:
        self.broker = InMemoryMessagingBackend()
        self.calls: list[str] = []

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        return self.broker.declare_topic(topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        return self.broker.get_queue(queue_name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float | None = None,
        max_receive_count: int | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        return self.broker.declare_queue(
            queue_name,
            *topics_to_bind,
            dead_letter_queue_name=dead_letter_queue_name,
            visibility_timeout=visibility_timeout,
            max_receive_count=max_receive_count,
        )

    def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        return self.broker.retrieve_messages(queue, **kwargs)

    def publish_to_topic(
        self, message: Message, topic: TopicWrapper, extra_attributes: dict[str, Any] | None = None
    ) -> None:
        self.calls.append("publish_to_topic")
        self.broker.publish_to_topic(message, topic)

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self.calls.append("publish_to_queue")
        self.broker.publish_to_queue(message, queue)

    def acknowledge(self, message: Message) -> None:
        self.calls.append("acknowledge")
        self.broker.acknowledge(message)

    def delete_queue(self, queue: QueueWrapper) -> None:
        self.broker.delete_queue(queue)

    def delete_topic(self, topic: TopicWrapper) -> None:
        self.broker.delete_topic(topic)


class Flaky(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.done: list[str] = []

    @listener
    def on_created(self, event: OrderCreated) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("first time fails")
        self.done.append(event.order_id)


def test_publish_batch_dispatch_and_retry_on_a_spec_only_backend() -> None:
    backend = SpecOnlyBackend()
    flaky = Flaky()
    dispatcher = MessageDispatcher(
        backend, [flaky], retry=RetryPolicy(immediate_attempts=1, max_deliveries=3)
    )
    dispatcher.declare("orders", visibility_timeout=0.5)
    publisher = MessagePublisher(backend)
    publisher.publish_batch([OrderCreated(order_id="a"), OrderCreated(order_id="b")])
    assert backend.calls.count("publish_to_topic") == 2  # the default batch is a loop
    started = time.monotonic()
    dispatcher.consume_loop("orders", max_messages=3, idle_timeout=5)
    # Without release(), the failed message came back when its visibility expired.
    assert time.monotonic() - started >= 0.45
    assert sorted(flaky.done) == ["a", "b"]
    assert backend.calls.count("acknowledge") == 2
    assert backend.broker.queue_depth(backend.get_queue("orders")) == 0
