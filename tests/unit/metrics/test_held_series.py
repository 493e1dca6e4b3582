"""The series the operator exports for a target whose desired rule another controller holds
are exactly the input of the promtool case "a rule held by another controller is not drift and
never alerts" (deploy/prometheus/alerts_test.yaml): that case proves DriftPersists stays silent
on what the operator really exports."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builders import OWNER, make_spec
from server_hardening.compiler import CompiledIntent
from server_hardening.drift import Claimer, DesiredItem, ObservedItem, Plan, UnmanagedJudge
from server_hardening.metrics import _SnapshotCollector
from server_hardening.model import ResourceRef
from server_hardening.reconcile import reconcile
from server_hardening.rules import FindingCode
from server_hardening.targets.base import ApplyResult, Observation, Target

REPO = Path(__file__).resolve().parents[3]
CASE = "a rule held by another controller is not drift and never alerts"
LBC = "the AWS Load Balancer Controller"


@dataclass
class TwoRules:
    """The judgement: two desired rules (K8S-IN-1, K8S-IN-2), nothing claimed or widening."""

    remove_unmanaged: bool = False

    def desired(self) -> Sequence[DesiredItem[Any]]:
        return [
            DesiredItem("nodes|ingress|tcp|30000-32767|lb", "f", {}, ("K8S-IN-1",)),
            DesiredItem("nodes|ingress|all|nodes", "f", {}, ("K8S-IN-2",)),
        ]

    def judge_unmanaged(self, observed: Sequence[ObservedItem[Any]]) -> UnmanagedJudge[Any]:
        return lambda item: None

    def judge_foreign(self) -> UnmanagedJudge[Any]:
        return lambda item: None

    def claimer(self) -> Claimer[Any]:
        return lambda item, desired: None


@dataclass
class HeldTarget:
    """AWS as the pipeline sees it: the first desired rule is what the AWS Load Balancer
    Controller's rule already grants, the second the resource owns."""

    name: str = "aws"
    policy: TwoRules = field(default_factory=TwoRules)

    def observe(self) -> Observation[Any]:
        return Observation(
            (
                ObservedItem("nodes|ingress|tcp|30000-32767|lb", "lbc", {}, False, "sgr-lbc",
                             controller=LBC),
                ObservedItem("nodes|ingress|all|nodes", "f", {}, True, "sgr-ours"),
            )
        )  # fmt: skip

    def apply(self, plan: Plan[Any]) -> ApplyResult:
        raise AssertionError(f"nothing to write, yet the plan was {plan}")

    def release(self, observed: Observation[Any], *, delete: bool) -> ApplyResult:
        return ApplyResult()


@dataclass
class Factory:
    def build(
        self, intent: CompiledIntent, ref: ResourceRef, remembered: Any = ()
    ) -> list[tuple[str, Callable[[], Target[Any]]]]:
        return [("aws", HeldTarget)]


def _promtool_case_series() -> dict[tuple[tuple[str, str], ...], float]:
    tests = yaml.safe_load((REPO / "deploy/prometheus/alerts_test.yaml").read_text())["tests"]
    (case,) = [t for t in tests if t["name"] == CASE]
    out = {}
    for series in case["input_series"]:
        name, labels = re.fullmatch(r"(\w+)\{(.*)\}", series["series"]).groups()  # type: ignore[union-attr]
        assert name == "server_hardening_drift"
        pairs = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', labels)))
        values = {float(v.split("x")[0]) for v in series["values"].split()}
        (value,) = values
        out[pairs] = value
    return out


def test_the_promtool_case_is_what_the_operator_exports_for_a_held_rule() -> None:
    now = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)
    previous = {"targets": [{"name": "aws", "managedRules": 2}]}
    report = reconcile(OWNER, make_spec(), Factory(), previous_status=previous, now=lambda: now)
    (aws,) = report.targets
    assert [f.code for f in aws.findings] == [FindingCode.HELD_BY_OTHER]
    assert aws.drift.total == 0 and report.phase.value == "Enforced"

    collector = _SnapshotCollector()
    collector.update(report.snapshot())
    exported = {
        tuple(sorted(sample.labels.items())): sample.value
        for family in collector.collect()
        for sample in family.samples
        if sample.name == "server_hardening_drift"
    }
    assert exported == _promtool_case_series()
