"""Melange 7's factory tests, on moto's SNS/SQS server."""

from __future__ import annotations

import pytest

from melange.compat import LocalSQSBackend, MessagingBackendFactory
from tests.compat.conftest import unique

pytestmark = pytest.mark.sqs


def test_create_topic(backend: LocalSQSBackend) -> None:
    topic = MessagingBackendFactory(backend=backend).init_topic(unique("mytopic"))
    assert topic.unwrapped_obj.startswith("arn:aws:sns:")


def test_create_and_subscribe_queue_with_a_topic(backend: LocalSQSBackend) -> None:
    topics = [unique("mytopic1"), unique("mytopic2")]
    queue = MessagingBackendFactory(backend=backend).init_queue(
        unique("myqueue"), topics, unique("mydlq")
    )
    assert queue.unwrapped_obj.startswith("http")
    arns = {t["TopicArn"] for t in backend.sns_client.list_topics()["Topics"]}
    subscribed = {s["TopicArn"] for s in backend.sns_client.list_subscriptions()["Subscriptions"]}
    assert {arn for arn in arns if arn.rsplit(":", 1)[1] in topics} <= subscribed
    assert "RedrivePolicy" in backend.get_queue_attributes(queue)
