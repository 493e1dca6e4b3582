"""An exception is checked at the instant it expires (not at the next tick of a 10-minute
timer), and the recheck annotation's request checks every target in full and says so in an
Event. The service and its scheduler over a Kubernetes-like target; no kopf, no API server."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from builders import make_spec
from server_hardening import metrics, service
from server_hardening.drift import ObservedItem
from server_hardening.service import EXPIRY_SLACK, OperatorState
from server_hardening.targets.base import Observation
from unit.service.test_idle_operator import NAME, NS, Factory, Policies, Resources

KEY = (NS, NAME)


@dataclass
class WithAnUnmanagedPolicy(Policies):
    """A target holding one policy this resource does not own, ``extra``."""

    def observe(self) -> Observation[Any]:
        self.observed += 1
        return Observation((ObservedItem("extra", "x", {"k": "extra"}, False, "extra"),))


class RecordingResources(Resources):
    """Also records the plain Events the service posts (the recheck's)."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.posted: list[tuple[str, str]] = []

    def post_event(self, body: Any, type_: str, reason: str, message: str) -> str:
        self.posted.append((reason, message))
        return reason


def make_state(target: Policies, spec: dict[str, Any]) -> OperatorState:
    body = {
        "metadata": {"namespace": NS, "name": NAME, "uid": "u-1", "generation": 1},
        "spec": spec,
    }
    return OperatorState(factory=Factory(target), resources=RecordingResources(body))


def codes(state: OperatorState) -> Sequence[str]:
    status = state.resources.body.get("status") or {}  # type: ignore[attr-defined]
    return [f["code"] for t in status.get("targets") or [] for f in t.get("findings") or []]


def test_an_exception_is_checked_at_its_expiry_not_at_the_next_tick() -> None:
    expires = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=3)
    spec = make_spec().model_dump(by_alias=True, mode="json")
    spec["driftCheckInterval"] = "10m"
    spec["exceptions"] = [
        {
            "target": "kubernetes",
            "name": "extra",
            "reason": "break-glass",
            "expires": expires.isoformat(),
        }
    ]
    target = WithAnUnmanagedPolicy({})
    state = make_state(target, spec)
    instant = expires.timestamp()

    async def scenario() -> None:
        scheduler = asyncio.create_task(service.run_drift_checks(state))
        try:
            service.register(state, NS, NAME, "u-1", spec, 1)
            await service.request_reconcile(state, NS, NAME)
            assert "DeclaredException" in codes(state)
            # The next check is the expiry's, not the interval's (5 to 15 minutes away).
            assert state.next_check[KEY] == instant + EXPIRY_SLACK
            timed = metrics.DRIFT_CHECKS.labels(how="full")._value.get()
            deadline = time.monotonic() + 60
            while "ExceptionExpired" not in codes(state):
                assert time.monotonic() < deadline, "the expiry was not checked"
                await asyncio.sleep(0.05)
            # Found by the scheduler's check at the expiry, after the instant.
            assert metrics.DRIFT_CHECKS.labels(how="full")._value.get() == timed + 1
            assert time.time() >= instant
            checked = dt.datetime.fromisoformat(
                state.resources.body["status"]["lastDriftCheckTime"].replace("Z", "+00:00")  # type: ignore[attr-defined]
            )
            assert checked >= expires
            # Then back to the interval: nothing else expires.
            assert state.next_check[KEY] - time.time() > 4 * 60
        finally:
            scheduler.cancel()

    asyncio.run(scenario())


def test_the_recheck_checks_every_target_in_full_and_says_so() -> None:
    target = Policies({"a": "1"}, {"a": "1"})
    spec = make_spec().model_dump(by_alias=True, mode="json")
    state = make_state(target, spec)
    resources: RecordingResources = state.resources  # type: ignore[assignment]
    service.register(state, NS, NAME, "u-1", spec, 1)
    asyncio.run(service.request_reconcile(state, NS, NAME))
    asyncio.run(service.request_reconcile(state, NS, NAME, timed=True))
    observed = target.observed  # the timed check was skipped as unchanged: nothing to compare
    assert observed == 1

    asyncio.run(service.recheck(state, NS, NAME, "2026-12-05T11:00:00Z"))

    assert target.observed == observed + 1
    assert resources.posted == [
        (
            "Rechecked",
            "checked every target in full on request "
            "(hardening.circleci.com/recheck=2026-12-05T11:00:00Z): phase Enforced, drift 0",
        )
    ]
