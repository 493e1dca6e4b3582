"""The SQS queue the EventBridge rule fills with CloudTrail's security-group records: receive,
then delete what was handled. Synchronous (boto3): the operator calls it from a thread of its own
(:mod:`server_hardening.eventsources`), never from the event loop.

What it costs: one ``ReceiveMessage`` per long poll (up to :data:`LONG_POLL_SECONDS`, SQS's
maximum, so an idle queue costs 3 calls a minute), ``ReceiveMessage`` with no wait while a burst
drains (10 messages each), and one ``DeleteMessageBatch`` per batch handled (authorised by
``sqs:DeleteMessage``). Errors are translated once, here: throttling, 5xx and dropped connections
are transient; a refused permission, a missing queue or no credentials permanent, naming the IAM
action and ``deploy/aws/events/``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from server_hardening.targets.aws.errors import AUTH_CODES, classify
from server_hardening.targets.base import (
    ApiCallRecorder,
    PermanentTargetError,
    TargetError,
    TransientTargetError,
    ignore_call,
)

LONG_POLL_SECONDS = 20  # ReceiveMessage's WaitTimeSeconds maximum
BATCH = 10  # ReceiveMessage's and DeleteMessageBatch's maximum
QUEUE_MISSING_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "InvalidAddress"}
)


@dataclass(frozen=True)
class QueueMessage:
    handle: str  # the receipt handle DeleteMessage takes
    body: str


def queue_endpoint(queue_url: str) -> str:
    """The endpoint a queue URL names (scheme and host): the regional one, a VPC endpoint's or a
    test double's, as the URL says."""
    parts = urllib.parse.urlsplit(queue_url)
    return f"{parts.scheme}://{parts.netloc}"


class SqsQueue:
    """One queue, read with long polls; messages deleted once handled."""

    def __init__(
        self,
        queue_url: str,
        region: str,
        *,
        client: Any = None,
        record_call: ApiCallRecorder = ignore_call,
    ) -> None:
        self.queue_url = queue_url
        self.record_call = record_call
        # The poll outlasts the long-poll wait: botocore's read timeout is the wait plus slack.
        self.client = client or boto3.session.Session().client(
            "sqs",
            region_name=region,
            endpoint_url=queue_endpoint(queue_url),
            config=Config(
                retries={"mode": "standard", "total_max_attempts": 1},
                connect_timeout=5,
                read_timeout=LONG_POLL_SECONDS + 10,
                user_agent_extra="server-hardening",
            ),
        )

    def receive(self, wait_seconds: float) -> list[QueueMessage]:
        """Up to :data:`BATCH` messages, waiting up to ``wait_seconds`` for the first."""
        answer = self._call(
            "ReceiveMessage",
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=BATCH,
            WaitTimeSeconds=max(0, min(round(wait_seconds), LONG_POLL_SECONDS)),
        )
        return [
            QueueMessage(handle=str(m["ReceiptHandle"]), body=str(m.get("Body") or ""))
            for m in answer.get("Messages") or []
        ]

    def delete(self, messages: Sequence[QueueMessage]) -> None:
        """Delete handled messages (a message not deleted comes back after its visibility
        timeout, which is harmless: events are hints)."""
        for start in range(0, len(messages), BATCH):
            chunk = messages[start : start + BATCH]
            self._call(
                "DeleteMessageBatch",
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m.handle} for i, m in enumerate(chunk)],
            )

    def _call(self, operation: str, **kwargs: Any) -> Any:
        method = getattr(self.client, _snake(operation))
        try:
            answer = method(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            verdict = classify(exc)
            self.record_call(operation, verdict.outcome)
            raise _translate(exc, operation, self.queue_url, retry=verdict.retry) from exc
        self.record_call(operation, "ok")
        return answer


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")


def _translate(exc: Exception, operation: str, queue_url: str, *, retry: bool) -> TargetError:
    if retry:
        return TransientTargetError(
            f"sqs:{operation} on {queue_url}: {exc}", operation=operation, resource=queue_url
        )
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in AUTH_CODES:
            action = "DeleteMessage" if operation == "DeleteMessageBatch" else operation
            return PermanentTargetError(
                f"sqs:{operation} on {queue_url} was refused ({code}): the operator's AWS identity "
                f"lacks sqs:{action} on the queue, or the queue's KMS key refuses it; see "
                "deploy/aws/events/",
                operation=operation,
                resource=queue_url,
            )
        if code in QUEUE_MISSING_CODES:
            return PermanentTargetError(
                f"sqs:{operation}: the queue {queue_url} (spec.aws.events.queueUrl) does not exist",
                operation=operation,
                resource=queue_url,
            )
    return PermanentTargetError(
        f"sqs:{operation} on {queue_url}: {exc}", operation=operation, resource=queue_url
    )
