"""melange: typed domain events between Python services, over any broker."""

from melange.consumers import Consumer, listener
from melange.dispatcher import MessageDispatcher, SimpleMessageDispatcher
from melange.exceptions import MelangeError
from melange.middleware import Middleware
from melange.models import Message, QueueWrapper, TopicWrapper
from melange.policies import AckPolicy, RetryPolicy
from melange.publishers import MessagePublisher, QueuePublisher, TopicPublisher
from melange.serializers import SerializerRegistry

__all__ = [
    "AckPolicy",
    "Consumer",
    "MelangeError",
    "Message",
    "MessageDispatcher",
    "MessagePublisher",
    "Middleware",
    "QueuePublisher",
    "QueueWrapper",
    "RetryPolicy",
    "SerializerRegistry",
    "SimpleMessageDispatcher",
    "TopicPublisher",
    "TopicWrapper",
    "listener",
]
