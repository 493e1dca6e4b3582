"""The operator at rest: no status write and no Event when nothing changed, a drift episode's
Events once and a recurrence counted, checks spread over the interval, unchanged Kubernetes-only
checks skipped from the watch caches, readiness once caught up. No kopf, no API server."""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from builders import make_spec
from server_hardening import metrics, service
from server_hardening.compiler import CompiledIntent
from server_hardening.drift import Claimer, DesiredItem, ObservedItem, Plan, UnmanagedJudge
from server_hardening.model import ResourceRef
from server_hardening.service import OperatorState, Registration, next_slot
from server_hardening.targets.base import ApplyResult, Observation, Target
from server_hardening.verification import CheckResult

NS, NAME = "circleci-server", "circleci"


@dataclass
class Policies:
    """A Kubernetes-like target: wanted keys, and what is held (key -> fingerprint)."""

    wanted: dict[str, str]
    held: dict[str, str] = field(default_factory=dict)
    observed: int = 0
    name: str = "kubernetes"

    def desired(self) -> Sequence[DesiredItem[Any]]:
        return [DesiredItem(k, v, {"k": k}) for k, v in self.wanted.items()]

    def observe(self) -> Observation[Any]:
        self.observed += 1
        return Observation(
            tuple(ObservedItem(k, fp, {"k": k}, True, k) for k, fp in self.held.items())
        )

    # Its own (trivial) policy: nothing unmanaged matters, nothing is claimed.
    remove_unmanaged = False

    @property
    def policy(self) -> Policies:
        return self

    def judge_unmanaged(self, observed: Sequence[ObservedItem[Any]]) -> UnmanagedJudge[Any]:
        return lambda item: None

    def judge_foreign(self) -> UnmanagedJudge[Any]:
        return lambda item: None

    def claimer(self) -> Claimer[Any]:
        return lambda item, desired: None

    def apply(self, plan: Plan[Any]) -> ApplyResult:
        for d in plan.create:
            self.held[d.key] = d.fingerprint
        for u in plan.update:
            self.held[u.desired.key] = u.desired.fingerprint
        return ApplyResult(created=len(plan.create), updated=len(plan.update))

    def release(self, observed: Observation[Any], *, delete: bool) -> ApplyResult:
        return ApplyResult()


@dataclass
class Factory:
    target: Policies

    def build(
        self, intent: CompiledIntent, ref: ResourceRef, remembered: Any = ()
    ) -> list[tuple[str, Callable[[], Target[Any]]]]:
        return [("kubernetes", lambda: self.target)]


@dataclass
class Resources:
    """The resource's API: one body, status patches and events recorded."""

    body: dict[str, Any]
    patches: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[str, int]] = field(default_factory=list)  # (reason, count)
    reports: int = 0  # OpenReports writes: they follow the status writes

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.body

    def publish_report(self, report: Any, owner: Any) -> bool:
        self.reports += 1
        return True

    def patch_status(self, namespace: str, name: str, status: Any) -> None:
        self.patches.append(dict(status))
        self.body["status"] = _merged(status)

    def post_event(self, body: Any, type_: str, reason: str, message: str) -> str:
        raise AssertionError("events go through post_or_count_event")

    def post_or_count_event(
        self,
        body: Any,
        type_: str,
        reason: str,
        message: str,
        *,
        repeat_of: tuple[str, int] | None = None,
    ) -> tuple[str, int]:
        name, count = repeat_of or (f"{reason}-{len(self.events)}", 0)
        self.events.append((reason, count + 1))
        return name, count + 1


