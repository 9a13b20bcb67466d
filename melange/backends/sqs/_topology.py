"""SNS topics and SQS queues as melange's topology: names, URLs, ARNs, policies, subscriptions."""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from melange.backends.interfaces import checked_filter_events
from melange.backends.naming import NAME_TAG, folded, may_fold
from melange.backends.sqs import _wire as wire
from melange.backends.sqs._errors import translated
from melange.backends.sqs._policy import merged_policy, topics_in_policy
from melange.exceptions import (
    ConfigurationError,
    QueueNotFoundError,
    TopicNotFoundError,
    UnexpectedOptionError,
)
from melange.models import QueueWrapper, TopicWrapper

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

__all__ = ["MAX_VISIBILITY_SECONDS", "SQSTopology"]

#: Longest visibility timeout SQS takes (12 hours).
MAX_VISIBILITY_SECONDS = 43_200
_MAX_RECEIVE_COUNT = 1_000


class SQSTopology:
    """Topics, queues, dead letters and policies for ``AWSBackend``, over its two clients.

    Every name goes through ``_wire.entity_name``. Queue URLs (by name) and
    ARNs (by URL) are cached; policies are always read fresh, since another
    process may have added topics.
    """

    def __init__(
        self,
        sns: SNSClient,
        sqs: SQSClient,
        *,
        raw_delivery: bool = True,
        manifest_attribute: str = wire.MANIFEST,
    ) -> None:
        self._sns = sns
        self._sqs = sqs
        #: Whether subscriptions deliver the message itself, not the SNS envelope.
        self._raw_delivery = "true" if raw_delivery else "false"
        #: The message attribute a subscription's filter policy reads the manifest from.
        self._manifest_attribute = manifest_attribute
        self._lock = threading.Lock()
        self._queue_urls: dict[str, str] = {}  # melange name -> URL
        self._queue_arns: dict[str, str] = {}  # URL -> ARN
        self._claims: dict[tuple[str, str], str] = {}  # (system, AWS name) -> melange name

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Create or get the SNS topic (FIFO when the name ends in ``.fifo``).

        Raises:
            BackendError: SNS refused.
        """
        name = wire.entity_name(topic_name, topic=True)
        attributes = {"FifoTopic": "true"} if wire.is_fifo(name) else {}
        with translated(f"create SNS topic {name!r}"):
            arn = self._sns.create_topic(Name=name, Attributes=attributes)["TopicArn"]
        self._claim_topic(topic_name, name, arn)
        return TopicWrapper(arn)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        """Return an existing queue (``GetQueueUrl``, then cached); never creates one.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        url = self._queue_urls.get(queue_name)
        if url is None:
            name = wire.entity_name(queue_name)
            with translated(f"get SQS queue {name!r}"):
                url = self._sqs.get_queue_url(QueueName=name)["QueueUrl"]
            self._claim_queue(queue_name, name, url)
            with self._lock:
                self._queue_urls[queue_name] = url
        return QueueWrapper(url)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float | None = None,
        max_receive_count: int,
        dead_letter_retention_seconds: int | None = None,
        filter_events: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create or get the queue, its dead-letter queue, its topic subscriptions and policy.

        ``dead_letter_retention_seconds`` becomes the dead-letter queue's
        ``MessageRetentionPeriod`` (``None``: left as it is). ``filter_events``
        (manifests) becomes each subscription's filter policy: SNS delivers the
        queue only those; ``None`` leaves a subscription's policy as it is.

        Raises:
            ConfigurationError: FIFO and standard mixed, or a value SQS cannot take.
            TopicNotFoundError: a topic to bind does not exist.
            BackendError: SNS or SQS refused.
        """
        if kwargs:
            raise UnexpectedOptionError(f"declare_queue() got unexpected options {sorted(kwargs)}")
        name = wire.entity_name(queue_name)
        topic_arns = [topic.unwrap() for topic in topics_to_bind]
        _check_queue_options(
            name, topic_arns, dead_letter_queue_name, visibility_timeout, max_receive_count
        )
        policy_of_filter = _filter_policy(filter_events, self._manifest_attribute)
        url = self._create_queue(queue_name)
        attributes: dict[Any, str] = {}
        if visibility_timeout is not None:
            attributes["VisibilityTimeout"] = str(math.ceil(visibility_timeout))
        dead_letter = None
        if dead_letter_queue_name is not None:
            dead_letter = QueueWrapper(self._create_queue(dead_letter_queue_name))
            if dead_letter_retention_seconds is not None:
                # Set, not passed to CreateQueue: an existing queue with another
                # value would make CreateQueue fail.
                with translated(f"configure SQS queue {dead_letter_queue_name!r}"):
                    self._sqs.set_queue_attributes(
                        QueueUrl=dead_letter.obj,
                        Attributes={"MessageRetentionPeriod": str(dead_letter_retention_seconds)},
                    )
            redrive = {
                "deadLetterTargetArn": self._arn_and_policy(dead_letter.obj)[0],
                "maxReceiveCount": max_receive_count,
            }
            attributes["RedrivePolicy"] = json.dumps(redrive)
        if topic_arns:
            arn, policy = self._arn_and_policy(url, with_policy=True)
            new_policy = merged_policy(policy, arn, topic_arns)
            if new_policy is not None:
                attributes["Policy"] = new_policy
        if attributes:
            with translated(f"configure SQS queue {name!r}"):
                self._sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        for topic_arn in topic_arns:
            with translated(f"subscribe SQS queue {name!r} to {topic_arn}"):
                subscription = self._sns.subscribe(
                    TopicArn=topic_arn,
                    Protocol="sqs",
                    Endpoint=self._arn_and_policy(url)[0],
                    Attributes={"RawMessageDelivery": self._raw_delivery},
                    ReturnSubscriptionArn=True,
                )
            if policy_of_filter is not None:  # set apart: a declare may change it
                with translated(f"set the filter policy of {name!r} on {topic_arn}"):
                    self._sns.set_subscription_attributes(
                        SubscriptionArn=subscription["SubscriptionArn"],
                        AttributeName="FilterPolicy",
                        AttributeValue=policy_of_filter,
                    )
        return QueueWrapper(url), dead_letter

    def _create_queue(self, queue_name: str) -> str:
        name = wire.entity_name(queue_name)
        attributes: dict[Any, str] = {"FifoQueue": "true"} if wire.is_fifo(name) else {}
        with translated(f"create SQS queue {name!r}"):
            url = self._sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        if attributes:
            # Set, not passed to CreateQueue: that fails on a FIFO queue made without it.
            # melange sends its message id as the deduplication id; other producers may not.
            with translated(f"configure SQS queue {name!r}"):
                self._sqs.set_queue_attributes(
                    QueueUrl=url, Attributes={"ContentBasedDeduplication": "true"}
                )
        self._claim_queue(queue_name, name, url)
        with self._lock:
            self._queue_urls[queue_name] = url
        return url

    # -- names that fold together ------------------------------------------------------

    def _claim_queue(self, original: str, name: str, url: str) -> None:
        """Refuse a queue another melange name already maps to; tag it with ours if untagged."""

        def owner() -> str | None:
            tags = self._sqs.list_queue_tags(QueueUrl=url).get("Tags") or {}
            return tags.get(NAME_TAG)

        def tag() -> None:
            self._sqs.tag_queue(QueueUrl=url, Tags={NAME_TAG: original})

        self._claim("aws_sqs", original, name, owner, tag)

    def _claim_topic(self, original: str, name: str, arn: str) -> None:
        """Refuse a topic another melange name already maps to; tag it with ours if untagged."""

        def owner() -> str | None:
            tags = self._sns.list_tags_for_resource(ResourceArn=arn).get("Tags") or []
            return next((t.get("Value") for t in tags if t.get("Key") == NAME_TAG), None)

        def tag() -> None:
            self._sns.tag_resource(ResourceArn=arn, Tags=[{"Key": NAME_TAG, "Value": original}])

        self._claim("aws_sns", original, name, owner, tag)

    def _claim(
        self,
        system: str,
        original: str,
        name: str,
        owner: Callable[[], str | None],
        tag: Callable[[], None],
    ) -> None:
        if not may_fold(name) or self._claims.get((system, name)) == original:
            return
        what = f"SQS queue {name!r}" if system == "aws_sqs" else f"SNS topic {name!r}"
        with translated(f"read tags of {what}"):
            found = owner()
        if found is None:
            with translated(f"tag {what}"):
                tag()
        elif found != original:
            raise folded(original, name, found, system)
        with self._lock:
            self._claims[(system, name)] = original

    def _arn_and_policy(self, url: str, with_policy: bool = False) -> tuple[str, str | None]:
        """Return the queue's ARN (cached) and, when asked, its current policy (never cached)."""
        arn = self._queue_arns.get(url)
        if arn is not None and not with_policy:
            return arn, None
        names: list[Any] = ["QueueArn", "Policy"] if with_policy else ["QueueArn"]
        with translated(f"read attributes of SQS queue {url}"):
            found = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
        attributes = found.get("Attributes", {})
        arn = attributes["QueueArn"]
        with self._lock:
            self._queue_arns[url] = arn
        return arn, attributes.get("Policy")

    def queue_policy(self, queue: QueueWrapper) -> str | None:
        """Return the queue's access policy JSON as SQS holds it, or ``None``.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        return self._arn_and_policy(queue.unwrap(), with_policy=True)[1]

    def delete_queue(self, queue: QueueWrapper) -> None:
        """Unsubscribe the queue from the topics its policy names, then delete it.

        Deleting a queue that is already gone does nothing.

        Raises:
            BackendError: SNS or SQS refused.
        """
        url = queue.unwrap()
        with contextlib.suppress(QueueNotFoundError):
            arn, policy = self._arn_and_policy(url, with_policy=True)
            for topic_arn in sorted(topics_in_policy(policy)):
                self._unsubscribe(topic_arn, endpoint=arn)
            with translated(f"delete SQS queue {url}"):
                self._sqs.delete_queue(QueueUrl=url)
        with self._lock:
            self._queue_urls = {k: v for k, v in self._queue_urls.items() if v != url}
            self._queue_arns.pop(url, None)

    def delete_topic(self, topic: TopicWrapper) -> None:
        """Unsubscribe every subscriber of the topic, then delete it; a gone topic is fine.

        Raises:
            BackendError: SNS refused.
        """
        arn = topic.unwrap()
        with contextlib.suppress(TopicNotFoundError):
            self._unsubscribe(arn)
            with translated(f"delete SNS topic {arn}"):
                self._sns.delete_topic(TopicArn=arn)

    def _unsubscribe(self, topic_arn: str, endpoint: str | None = None) -> None:
        """Remove the topic's subscriptions (only those to ``endpoint`` when given)."""
        with contextlib.suppress(TopicNotFoundError):
            with translated(f"list subscriptions of {topic_arn}"):
                pages = self._sns.get_paginator("list_subscriptions_by_topic")
                subscriptions = [
                    s
                    for page in pages.paginate(TopicArn=topic_arn)
                    for s in page.get("Subscriptions", [])
                ]
            for subscription in subscriptions:
                if endpoint is None or subscription.get("Endpoint") == endpoint:
                    with translated(f"unsubscribe from {topic_arn}"):
                        self._sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])


