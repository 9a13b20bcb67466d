"""An AMQP URL naming a cluster's nodes: a node killed under load loses nothing."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from melange import Consumer, Message, MessageDispatcher, MessagePublisher, listener
from melange.backends.rabbitmq import RabbitMQBackend
from melange.exceptions import BackendError
from melange.testing import unique_name, wait_until
from tests.servers.rabbitmq_cluster import RabbitMQCluster

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

MESSAGES = 600
PREFETCH = 20


class Numbers(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()

    @listener
    def on_number(self, event: dict[str, int], message: Message) -> None:
        with self.lock:
            self.seen[str(event["n"])] += 1


def test_a_node_killed_under_publish_and_consume_load_loses_nothing(
    rabbitmq_cluster: RabbitMQCluster,
) -> None:
    queue = unique_name("cluster")
    url = f"{rabbitmq_cluster.url}?prefetch={PREFETCH}&operation_timeout=60"
    with RabbitMQBackend(url) as publisher_side, RabbitMQBackend(url) as consumer_side:
        assert len(publisher_side.nodes) == 3
        numbers = Numbers()
        dispatcher = MessageDispatcher(consumer_side, [numbers], batch_size=10)
        dispatcher.declare(queue, visibility_timeout=30)
        wrapper = publisher_side.get_queue(queue)
        stop = threading.Event()
        consuming = threading.Thread(
            target=dispatcher.consume_loop, args=(queue,), kwargs={"stop_event": stop}
        )
        consuming.start()
        published = 0
        retried = 0
        killed = None
        try:
            publisher = MessagePublisher(publisher_side)
            for n in range(MESSAGES):
                if n == MESSAGES // 3:  # the node the consumer is connected to dies
                    killed = rabbitmq_cluster.node_at(consumer_side.current_node.port)
                    killed.kill_node()
                while True:
                    try:
                        publisher.publish({"n": n}, queue=wrapper)
                        break
                    except BackendError:  # not confirmed: send it again (at least once)
                        retried += 1
                        time.sleep(0.2)
                published += 1
            assert wait_until(lambda: len(numbers.seen) == MESSAGES, timeout=120)
        finally:
            stop.set()
            consuming.join(timeout=60)
    assert killed is not None
    lost = [n for n in range(MESSAGES) if str(n) not in numbers.seen]
    duplicates = sum(count - 1 for count in numbers.seen.values())
    assert lost == []
    assert duplicates <= PREFETCH + 10 + retried  # what the dead connection held, and resends
    print(f"lost 0, duplicates {duplicates}, publishes resent {retried}")
