"""How melange's topics, queues, dead letters and delays map onto RabbitMQ, and its URLs.

- a topic is a durable ``fanout`` exchange named after it;
- a queue is a durable quorum queue; with a dead-letter queue it gets
  ``x-dead-letter-exchange: ""`` (the default exchange),
  ``x-dead-letter-routing-key: <dlq>``, at-least-once dead-lettering and
  ``x-delivery-limit: max_receive_count - 1``;
- a queue declared with ``filter_events`` is bound to the topic through a
  direct exchange of its own, once per manifest (``_filters``);
- a delay of *d* ms is a fanout exchange and a quorum queue both named
  ``melange.delay.<d>ms``, whose ``x-message-ttl`` dead-letters each message
  into the default exchange with its original routing key: the target queue.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from melange._secrets import check_credentials, masked, url_error
from melange.backends.rabbitmq._connection import Step
from melange.exceptions import ConfigurationError, MissingExtraError

try:
    import pika
except ImportError as e:  # pragma: no cover - depends on the environment
    raise MissingExtraError("pika", "rabbitmq") from e

__all__ = [
    "MAX_DELAY_SECONDS",
    "QUORUM",
    "bind",
    "declare_exchange",
    "declare_queue",
    "delay_bucket_ms",
    "delay_route",
    "delete_exchange",
    "delete_queue",
    "parse_url",
    "queue_arguments",
]

QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}
_DELAY_PREFIX = "melange.delay."
# Delays are rounded up to the R20 preferred numbers (20 steps a decade, at
# most 12 % late) so that retries with jitter share a few holding queues.
_R20 = (1.0, 1.12, 1.25, 1.4, 1.6, 1.8, 2.0, 2.24, 2.5, 2.8, 3.15, 3.55, 4.0, 4.5, 5.0, 5.6)
_R20_REST = (6.3, 7.1, 8.0, 9.0)
_DELAY_STEPS = sorted({max(1, round(m * 10**e)) for e in range(9) for m in _R20 + _R20_REST})
_MAX_TTL_MS = 2**32 - 1
#: The longest holding time a TTL allows (about 49.7 days).
MAX_DELAY_SECONDS = _MAX_TTL_MS // 1000
_FLOAT_OPTIONS = frozenset(
    {"confirm_timeout", "operation_timeout", "visibility_timeout", "idle_release"}
)
_INT_OPTIONS = frozenset({"prefetch", "heartbeat"})


def declare_exchange(name: str, passive: bool = False) -> Step:
    """Return the step declaring (or, passive, checking) a topic's fanout exchange."""
    return lambda channel, reply: channel.exchange_declare(
        name, "fanout", passive=passive, durable=True, callback=reply
    )


def declare_queue(name: str, arguments: dict[str, Any] | None, passive: bool = False) -> Step:
    """Return the step declaring (or, passive, checking) a durable queue."""
    return lambda channel, reply: channel.queue_declare(
        name, passive=passive, durable=True, arguments=arguments, callback=reply
    )


def bind(queue: str, exchange: str) -> Step:
    """Return the step subscribing a queue to an exchange."""
    return lambda channel, reply: channel.queue_bind(queue, exchange, "", callback=reply)


def delete_queue(name: str) -> Step:
    """Return the step deleting a queue (a missing one is fine)."""
    return lambda channel, reply: channel.queue_delete(name, callback=reply)


def delete_exchange(name: str) -> Step:
    """Return the step deleting an exchange (a missing one is fine)."""
    return lambda channel, reply: channel.exchange_delete(name, callback=reply)


def queue_arguments(dead_letter_queue: str, max_receive_count: int) -> dict[str, Any]:
    """Return the arguments of a quorum queue that dead-letters after ``max_receive_count``.

    Raises:
        ConfigurationError: ``max_receive_count`` is below 1.
    """
    if max_receive_count < 1:
        raise ConfigurationError("max_receive_count must be at least 1")
    return {
        **QUORUM,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue,
        # at-least-once: a dead-lettered message leaves only once the DLQ has it.
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        # The limit counts returns, so delivery number max_receive_count is the last.
        "x-delivery-limit": max_receive_count - 1,
    }


def delay_bucket_ms(delay: float) -> int:
    """Return the holding time (ms) for ``delay`` seconds: never shorter, at most 12 % longer."""
    wanted = max(1, math.ceil(delay * 1000 - 1e-6))
    index = bisect_left(_DELAY_STEPS, wanted)
    return _DELAY_STEPS[index] if index < len(_DELAY_STEPS) else min(wanted, _MAX_TTL_MS)


def delay_route(ttl_ms: int) -> tuple[str, list[Step]]:
    """Return the name of the holding exchange and queue for ``ttl_ms``, and their steps."""
    name = f"{_DELAY_PREFIX}{ttl_ms}ms"
    arguments = {
        **QUORUM,
        "x-message-ttl": ttl_ms,
        "x-dead-letter-exchange": "",  # no routing key: the message's own, the target queue
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    return name, [declare_exchange(name), declare_queue(name, arguments), bind(name, name)]


def parse_url(url: str) -> tuple[list[Any], dict[str, Any]]:
    """Split an AMQP URL into pika's parameters (one per host) and melange's query options.

    ``amqp://user:pass@host1:5672,host2:5672/vhost`` names the nodes of a
    cluster: one set of parameters for each, in that order.

    Raises:
        ConfigurationError: not an amqp(s) URL, or a bad option.
    """
    check_credentials(url)
    try:
        parts = urlsplit(url)
    except ValueError as e:
        raise url_error(url, e) from None
    if parts.scheme.lower() not in ("amqp", "amqps"):
        raise ConfigurationError(f"expected an amqp:// or amqps:// URL, got {masked(url)!r}")
    options: dict[str, Any] = {}
    rest = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        try:
            if key in _FLOAT_OPTIONS:
                options[key] = float(value)
            elif key in _INT_OPTIONS:
                options[key] = int(value)
            else:
                rest.append((key, value))
        except ValueError:
            raise url_error(url, f"bad value for {key!r}: {value!r}") from None
    credentials, at, hosts = parts.netloc.rpartition("@")
    nodes = []
    for host in hosts.split(","):
        netloc = f"{credentials}{at}{host.strip()}"
        single = urlunsplit(parts._replace(netloc=netloc, query=urlencode(rest)))
        try:
            nodes.append(pika.URLParameters(single))
        except ValueError as e:
            raise url_error(url, e) from None
    return nodes, options
