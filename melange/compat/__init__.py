"""Melange 7.3's API, for migrating from it one service at a time (deprecated).

Every name here is Melange 7's, mapped onto melange's classes: a service's
code and tests keep working with their imports pointed here while it moves
to melange's own API. Building one warns (``DeprecationWarning``) and names
its replacement. The SNS/SQS backends write and read Melange 7's wire. What
differs, and why, is in docs/migrating.md. Nothing in melange uses this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from melange._lazy import lazy_names
from melange.backends.interfaces import MessagingBackend
from melange.compat._backends import (
    BackendManager,
    InMemoryMessagingBackend,
    MessagingBackendFactory,
    link_synchronously,
)
from melange.compat._caches import (
    AsyncDeduplicationCache,
    AsyncNullCache,
    AsyncRedisCache,
    DeduplicationCache,
    NullCache,
    RedisCache,
    get_async_redis_cache,
    get_redis_cache,
)
from melange.compat._consumers import (
    AsyncConsumer,
    AsyncSingleDispatchConsumer,
    Consumer,
    SingleDispatchConsumer,
    async_consumer,
    consumer,
)
from melange.compat._dispatchers import (
    AsyncMessageDispatcher,
    AsyncSimpleMessageDispatcher,
    MessageDispatcher,
    SimpleMessageDispatcher,
)
from melange.compat._models import Message, MessageDto, QueueWrapper, TopicWrapper
from melange.compat._publishers import AsyncQueuePublisher, QueuePublisher, TopicPublisher
from melange.compat._serializers import (
    JsonSerializer,
    PickleSerializer,
    Serializer,
    SerializerRegistry,
    sort,
)
from melange.exceptions import SerializationError

if TYPE_CHECKING:
    from melange.compat._sqs import (
        AsyncBaseSQSBackend,
        AsyncLocalSQSBackend,
        AWSBackend,
        LocalSQSBackend,
    )

__all__ = [
    "AWSBackend",
    "AsyncBaseSQSBackend",
    "AsyncConsumer",
    "AsyncDeduplicationCache",
    "AsyncLocalSQSBackend",
    "AsyncMessageDispatcher",
    "AsyncNullCache",
    "AsyncQueuePublisher",
    "AsyncRedisCache",
    "AsyncSimpleMessageDispatcher",
    "AsyncSingleDispatchConsumer",
    "BackendManager",
    "Consumer",
    "DeduplicationCache",
    "InMemoryMessagingBackend",
    "JsonSerializer",
    "LocalSQSBackend",
    "Message",
    "MessageDispatcher",
    "MessageDto",
    "MessagingBackend",
    "MessagingBackendFactory",
    "NullCache",
    "PickleSerializer",
    "QueuePublisher",
    "QueueWrapper",
    "RedisCache",
    "SerializationError",
    "Serializer",
    "SerializerRegistry",
    "SimpleMessageDispatcher",
    "SingleDispatchConsumer",
    "TopicPublisher",
    "TopicWrapper",
    "async_consumer",
    "consumer",
    "get_async_redis_cache",
    "get_redis_cache",
    "link_synchronously",
    "sort",
]

# The SNS/SQS backends load boto3: on first use only.
_LAZY = dict.fromkeys(
    ("AWSBackend", "AsyncBaseSQSBackend", "AsyncLocalSQSBackend", "LocalSQSBackend"),
    "melange.compat._sqs",
)

__getattr__, __dir__ = lazy_names(__name__, globals(), _LAZY, extra=("boto3", "sqs"))
