"""reconcile() over in-memory targets: the pipeline's decisions, without any API."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from builders import OWNER, make_spec
from server_hardening.compiler import CompiledIntent
from server_hardening.drift import Claimer, DesiredItem, ObservedItem, Plan, UnmanagedJudge
from server_hardening.model import FieldError, ResourceRef, ServerHardeningSpec, UnmanagedRules
from server_hardening.reconcile import reconcile, refuse_keeping_the_last
from server_hardening.rules import Finding, FindingCode, Severity
from server_hardening.status import Phase
from server_hardening.targets.base import ApplyResult, Observation, PermanentTargetError, Target

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


@dataclass
class MemoryPolicy:
    """Desired: ``wanted``; an unmanaged item whose key starts with "wide" widens access."""

    name: str
    wanted: dict[str, str]
    remove_unmanaged: bool = False

    def desired(self) -> Sequence[DesiredItem]:
        return [DesiredItem(k, v, {"k": k}, ("ROW-1",)) for k, v in self.wanted.items()]

    def claimer(self) -> Claimer[Any]:
        return lambda item, desired: None

    def judge_foreign(self) -> UnmanagedJudge:
        return lambda item: None

    def judge_unmanaged(self, observed: Sequence[ObservedItem[Any]]) -> UnmanagedJudge:
        return lambda item: (
            Finding(
                Severity.WARNING,
                FindingCode("UnmanagedWidening"),
                f"{item.key} widens",
                target=self.name,
            )
            if item.key.startswith("wide")
            else None
        )


@dataclass
class MemoryTarget:
    """A target whose state is a dict of key -> (fingerprint, owned, owner)."""

    name: str
    wanted: dict[str, str]
    held: dict[str, tuple[str, bool, str]] = field(default_factory=dict)
    fail_observe: Exception | None = None
    applied: list[Plan] = field(default_factory=list)
    still_running: tuple[str, ...] = ()
    remove_unmanaged: bool = False

    @property
    def policy(self) -> MemoryPolicy:
        return MemoryPolicy(self.name, self.wanted, self.remove_unmanaged)

    def observe(self) -> Observation:
        if self.fail_observe:
            raise self.fail_observe
        return Observation(
            tuple(
                ObservedItem(k, fp, {"k": k}, owned, k, owner)
                for k, (fp, owned, owner) in self.held.items()
            )
        )

    def apply(self, plan: Plan) -> ApplyResult:
        self.applied.append(plan)
        for d in plan.create:
            self.held[d.key] = (d.fingerprint, True, "")
        for u in plan.update:
            self.held[u.desired.key] = (u.desired.fingerprint, True, "")
        for o in (*plan.delete, *plan.remove_unmanaged):
            self.held.pop(o.key, None)
        return ApplyResult(
            created=len(plan.create),
            updated=len(plan.update),
            deleted=len(plan.delete),
            removed_unmanaged=len(plan.remove_unmanaged),
            in_progress=list(self.still_running),
        )

    def release(self, observed: Observation, *, delete: bool) -> ApplyResult:
        return ApplyResult()


@dataclass
class Factory:
    targets: list[MemoryTarget]

    def build(
        self, intent: CompiledIntent, ref: ResourceRef, remembered: Any = ()
    ) -> list[tuple[str, Callable[[], Target]]]:
        # As the production factory does: each target's policy follows the spec.
        for target in self.targets:
            target.remove_unmanaged = intent.spec.unmanaged_rules is UnmanagedRules.REMOVE
        return [(t.name, (lambda t=t: t)) for t in self.targets]  # type: ignore[misc]


def run(
    spec: ServerHardeningSpec, *targets: MemoryTarget, previous: dict[str, object] | None = None
):  # type: ignore[no-untyped-def]
    return reconcile(
        OWNER, spec, Factory(list(targets)), generation=2, previous_status=previous, now=lambda: NOW
    )


def test_first_convergence_creates_and_is_not_drift() -> None:
    target = MemoryTarget("kubernetes", {"a": "1", "b": "1"})
    report = run(make_spec(), target)
    assert report.phase == Phase.ENFORCED
    assert report.targets[0].drift.total == 0
    assert [e.reason for e in report.events] == ["Applied"]
    status = report.status()
    assert status["targets"][0]["lastDrift"] is None
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Valid": "True",
        "Ready": "True",
        "InSync": "True",
        "ComponentsResolved": "True",
    }


def test_managed_drift_is_repaired_and_remembered() -> None:
    target = MemoryTarget("kubernetes", {"a": "1", "b": "1"}, {"a": ("0", True, "")})
    previous = {"targets": [{"name": "kubernetes", "managedRules": 2}]}
    report = run(make_spec(), target, previous=previous)
    kube = report.targets[0]
    assert (kube.drift.missing, kube.drift.modified, kube.repaired) == (1, 1, True)
    assert report.phase == Phase.ENFORCED and report.message == "enforced; repaired 2 drift"
    assert [e.reason for e in report.events] == ["DriftDetected", "Applied"]
    last = report.status(previous)["targets"][0]["lastDrift"]
    assert last == {
        "time": "2026-11-29T12:00:00Z",
        "missing": 1,
        "unexpected": 0,
        "modified": 1,
        "unmanagedWidening": 0,
        "repaired": True,
    }


def test_audit_never_applies_and_reports_missing_even_at_first() -> None:
    target = MemoryTarget("kubernetes", {"a": "1"}, {"wide-open": ("x", False, "")})
    report = run(make_spec(mode="Audit", unmanagedRules="Remove"), target)
    assert target.applied == []
    assert report.phase == Phase.DRIFTED and report.reason == "DriftReported"
    assert report.targets[0].drift.as_status() == {
        "missing": 1,
        "unexpected": 0,
        "modified": 0,
        "unmanagedWidening": 1,
    }


def test_unmanaged_widening_is_reported_and_removed_only_when_asked() -> None:
    reported = MemoryTarget(
        "kubernetes", {"a": "1"}, {"a": ("1", True, ""), "wide-open": ("x", False, "")}
    )
    report = run(make_spec(), reported)
    assert report.phase == Phase.DRIFTED and report.reason == "UnmanagedWidening"
    assert "wide-open" in reported.held
    removed = MemoryTarget(
        "kubernetes", {"a": "1"}, {"a": ("1", True, ""), "wide-open": ("x", False, "")}
    )
    report = run(make_spec(unmanagedRules="Remove"), removed)
    assert report.phase == Phase.ENFORCED and "wide-open" not in removed.held
    assert "RemovedUnmanaged" in [e.reason for e in report.events]


def test_persistent_unmanaged_rules_do_not_hide_a_repair() -> None:
    target = MemoryTarget(
        "aws", {"a": "1", "b": "1"}, {"b": ("1", True, ""), "wide": ("x", False, "")}
    )
    previous = {"targets": [{"name": "aws", "managedRules": 2, "drift": {"unmanagedWidening": 1}}]}
    first = run(make_spec(), target, previous=previous)
    status = first.status(previous)
    assert status["targets"][0]["lastDrift"]["missing"] == 1
    assert status["targets"][0]["lastDrift"]["repaired"] is True
    second = run(make_spec(), target, previous=status).status(status)
    assert second["targets"][0]["lastDrift"] == status["targets"][0]["lastDrift"]


def test_another_owner_is_a_conflict_and_nothing_is_written() -> None:
    target = MemoryTarget("kubernetes", {"a": "1"}, {"a": ("1", False, "circleci-server/first")})
    report = run(make_spec(), target)
    assert target.applied == []
    assert report.phase == Phase.CONFLICT
    assert "circleci-server/first" in report.message


def test_one_broken_target_does_not_stop_the_others() -> None:
    broken = MemoryTarget(
        "aws", {"a": "1"}, fail_observe=PermanentTargetError("InvalidGroup.NotFound: sg-1")
    )
    fine = MemoryTarget("kubernetes", {"a": "1"})
    report = run(make_spec(), broken, fine)
    assert report.phase == Phase.ERROR and "InvalidGroup.NotFound: sg-1" in report.message
    assert fine.applied and report.targets[1].last_error == ""
    assert report.snapshot().targets[0].error is True


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    target = MemoryTarget("kubernetes", {"a": "1"}, {"a": ("1", True, "")})
    earlier = {
        "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]
    }
    status = run(make_spec(), target).status(earlier)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    valid = next(c for c in status["conditions"] if c["type"] == "Valid")
    assert valid["lastTransitionTime"] == "2026-11-29T12:00:00Z"


def test_a_refused_spec_keeps_what_the_status_remembers() -> None:
    """The last valid spec, the last reconcile time and the last check time survive a pass that
    refuses a new spec (the conditions loop once overwrote the previous status with a condition)."""
    target = MemoryTarget("kubernetes", {"a": "v1"})
    first = reconcile(OWNER, make_spec(), Factory([target]), generation=1, now=lambda: NOW)
    first.enforced_spec = {"serverVersion": "3"}
    previous = first.status()
    assert previous["lastValidSpec"] == {"generation": 1, "spec": {"serverVersion": "3"}}
    later = NOW + dt.timedelta(minutes=1)
    second = reconcile(OWNER, make_spec(), Factory([target]), generation=2, now=lambda: later,
                       previous_status=previous)  # fmt: skip
    refused = refuse_keeping_the_last(second, 2, [FieldError("spec.x", "bad")], 1)
    status = refused.status(previous)
    assert status["phase"] == "Invalid"
    assert status["lastValidSpec"] == previous["lastValidSpec"]
    assert status["lastReconcileTime"] == previous["lastReconcileTime"]
    valid = next(c for c in status["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False" and "still enforcing the last valid spec" in valid["message"]
    assert refused.events[0].reason == "InvalidSpec"
    assert refused.snapshot().spec_valid is False


def test_writes_still_running_are_progress_not_a_repair_nor_an_error() -> None:
    target = MemoryTarget(
        "gcp",
        {"a": "1", "b": "1"},
        {"a": ("0", True, "")},
        still_running=("firewalls.insert b",),
    )
    previous = {"targets": [{"name": "gcp", "managedRules": 2}]}
    report = run(make_spec(), target, previous=previous)
    gcp = report.targets[0]
    assert report.in_progress and gcp.last_error == "" and not gcp.repaired
    assert report.phase == Phase.ENFORCED
    assert [e.reason for e in report.events] == ["DriftDetected", "Applied", "InProgress"]
    status = report.status(previous)
    assert status["targets"][0]["inProgress"] == ["firewalls.insert b"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["InSync"] == "False"


def test_an_error_no_adapter_translated_is_still_that_targets_status() -> None:
    """A defect that escapes an adapter's error translation does not raise out of the reconcile
    (which left the status empty and the operator never caught up): the target reports it, an
    Event names it, the others are enforced."""
    broken = MemoryTarget("gcp", {"a": "1"}, fail_observe=KeyError("selfLink"))
    fine = MemoryTarget("kubernetes", {"a": "1"})
    report = run(make_spec(), broken, fine)
    assert report.phase == Phase.ERROR and report.reason == "TargetError"
    assert "gcp: KeyError: 'selfLink'" in report.message
    assert ("Warning", "TargetError") in {(e.type, e.reason) for e in report.events}
    assert fine.applied and report.targets[1].last_error == ""
    ready = next(c for c in report.status()["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TargetError")


@dataclass
class MachinesFail(MemoryTarget):
    """A cloud-like target whose machines cannot be read (a defect, not a translated error)."""

    def observe_machines(self) -> Any:
        raise ValueError("interface page without an ID")


def test_machines_that_cannot_be_read_are_a_finding_and_the_rules_are_still_enforced() -> None:
    target = MachinesFail("aws", {"a": "1"})
    report = reconcile(
        OWNER, make_spec(), Factory([target]), generation=2, now=lambda: NOW, examine=True
    )
    aws = report.targets[0]
    assert [f.code for f in aws.findings] == [FindingCode.MACHINES_UNREADABLE]
    assert "ValueError: interface page without an ID" in aws.findings[0].message
    assert aws.rows is None and aws.last_error == ""
    assert target.applied and report.phase == Phase.ENFORCED
