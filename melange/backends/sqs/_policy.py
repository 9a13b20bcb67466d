"""The SQS queue policy that lets exactly the subscribed SNS topics send (no I/O here)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["POLICY_SID", "merged_policy", "topics_in_policy"]

#: The ``Sid`` of the one statement melange owns in a queue policy.
POLICY_SID = "melange-topics"


def _statements(policy: str | None) -> list[dict[str, Any]]:
    if not policy:
        return []
    document = json.loads(policy)
    statements = document.get("Statement", []) if isinstance(document, dict) else []
    # A policy with a single statement may hold it as an object, not a list.
    return [statements] if isinstance(statements, dict) else list(statements)


def topics_in_policy(policy: str | None) -> set[str]:
    """Return the topic ARNs melange's statement in a queue policy lets send."""
    for statement in _statements(policy):
        if statement.get("Sid") == POLICY_SID:
            condition = statement.get("Condition", {}).get("ArnEquals", {})
            arns = condition.get("aws:SourceArn", [])
            return {arns} if isinstance(arns, str) else set(arns)
    return set()


def merged_policy(policy: str | None, queue_arn: str, topic_arns: Iterable[str]) -> str | None:
    """Return the queue policy with ``topic_arns`` added to melange's statement.

    Topics allowed before stay allowed and statements written by others are
    kept as they are. Returns ``None`` when the policy already allows every
    topic, so the caller can skip the write.
    """
    allowed = topics_in_policy(policy)
    wanted = allowed | set(topic_arns)
    if wanted == allowed and policy:
        return None
    others = [s for s in _statements(policy) if s.get("Sid") != POLICY_SID]
    statement = {
        "Sid": POLICY_SID,
        "Effect": "Allow",
        "Principal": {"Service": "sns.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {"ArnEquals": {"aws:SourceArn": sorted(wanted)}},
    }
    return json.dumps({"Version": "2012-10-17", "Statement": [*others, statement]})