def _merged(value: Any) -> Any:
    """As the API server stores a merge patch: ``null`` removes the field."""
    if isinstance(value, dict):
        return {k: _merged(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_merged(v) for v in value]
    return value


def make_state(target: Policies, spec: dict[str, Any] | None = None) -> OperatorState:
    body = {
        "metadata": {"namespace": NS, "name": NAME, "uid": "u-1", "generation": 1},
        "spec": spec or make_spec().model_dump(by_alias=True, mode="json"),
    }
    return OperatorState(factory=Factory(target), resources=Resources(body))


def _registered(count: int, now: float) -> OperatorState:
    """``count`` Kubernetes-only resources checked every 60 s, registered at ``now``."""
    state = make_state(Policies({}))
    state.clock = lambda: now
    spec = make_spec().model_dump(by_alias=True, mode="json")
    spec["driftCheckInterval"] = "60s"
    for i in range(count):
        service.register(state, f"ns-{i}", NAME, f"uid-{i:04d}", spec, 1)
    return state


def resources(state: OperatorState) -> Resources:
    assert isinstance(state.resources, Resources)
    return state.resources


def test_a_check_that_changes_nothing_writes_no_status_and_posts_no_event() -> None:
    target = Policies({"a": "1", "b": "1"})
    state = make_state(target)
    service.reconcile_resource(state, NS, NAME)
    assert len(resources(state).patches) == 1
    assert [r for r, _ in resources(state).events] == ["Applied"]

    for _ in range(3):
        service.reconcile_resource(state, NS, NAME)
    assert target.observed == 4  # checked every time
    # A restarted operator knows nothing of what it posted: the status it reads back (nulls
    # dropped, as stored) still compares equal.
    restarted = OperatorState(factory=state.factory, resources=state.resources)
    service.reconcile_resource(restarted, NS, NAME)
    assert len(resources(state).patches) == 1  # written once
    assert resources(state).reports == 1  # the OpenReports Report follows the status
    assert [r for r, _ in resources(state).events] == ["Applied"]


def test_a_drift_episode_posts_once_and_a_recurrence_counts_on_the_same_event() -> None:
    target = Policies({"a": "1"})
    state = make_state(target)
    service.reconcile_resource(state, NS, NAME)  # first convergence: Applied
    assert len(resources(state).events) == 1

    target.held["a"] = "edited"  # someone edits the policy: drift, repaired
    service.reconcile_resource(state, NS, NAME)
    assert [r for r, _ in resources(state).events][1:] == ["DriftDetected", "Applied"]
    service.reconcile_resource(state, NS, NAME)  # quiet again
    assert len(resources(state).events) == 3

    target.held["a"] = "edited"  # the same drift again: counted on the events posted before
    service.reconcile_resource(state, NS, NAME)
    assert resources(state).events[3:] == [("DriftDetected", 2), ("Applied", 2)]


def test_checks_of_many_resources_are_spread_over_the_interval_and_never_bunch() -> None:
    interval = 60.0
    now = 1_000_000.0
    state = _registered(1000, now)
    due = sorted(state.next_check.values())
    assert len(due) == 1000
    assert all(now + interval / 2 <= d < now + 1.5 * interval for d in due)
    # ten six-second buckets over the minute: none holds much more than its share
    buckets = [0] * 10
    for d in due:
        buckets[int((d % interval) // 6)] += 1
    assert max(buckets) < 2 * statistics.mean(buckets)


def test_the_next_slot_keeps_the_resources_phase() -> None:
    registration = Registration(interval=60.0, phase=17.0, clouds=False, generation=1)
    for now in (0.0, 12.5, 47.0, 1_000.0):
        slot = next_slot(now, registration)
        assert slot % 60.0 == 17.0
        assert now + 30.0 <= slot < now + 90.0


def test_an_unchanged_kubernetes_only_check_is_skipped_until_the_next_full_check() -> None:
    target = Policies({"a": "1"}, {"a": "1"})
    state = make_state(target)
    service.register(state, NS, NAME, "u-1", resources(state).body["spec"], 1)
    skipped = metrics.DRIFT_CHECKS.labels(how="unchanged")

    def check() -> None:
        asyncio.run(service.request_reconcile(state, NS, NAME, timed=True))

    asyncio.run(service.request_reconcile(state, NS, NAME))  # the first reconcile
    assert target.observed == 1
    before = skipped._value.get()
    check()
    assert target.observed == 1 and skipped._value.get() == before + 1

    state.versions.seen(NS, "networkpolicy", "a", "7")  # the watch saw a change: it runs
    check()
    assert target.observed == 2
    state.versions.seen(NS, "networkpolicy", "a", "7")  # the same version again: no change
    state.versions.seen("elsewhere", "service", "x", "1")  # another namespace: no change
    check()
    assert target.observed == 2

    for _ in range(state.registered[(NS, NAME)].full_check_every):
        check()
    assert target.observed == 3  # one full check: the backstop against a missed event


@pytest.mark.parametrize(
    ("interval", "every"),
    [(60.0, 60), (5.0, 720), (45.0, 80), (1800.0, 2), (3600.0, 1), (7200.0, 1)],
)
def test_every_resource_is_checked_in_full_once_per_period_whatever_its_interval(
    interval: float, every: int
) -> None:
    assert service.full_check_every(interval) == every
    assert every * interval >= service.FULL_CHECK_PERIOD or every == 1


def test_a_declared_exception_expiring_makes_the_next_check_run_in_full() -> None:
    """An expiry changes the verdict on what the namespace holds though nothing in it changed:
    the check right after it compares, not only the next full check."""
    now = 1_800_000_000.0
    target = Policies({"a": "1"}, {"a": "1"})
    spec = make_spec().model_dump(by_alias=True, mode="json")
    spec["exceptions"] = [
        {"target": "kubernetes", "name": "allow-prometheus-*", "reason": "scrapes",
         "expires": dt.datetime.fromtimestamp(now + 90, dt.UTC).isoformat()},
    ]  # fmt: skip
    state = make_state(target, spec)
    state.clock = lambda: now
    service.register(state, NS, NAME, "u-1", spec, 1)

    def check() -> None:
        asyncio.run(service.request_reconcile(state, NS, NAME, timed=True))

    asyncio.run(service.request_reconcile(state, NS, NAME))
    check()
    assert target.observed == 1  # before the expiry: skipped
    now += 120
    check()
    assert target.observed == 2  # after it: compared
    check()
    assert target.observed == 2  # and skipped again once that is judged


def test_a_relisting_that_lacks_an_object_makes_the_next_check_run_in_full() -> None:
    """A deletion while the watch was down (an API-server restart) is not reported by the
    listing the watch restarts from: the object is simply absent. The listing replaces what was
    known, so the absence is a change of the namespace."""
    target = Policies({"a": "1"}, {"a": "1"})
    state = make_state(target)
    service.register(state, NS, NAME, "u-1", resources(state).body["spec"], 1)
    listing = {NS: {"a": "5", "b": "6"}}
    state.versions.replace("networkpolicy", None, listing, {NS})
    asyncio.run(service.request_reconcile(state, NS, NAME))
    asyncio.run(service.request_reconcile(state, NS, NAME, timed=True))
    assert target.observed == 1  # unchanged: skipped

    # The watch lists again and finds the same: nothing to compare.
    assert state.versions.replace("networkpolicy", None, {NS: {"a": "5", "b": "6"}}, {NS}) == set()
    asyncio.run(service.request_reconcile(state, NS, NAME, timed=True))
    assert target.observed == 1

    del target.held["a"]  # deleted while the watch was down: no DELETED event
    assert state.versions.replace("networkpolicy", None, {NS: {"b": "6"}}, {NS}) == {NS}
    asyncio.run(service.request_reconcile(state, NS, NAME, timed=True))
    assert target.observed == 2
    assert target.held == {"a": "1"}  # repaired at the first check after the listing


def test_nothing_is_skipped_until_the_first_listings_are_in() -> None:
    """Before a watch's first listing, what the versions hold is not all there is."""
    target = Policies({"a": "1"}, {"a": "1"})
    state = make_state(target)
    state.unlisted = {("networkpolicy", None)}
    service.register(state, NS, NAME, "u-1", resources(state).body["spec"], 1)
    asyncio.run(service.request_reconcile(state, NS, NAME))
    asyncio.run(service.request_reconcile(state, NS, NAME, timed=True))
    assert target.observed == 2
    state.unlisted.clear()
    asyncio.run(service.request_reconcile(state, NS, NAME, timed=True))
    asyncio.run(service.request_reconcile(state, NS, NAME, timed=True))
    assert target.observed == 3  # the first check after the listing compares, the next skips


def test_resources_with_cloud_targets_are_checked_every_time() -> None:
    target = Policies({"a": "1"}, {"a": "1"})
    tags = {"kubernetesNodes": "k8s", "nomadClients": "nomad", "externalVMs": "vm"}
    spec = make_spec(
        gcp={"project": "circleci-test-1", "network": "circleci", "targetTags": tags}
    ).model_dump(by_alias=True, mode="json", exclude_none=True)
    state = make_state(target, spec)
    service.register(state, NS, NAME, "u-1", spec, 1)
    for _ in range(3):
        asyncio.run(service.request_reconcile(state, NS, NAME, timed=True))
    assert target.observed == 3


def test_ready_only_once_every_known_resource_was_reconciled() -> None:
    state = make_state(Policies({"a": "1"}))
    assert not state.reconciling  # the watches have not delivered anything yet
    state.awaiting = {(NS, NAME)}
    assert not state.reconciling
    service.reconcile_resource(state, NS, NAME)
    assert state.reconciling


def test_the_scheduler_takes_what_is_due_in_time_order_and_moves_it_to_its_next_slot() -> None:
    now = 1_000_000.0
    state = _registered(50, now)
    first = min(state.next_check.values())
    assert service.due_checks(state, first - 0.001)[0] == []
    later = now + 90.0
    taken, upcoming = service.due_checks(state, later)
    assert sorted(taken) == sorted(state.registered)  # all fell due by then, each once
    assert all(due > later for due in state.next_check.values())
    assert upcoming == min(*state.next_check.values(), later + service.IDLE_WAKE)
    assert service.due_checks(state, later)[0] == []  # taken once, not again


def test_a_rescheduled_or_unregistered_check_does_not_fire_at_its_old_time() -> None:
    now = 1_000_000.0
    state = _registered(2, now)
    moved, gone = sorted(state.registered)
    old = state.next_check[moved]
    state.clock = lambda: old - 1.0  # a reconcile just before its slot: the next is a slot later
    service.schedule_next(state, moved)
    service.unregister(state, *gone)
    assert service.due_checks(state, old + 1.0)[0] == []
    assert service.due_checks(state, state.next_check[moved])[0] == [moved]


def test_full_checks_of_resources_registered_together_are_spread_over_the_cycle() -> None:
    """Resources that converged together do not all run their full check in the same interval:
    each round of timed checks runs about a tenth of them in full."""
    target = Policies({"a": "1"}, {"a": "1"})
    state = make_state(target)
    spec = {**resources(state).body["spec"], "driftCheckInterval": "360s"}
    rounds = service.full_check_every(360.0)
    assert rounds == 10
    keys = [(f"ns-{i}", NAME) for i in range(100)]
    for i, (ns, name) in enumerate(keys):
        service.register(state, ns, name, f"uid-{i:04d}", spec, 1)

    async def round_of(timed: bool) -> int:
        before = target.observed
        for key in keys:
            await service.request_reconcile(state, *key, timed=timed)
        return target.observed - before

    async def cycle() -> list[int]:
        await round_of(timed=False)  # the first reconciles
        return [await round_of(timed=True) for _ in range(rounds)]

    full_per_round = asyncio.run(cycle())
    assert sum(full_per_round) == len(keys)  # each resource once per cycle
    assert min(full_per_round) > 0
    assert max(full_per_round) < 3 * len(keys) / rounds


def test_the_scheduler_wakes_at_most_once_a_tick_and_takes_what_fell_due_meanwhile() -> None:
    now = 1_000_000.0
    state = _registered(1000, now)
    first = min(state.next_check.values())
    _, upcoming = service.due_checks(state, first)
    assert upcoming >= first + service.CHECK_TICK  # not at the next resource's own phase
    later, _ = service.due_checks(state, upcoming)
    fell_due = [k for k, due in state.next_check.items() if due > upcoming + 30.0]
    assert len(later) > 1 and set(later) <= set(fell_due)  # those due in the tick, together


@dataclass
class Examined(Policies):
    """A target whose machines can be read (``ExaminesMachines``): each reading counted."""

    examinations: int = 0

    def observe_machines(self) -> Any:
        self.examinations += 1
        return None

    def effective(self, machines: Any) -> Any:
        return self

    target = "kubernetes"

    def findings(self, checks: Sequence[Any]) -> list[Any]:
        return []

    def evaluate(self, check: Any) -> Any:
        return CheckResult(check, check.expect)


def test_the_namespace_is_examined_again_when_its_policies_change_not_at_every_check() -> None:
    target = Examined({"a": "1"})
    state = make_state(target)
    service.reconcile_resource(state, NS, NAME)
    service.reconcile_resource(state, NS, NAME)
    assert target.examinations == 1  # the second check, moments later, carries the verdicts
    # Someone adds a NetworkPolicy: the watch saw it, so the verdicts must not stand.
    assert state.versions.seen(NS, "networkpolicies", "allow-everything", "7")
    service.reconcile_resource(state, NS, NAME)
    assert target.examinations == 2
    service.reconcile_resource(state, NS, NAME)
    assert target.examinations == 2
