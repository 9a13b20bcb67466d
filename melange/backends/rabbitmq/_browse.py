"""Reading a queue's messages without adding deliveries to them (``dlq peek``).

A quorum queue counts every return of a message, and on RabbitMQ 4.0 and
later every quorum queue has a delivery limit (20 by default) past which a
message is dropped or dead-lettered. Getting and requeueing dead letters to
show them would wear them away. Instead each one is taken, published again
to the tail of its queue as an exact copy (publisher-confirmed; its count
carried over in melange's own header, as a delayed release does, so it
neither grows nor resets), and only then acknowledged: a crash in between
leaves a duplicate with the same id, never a loss.
"""

from __future__ import annotations

from typing import Any

from melange.backends.rabbitmq._codec import Delivery, uncounted
from melange.exceptions import MissingExtraError

try:
    import pika
except ImportError as e:  # pragma: no cover - depends on the environment
    raise MissingExtraError("pika", "rabbitmq") from e

__all__ = ["browse"]


def browse(parameters: Any, queue: str, limit: int) -> list[Delivery]:
    """Return up to ``limit`` deliveries of ``queue``, each put back uncounted at its tail.

    Raises:
        pika.exceptions.AMQPError, OSError: as pika raises them (the caller translates).
    """
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        taken: list[Delivery] = []
        while len(taken) < limit:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            tag, redelivered = method.delivery_tag, method.redelivered
            taken.append((tag, redelivered, method.exchange, method.routing_key, properties, body))
        for delivery in taken:
            copy = uncounted(delivery, queue)
            channel.basic_publish("", queue, delivery[5], copy, mandatory=True)
        if taken:
            channel.basic_ack(taken[-1][0], multiple=True)
        return taken
    finally:
        if connection.is_open:
            connection.close()
