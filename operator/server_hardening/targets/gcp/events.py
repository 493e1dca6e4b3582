"""The Pub/Sub subscription a log sink fills with the Admin Activity audit entries of firewall
and firewall-policy calls: pull, then acknowledge what was handled. Synchronous pull
(google-cloud-pubsub's ``SubscriberClient.pull``): the operator calls it from a thread of its
own (:mod:`server_hardening.eventsources`), never from the event loop.

What it costs: one ``Pull`` per wait (up to :data:`PULL_WAIT_SECONDS`; the server answers as
soon as a message is there), and one ``Acknowledge`` per batch handled. With
``PUBSUB_EMULATOR_HOST`` set the client talks to the emulator (the client library's own switch).
Errors are translated once, here: unavailable, deadline and throttling are transient; a refused
permission or a missing subscription permanent, naming ``roles/pubsub.subscriber`` and
``deploy/gcp/events/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as gexc

from server_hardening.targets.base import (
    ApiCallRecorder,
    PermanentTargetError,
    TargetError,
    TransientTargetError,
    ignore_call,
)

PULL_WAIT_SECONDS = 20.0
BATCH = 100
_TRANSIENT = (
    gexc.ServiceUnavailable,
    gexc.DeadlineExceeded,
    gexc.TooManyRequests,
    gexc.ResourceExhausted,
    gexc.InternalServerError,
    gexc.Aborted,
    gexc.Unknown,
    gexc.RetryError,
)


@dataclass(frozen=True)
class SubscriptionMessage:
    handle: str  # the ack ID Acknowledge takes
    body: bytes


class PubSubSubscription:
    """One subscription, pulled synchronously; messages acknowledged once handled."""

    def __init__(
        self, subscription: str, *, client: Any = None, record_call: ApiCallRecorder = ignore_call
    ) -> None:
        self.subscription = subscription
        self.record_call = record_call
        if client is None:
            from google.cloud import pubsub_v1  # type: ignore[attr-defined]

            client = pubsub_v1.SubscriberClient()
        self.client = client

    def receive(self, wait_seconds: float) -> list[SubscriptionMessage]:
        """Up to :data:`BATCH` messages; an empty list when none came within the wait."""
        try:
            answer = self._call(
                "Pull",
                request={"subscription": self.subscription, "max_messages": BATCH},
                timeout=max(1.0, min(wait_seconds, PULL_WAIT_SECONDS)),
            )
        except TransientTargetError as exc:
            if isinstance(exc.__cause__, gexc.DeadlineExceeded):
                return []  # nothing came within the wait: not an error
            raise
        return [
            SubscriptionMessage(handle=m.ack_id, body=bytes(m.message.data))
            for m in answer.received_messages
        ]

    def delete(self, messages: Sequence[SubscriptionMessage]) -> None:
        if messages:
            self._call(
                "Acknowledge",
                request={
                    "subscription": self.subscription,
                    "ack_ids": [m.handle for m in messages],
                },
            )

    def _call(self, operation: str, **kwargs: Any) -> Any:
        method = getattr(self.client, operation.lower())
        try:
            answer = method(**kwargs)
        except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
            transient = isinstance(exc, _TRANSIENT)
            if isinstance(exc, gexc.DeadlineExceeded) and operation == "Pull":
                self.record_call(operation, "ok")
            else:
                self.record_call(operation, "transient_error" if transient else "error")
            raise _translate(exc, operation, self.subscription, transient=transient) from exc
        except Exception as exc:  # credentials (google.auth), transport: the message says which
            self.record_call(operation, "error")
            raise PermanentTargetError(
                f"pubsub {operation} on {self.subscription}: {type(exc).__name__}: {exc}",
                operation=operation,
                resource=self.subscription,
            ) from exc
        self.record_call(operation, "ok")
        return answer


def _translate(
    exc: Exception, operation: str, subscription: str, *, transient: bool
) -> TargetError:
    if transient:
        return TransientTargetError(
            f"pubsub {operation} on {subscription}: {exc}",
            operation=operation,
            resource=subscription,
        )
    if isinstance(exc, gexc.PermissionDenied | gexc.Unauthenticated):
        return PermanentTargetError(
            f"pubsub {operation} on {subscription} was refused: the operator's Google identity "
            "lacks roles/pubsub.subscriber on the subscription (pubsub.subscriptions.consume); "
            f"see deploy/gcp/events/ ({exc})",
            operation=operation,
            resource=subscription,
        )
    if isinstance(exc, gexc.NotFound):
        return PermanentTargetError(
            f"pubsub {operation}: the subscription {subscription} (spec.gcp.events.subscription) "
            "does not exist",
            operation=operation,
            resource=subscription,
        )
    return PermanentTargetError(
        f"pubsub {operation} on {subscription}: {exc}", operation=operation, resource=subscription
    )
