"""SNS topics and SQS queues over boto3: AWS itself or any compatible endpoint.

See docs/backends/sqs.md. Needs the ``sqs`` extra (boto3).
"""

from melange.backends.sqs._backend import AWSBackend, LocalSQSBackend

__all__ = ["AWSBackend", "LocalSQSBackend"]
