"""One retry policy for every target: bounded attempts, full-jitter backoff, a sleep budget per
pass, every attempt recorded for the calls metric.

Each adapter classifies its own SDK's errors once (:data:`Classifier`): retry (throttling, 5xx,
a dropped connection) or not; the loop here is the same for Kubernetes, AWS and GCP. A call that
runs out of attempts or of the pass's budget raises
:class:`~server_hardening.targets.base.TransientTargetError`; one that is not retried re-raises
the SDK's error for the adapter to translate.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from server_hardening.targets import gate
from server_hardening.targets.base import ApiCallRecorder, TransientTargetError, ignore_call

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Per call at most ``max_attempts``; per pass at most ``budget_seconds`` of sleeping.
    Full jitter: the wait before attempt n+1 is uniform in [0, min(cap, base * 2**n)] seconds."""

    max_attempts: int = 6
    base_seconds: float = 0.25
    cap_seconds: float = 8.0
    budget_seconds: float = 30.0


@dataclass(frozen=True)
class Verdict:
    """What an adapter says of one failed attempt: the outcome label the calls metric records
    (``ok`` for an error that means "already done", ``throttled``, ``transient_error``,
    ``error``), whether to retry, and why (for the give-up message)."""

    outcome: str
    retry: bool = False
    why: str = ""


Classifier = Callable[[Exception], Verdict]


class Retrier:
    """Runs calls under a :class:`RetryPolicy`; :meth:`new_pass` resets the sleep budget."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        record: ApiCallRecorder = ignore_call,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.record = record
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self._slept = 0.0
        # Adapters that send calls from several threads share one budget per pass.
        self._lock = threading.Lock()

    def new_pass(self) -> None:
        with self._lock:
            self._slept = 0.0

    def call(self, operation: str, resource: str, fn: Callable[[], T], classify: Classifier) -> T:
        """Run ``fn`` until it succeeds, is not to be retried, or the policy gives up. Every
        attempt first asks the write gate (a replica that does not lead calls nothing)."""
        attempt = 0
        while True:
            attempt += 1
            gate.WRITES.check(f"{operation} on {resource}")
            try:
                out = fn()
            except Exception as exc:
                verdict = classify(exc)
                self.record(operation, verdict.outcome)
                if not verdict.retry:
                    raise
                self.backoff(operation, resource, attempt, verdict.why or str(exc))
                continue
            self.record(operation, "ok")
            return out

    def backoff(self, operation: str, resource: str, attempt: int, why: str) -> None:
        """Sleep before attempt ``attempt + 1`` of something that failed ``attempt`` times, or
        raise :class:`TransientTargetError` when the attempts or the pass's budget are spent.
        Also for retries an adapter runs itself (a write resent after its operation failed)."""
        policy = self.policy
        if attempt >= policy.max_attempts:
            raise TransientTargetError(
                f"{operation} on {resource}: gave up after {attempt} attempts ({why})",
                operation=operation,
                resource=resource,
            )
        delay = self._rng.uniform(0, min(policy.cap_seconds, policy.base_seconds * 2**attempt))
        with self._lock:
            if self._slept + delay > policy.budget_seconds:
                raise TransientTargetError(
                    f"{operation} on {resource}: retry budget of {policy.budget_seconds:g}s for "
                    f"this pass spent ({why})",
                    operation=operation,
                    resource=resource,
                )
            self._slept += delay
        self._sleep(delay)
