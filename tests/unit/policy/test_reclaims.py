"""Not fighting Terraform: a rule whose marks keep being stripped is adopted or taken back at
most 3 times an hour, then left alone for a day as ManagedElsewhere, its access satisfied. The
clock is passed in; the memory lives in the resource's status."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from builders import OWNER, make_spec
from server_hardening.compiler import CompiledIntent
from server_hardening.drift import Claim, Claimer, DesiredItem, ObservedItem, Plan, UnmanagedJudge
from server_hardening.model import ResourceRef
from server_hardening.policy.reclaims import ReclaimHistory, ReclaimPolicy
from server_hardening.reconcile import Report, reconcile
from server_hardening.rules import FindingCode, Severity
from server_hardening.targets.base import ApplyResult, Observation, Target

T0 = dt.datetime(2026, 12, 5, 9, 0, tzinfo=dt.UTC)
KEY = "nodes|ingress|tcp|443|lb"


def minutes(n: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=n)


# -- the history alone --------------------------------------------------------------------------


def test_three_reclaims_within_the_hour_hand_the_rule_over_for_a_day() -> None:
    history = ReclaimHistory(generation=1)
    for at in (0, 20, 40):
        assert KEY not in history.managed_elsewhere(minutes(at))
        history = history.record([KEY], minutes(at))
    held = history.managed_elsewhere(minutes(41))
    assert list(held) == [KEY] and "3 times within 60 minutes" in held[KEY]
    assert KEY in history.managed_elsewhere(minutes(40 + 24 * 60 - 1))
    assert KEY not in history.managed_elsewhere(minutes(40 + 24 * 60))  # tried again


def test_reclaims_spread_wider_than_the_window_never_hand_it_over() -> None:
    history = ReclaimHistory(generation=1)
    for at in (0, 50, 110, 170, 230):  # every 50-60 minutes: at most 2 within any hour
        history = history.record([KEY], minutes(at))
        assert history.managed_elsewhere(minutes(at + 1)) == {}


def test_the_memory_round_trips_through_status_and_a_new_generation_forgets() -> None:
    history = ReclaimHistory(generation=4)
    for at in (0, 1, 2):
        history = history.record([KEY, "other"] if at == 0 else [KEY], minutes(at))
    stored = history.as_status()
    assert stored is not None
    assert stored["managedElsewhere"] == [{"key": KEY, "since": "2026-12-05T09:02:00Z"}]
    assert stored["rules"] == [{"key": "other", "times": ["2026-12-05T09:00:00Z"]}]
    assert ReclaimHistory.from_status(stored, 4) == history
    assert ReclaimHistory.from_status(stored, 5).managed_elsewhere(minutes(3)) == {}


def test_the_limits_are_a_policy() -> None:
    history = ReclaimHistory(generation=1, policy=ReclaimPolicy(limit=2, window=dt.timedelta(1)))
    history = history.record([KEY], minutes(0)).record([KEY], minutes(600))
    assert KEY in history.managed_elsewhere(minutes(601))


# -- through the pipeline -----------------------------------------------------------------------


@dataclass
class AdoptIdentical:
    """The judgement: one desired rule; an unmarked rule under its key is adopted."""

    remove_unmanaged: bool = False

    def desired(self) -> Sequence[DesiredItem[Any]]:
        return [DesiredItem(KEY, "f", {}, ("K8S-IN-1",))]

    def judge_unmanaged(self, observed: Sequence[ObservedItem[Any]]) -> UnmanagedJudge[Any]:
        return lambda item: None

    def judge_foreign(self) -> UnmanagedJudge[Any]:
        return lambda item: None

    def claimer(self) -> Claimer[Any]:
        return lambda item, desired: Claim.ADOPT


@dataclass
class StrippedRule:
    """One rule, exactly as the guide wants it, whose marks a Terraform run strips before
    every pass: the operator sees it unmarked each time and may adopt it."""

    name: str = "aws"
    adopted: list[str] = field(default_factory=list)  # the rule IDs each pass adopted
    policy: AdoptIdentical = field(default_factory=AdoptIdentical)

    def observe(self) -> Observation[Any]:
        return Observation((ObservedItem(KEY, "f", {}, False, "sgr-1"),))

    def apply(self, plan: Plan[Any]) -> ApplyResult:
        assert not plan.create, "a rule that is there must never be created beside it"
        self.adopted.extend(a.observed.native_id for a in plan.adopt)
        return ApplyResult(adopted=len(plan.adopt))

    def release(self, observed: Observation[Any], *, delete: bool) -> ApplyResult:
        return ApplyResult()


@dataclass
class Factory:
    target: StrippedRule

    def build(
        self, intent: CompiledIntent, ref: ResourceRef, remembered: Any = ()
    ) -> list[tuple[str, Callable[[], Target[Any]]]]:
        return [("aws", lambda: self.target)]


def test_the_operator_stops_re_marking_after_three_and_reports_managed_elsewhere() -> None:
    target = StrippedRule()
    status: dict[str, Any] = {"targets": [{"name": "aws", "managedRules": 1}]}
    reports: list[Report] = []
    for at in (0, 10, 20, 30, 40):  # a check every 10 minutes; Terraform strips in between
        report = reconcile(OWNER, make_spec(), Factory(target), generation=1,
                           previous_status=status, now=lambda at=at: minutes(at))  # fmt: skip
        status = report.status(status)
        reports.append(report)

    assert len(target.adopted) == 3  # re-marked three times, then no more
    last = reports[-1]
    (aws,) = last.targets
    assert aws.plan is not None and aws.plan.empty
    assert aws.drift.total == 0 and last.phase.value == "Enforced"  # satisfied, not Missing
    (finding,) = [f for f in aws.findings if f.code is FindingCode.MANAGED_ELSEWHERE]
    assert finding.severity is Severity.WARNING and finding.objects == ("sgr-1",)
    assert "adoption: Never" in finding.message and "Terraform" in finding.message
    assert [left.reason.split(":")[0] for left in aws.plan.leave] == ["managed elsewhere"]
    (kept,) = status["targets"]
    assert kept["reclaims"]["managedElsewhere"] == [{"key": KEY, "since": "2026-12-05T09:20:00Z"}]

    # A day later it is tried again (re-marked once), and an edit of the spec forgets at once.
    later = reconcile(OWNER, make_spec(), Factory(target), generation=1,
                      previous_status=status, now=lambda: minutes(20 + 24 * 60))  # fmt: skip
    assert later.targets[0].applied is not None and len(target.adopted) == 4
    edited = reconcile(OWNER, make_spec(), Factory(target), generation=2,
                       previous_status=status, now=lambda: minutes(45))  # fmt: skip
    assert edited.targets[0].applied is not None and len(target.adopted) == 5


def test_audit_remembers_nothing_new_and_writes_nothing() -> None:
    target = StrippedRule()
    report = reconcile(OWNER, make_spec(mode="Audit"), Factory(target), generation=1,
                       now=lambda: minutes(0))  # fmt: skip
    assert target.adopted == [] and report.status()["targets"][0]["reclaims"] is None
