"""RabbitMQ over pika: fanout exchanges for topics, quorum queues, publisher confirms.

See docs/backends/rabbitmq.md. Needs the ``rabbitmq`` extra (pika).
"""

from melange.backends.rabbitmq._backend import RabbitMQBackend

__all__ = ["RabbitMQBackend"]