_MAX_FILTER_VALUES = 150  # SNS: values in one filter policy, all keys together


def _filter_policy(filter_events: Sequence[str] | None, attribute: str) -> str | None:
    """Return the filter policy JSON that lets only ``filter_events`` through, or ``None``.

    Raises:
        ConfigurationError: not a list of manifests, none, or more than SNS takes.
    """
    manifests = checked_filter_events(filter_events)
    if manifests is None:
        return None
    if len(manifests) > _MAX_FILTER_VALUES:
        raise ConfigurationError(
            f"filter_events takes 1 to {_MAX_FILTER_VALUES} manifests, not {len(manifests)}"
        )
    return json.dumps({attribute: sorted(manifests)})


def _check_queue_options(
    name: str,
    topic_arns: list[str],
    dead_letter_queue_name: str | None,
    visibility_timeout: float | None,
    max_receive_count: int | None,
) -> None:
    """Refuse, before any request, what SQS would refuse with a less helpful message."""
    standard_topics = [arn for arn in topic_arns if not wire.is_fifo(arn)]
    if wire.is_fifo(name) and standard_topics:
        raise ConfigurationError(
            f"FIFO queue {name!r} can only subscribe to FIFO topics, not {standard_topics}"
        )
    if dead_letter_queue_name is not None:
        dead_letter = wire.entity_name(dead_letter_queue_name)
        if wire.is_fifo(dead_letter) != wire.is_fifo(name):
            raise ConfigurationError(
                f"queue {name!r} and its dead-letter queue {dead_letter!r} must both be FIFO "
                "(names ending in .fifo) or both standard"
            )
    if visibility_timeout is not None and not 0 <= visibility_timeout <= MAX_VISIBILITY_SECONDS:
        raise ConfigurationError(
            f"visibility_timeout must be 0 to {MAX_VISIBILITY_SECONDS} s on SQS"
        )
    if max_receive_count is not None and not 1 <= max_receive_count <= _MAX_RECEIVE_COUNT:
        raise ConfigurationError(f"max_receive_count must be 1 to {_MAX_RECEIVE_COUNT} on SQS")
