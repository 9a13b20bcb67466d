"""boto3/botocore errors turned into melange's: the one place the SNS/SQS backend does it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

from melange.exceptions import (
    BackendConnectionError,
    BackendError,
    ConfigurationError,
    MelangeError,
    MissingExtraError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
)

try:
    import botocore.exceptions
except ImportError as e:  # pragma: no cover - only without the extra
    raise MissingExtraError("boto3", "sqs") from e

__all__ = [
    "INVALID_RECEIPT_CODES",
    "MISSING_QUEUE_CODES",
    "MISSING_TOPIC_CODES",
    "NOT_IN_FLIGHT_CODES",
    "receipt_gone",
    "translate",
    "translated",
]

#: Error codes SQS answers with for a queue that does not exist (query and JSON protocols).
MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
#: Error codes SQS answers ChangeMessageVisibility with when the message is visible already.
NOT_IN_FLIGHT_CODES = frozenset({"AWS.SimpleQueueService.MessageNotInflight", "MessageNotInflight"})
#: Error codes SQS answers with for a receipt handle it does not (or no longer) know.
INVALID_RECEIPT_CODES = frozenset({"ReceiptHandleIsInvalid"})
#: Error codes SNS answers with for a topic that does not exist.
MISSING_TOPIC_CODES = frozenset({"NotFound", "NotFoundException"})

_CONNECTION_ERRORS = (
    botocore.exceptions.ConnectionError,  # endpoint refused, closed, proxy, connect timeout
    botocore.exceptions.HTTPClientError,  # read timeout and other transport failures
)
_CONFIGURATION_ERRORS = (
    botocore.exceptions.NoRegionError,
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.ProfileNotFound,
)


def receipt_gone(code: str, text: str) -> bool:
    """Return whether SQS refused a receipt because its message is no longer held by it.

    That is a message deleted, visible again or received by someone else. AWS
    says ``InvalidParameterValue`` (naming the ``ReceiptHandle`` parameter)
    for a deleted one, emulators ``ReceiptHandleIsInvalid``.
    """
    if code in NOT_IN_FLIGHT_CODES or code in INVALID_RECEIPT_CODES:
        return True
    return code == "InvalidParameterValue" and "parameter ReceiptHandle" in text


def translate(error: Exception, action: str, *, publishing: bool = False) -> MelangeError:
    """Return the melange error for a boto3/botocore error raised while doing ``action``.

    A missing queue or topic keeps its own type; a refused publish is a
    ``PublishError``; anything else the broker says is a ``BackendError``
    carrying the AWS error code.
    """
    if isinstance(error, botocore.exceptions.ClientError):
        details = error.response.get("Error", {})
        code = str(details.get("Code", "Unknown"))
        text = f"{action}: {code}: {details.get('Message', '')}".rstrip(": ")
        if code in MISSING_QUEUE_CODES:
            return QueueNotFoundError(text)
        if code in MISSING_TOPIC_CODES:
            return TopicNotFoundError(text)
        return PublishError(text) if publishing else BackendError(text)
    if isinstance(error, _CONNECTION_ERRORS):
        return BackendConnectionError(f"{action}: {error}")
    if isinstance(error, _CONFIGURATION_ERRORS):
        return ConfigurationError(f"{action}: {error}")
    return PublishError(f"{action}: {error}") if publishing else BackendError(f"{action}: {error}")


@contextmanager
def translated(
    action: str,
    *,
    publishing: bool = False,
    tolerate: Collection[str] | Callable[[str, str], bool] = (),
) -> Iterator[None]:
    """Run a block of boto3 calls, re-raising their errors as melange's (``raise … from e``).

    An AWS error whose code is in ``tolerate`` (or for which ``tolerate(code,
    message)`` is true) means the work is already done: the block just ends.

    Raises:
        QueueNotFoundError, TopicNotFoundError, BackendConnectionError,
        ConfigurationError, PublishError, BackendError: see ``translate``.
    """
    try:
        yield
    except botocore.exceptions.ClientError as e:
        details = e.response.get("Error", {})
        code, text = str(details.get("Code", "")), str(details.get("Message", ""))
        if not (tolerate(code, text) if callable(tolerate) else code in tolerate):
            raise translate(e, action, publishing=publishing) from e
    except botocore.exceptions.BotoCoreError as e:
        raise translate(e, action, publishing=publishing) from e
