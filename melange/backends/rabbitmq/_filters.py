"""``filter_events`` on RabbitMQ: a direct exchange per filtered subscription; no I/O.

A topic is a fanout exchange, and the manifest travels in the ``type``
property, which no exchange type can match. So every topic publish also
carries the manifest as its routing key (``_codec.routing_key_of``), which a
fanout exchange ignores, and a queue subscribed with ``filter_events`` is not
bound to the topic itself but to its own durable, auto-delete ``direct``
exchange (``filter_names``), bound to the topic (exchange to exchange), the
queue bound to it once per manifest:

    topic (fanout) --> melange.filter.<topic>.<queue>.<hash> (direct) --manifest--> queue

AMQP cannot list bindings, so a declare cannot know which manifests an
earlier one (in another process, maybe) bound. It rebuilds the filter
exchange instead, without a moment in which the queue misses a message it
takes: a spare exchange carrying the new list goes live first, the filter
exchange is deleted and rebuilt, then the spare is deleted (a message that
reaches the queue by both at once is enqueued once). The queue's plain
binding to the topic, if any, is removed. Processes declaring at once take
turns through an exclusive queue (``names.lock``), which the broker drops
with its connection if that process dies. The filter exchange goes with its
queue (auto-delete: when the queue is deleted, so are its bindings).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import NamedTuple

from melange.backends.interfaces import checked_filter_events
from melange.backends.naming import MAX_RABBITMQ_BYTES
from melange.backends.rabbitmq._codec import routing_key_of
from melange.backends.rabbitmq._connection import Step
from melange.backends.rabbitmq._topology import delete_exchange
from melange.exceptions import ConfigurationError

__all__ = [
    "FILTER_PREFIX",
    "FilterNames",
    "checked_manifests",
    "filter_names",
    "filter_path",
    "filter_steps",
    "probe",
    "release",
    "ride",
]

#: The start of every filter exchange's name.
FILTER_PREFIX = "melange.filter."
_SPARE = ".spare"
_LOCK = ".lock"
_LONGEST = MAX_RABBITMQ_BYTES - max(len(_SPARE), len(_LOCK))


class FilterNames(NamedTuple):
    """The names a filtered subscription uses: its exchange, the spare and the lock queue."""

    exchange: str
    spare: str
    lock: str


def filter_names(topic: str, queue: str) -> FilterNames:
    """Return the names for the subscription of ``queue`` to ``topic``: the same in every process.

    ``melange.filter.<topic>.<queue>.<16 hex digits>``, the digest of both
    names telling apart pairs that read alike (``a.b`` + ``c``, ``a`` + ``b.c``);
    when that is too long for RabbitMQ, ``melange.filter.<64 hex digits>``.
    """
    raw_topic, raw_queue = topic.encode(), queue.encode()
    digest = hashlib.sha256(len(raw_topic).to_bytes(2, "big") + raw_topic + raw_queue).hexdigest()
    name = f"{FILTER_PREFIX}{topic}.{queue}.{digest[:16]}"
    if len(name.encode()) > _LONGEST:
        name = f"{FILTER_PREFIX}{digest}"
    return FilterNames(name, name + _SPARE, name + _LOCK)


def checked_manifests(filter_events: object) -> frozenset[str] | None:
    """Return the manifests of ``filter_events`` (``None``: no filter asked for).

    Raises:
        ConfigurationError: not a non-empty list of manifests, or a manifest
            that cannot be a routing key (more than 255 bytes of UTF-8, or not text).
    """
    manifests = checked_filter_events(filter_events)
    if manifests is not None:
        for manifest in sorted(manifests):
            if routing_key_of(manifest) != manifest:
                raise ConfigurationError(
                    f"filter_events: manifest {manifest[:80]!r} cannot be a RabbitMQ routing"
                    f" key (at most {MAX_RABBITMQ_BYTES} bytes of UTF-8)"
                )
    return manifests


def filter_path(
    exchange: str, topic: str, queue: str, manifests: Iterable[str], *, plain: bool = True
) -> list[Step]:
    """Return the steps building ``exchange`` as the filter of ``queue`` on ``topic``.

    The queue's bindings come first and the one from the topic last, so the
    exchange delivers the whole list from its first message. ``plain``: also
    remove the queue's own binding to the topic.
    """
    steps = [_declare_direct(exchange)]
    steps.extend(_bind(queue, exchange, manifest) for manifest in sorted(manifests))
    steps.append(_bind_exchange(exchange, topic))
    if plain:
        steps.append(_unbind(queue, topic))
    return steps


def filter_steps(
    names: FilterNames, topic: str, queue: str, manifests: Iterable[str]
) -> list[Step]:
    """Return the steps replacing the filter of ``queue`` on ``topic`` by ``manifests``, gaplessly.

    The first takes the lock (refused, 405, while another connection holds
    it); the last gives it back.
    """
    listed = sorted(manifests)
    return [
        _take_lock(names.lock),
        delete_exchange(names.spare),  # left over by a declare that died half-way
        *filter_path(names.spare, topic, queue, listed, plain=False),
        delete_exchange(names.exchange),
        *filter_path(names.exchange, topic, queue, listed),
        delete_exchange(names.spare),
        release(names.lock),
    ]


def ride(exchange: str, topic: str) -> Step:
    """Return the step binding an existing filter exchange to ``topic`` (declared with no list)."""
    return _bind_exchange(exchange, topic)


def probe(exchange: str) -> Step:
    """Return the step checking that an exchange exists (404, closing the channel, if not)."""
    return lambda channel, reply: channel.exchange_declare(exchange, passive=True, callback=reply)


def release(lock: str) -> Step:
    """Return the step giving the lock back (deleting the exclusive queue)."""
    return lambda channel, reply: channel.queue_delete(lock, callback=reply)


def _take_lock(lock: str) -> Step:
    return lambda channel, reply: channel.queue_declare(
        lock, durable=False, exclusive=True, auto_delete=True, callback=reply
    )


def _declare_direct(name: str) -> Step:
    return lambda channel, reply: channel.exchange_declare(
        name, "direct", durable=True, auto_delete=True, callback=reply
    )


def _bind(queue: str, exchange: str, routing_key: str) -> Step:
    return lambda channel, reply: channel.queue_bind(queue, exchange, routing_key, callback=reply)


def _unbind(queue: str, topic: str) -> Step:
    # Unbinding what is not bound is fine on RabbitMQ.
    return lambda channel, reply: channel.queue_unbind(queue, topic, "", callback=reply)


def _bind_exchange(exchange: str, topic: str) -> Step:
    return lambda channel, reply: channel.exchange_bind(exchange, topic, "", callback=reply)
