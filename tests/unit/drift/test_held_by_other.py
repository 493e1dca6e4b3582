"""A desired item another owner already holds is satisfied: ``HeldByOther`` (info), never
Missing, never drift, nothing written beside it."""

from __future__ import annotations

from typing import Any

from server_hardening.drift import Claim, DesiredItem, ObservedItem, compute_plan
from server_hardening.rules import Finding, FindingCode, Severity


def desired(key: str) -> DesiredItem[Any]:
    return DesiredItem(key=key, fingerprint="v1", payload={"k": key}, rows=("K8S-IN-1",))


def observed(key: str, *, controller: str = "", owned: bool = False) -> ObservedItem[Any]:
    return ObservedItem(key=key, fingerprint="v1", payload={"k": key}, owned=owned,
                        native_id=f"sgr-{key}", controller=controller)  # fmt: skip


def nothing_widens(item: ObservedItem[Any]) -> Finding | None:
    return None


def adopt(item: ObservedItem[Any], wanted: DesiredItem[Any]) -> Claim | None:
    return Claim.ADOPT


LBC = "the AWS Load Balancer Controller"


def test_a_controllers_rule_with_the_desired_access_holds_it() -> None:
    plan = compute_plan("aws", [desired("nodes-in-443"), desired("nodes-in-80")],
                        [observed("nodes-in-443", controller=LBC)],
                        judge_unmanaged=nothing_widens, remove_unmanaged=True,
                        claim=adopt)  # fmt: skip
    assert [d.key for d in plan.create] == ["nodes-in-80"]  # only what nobody holds
    assert plan.drift().missing == 1  # the held one is not counted
    assert not plan.adopt and not plan.remove_unmanaged
    assert [(left.observed.native_id, left.reason) for left in plan.leave] == [
        ("sgr-nodes-in-443", f"held by {LBC} sgr-nodes-in-443")
    ]
    (held,) = [f for f in plan.findings if f.code is FindingCode.HELD_BY_OTHER]
    assert held.severity is Severity.INFO and held.row == "K8S-IN-1"
    assert held.objects == ("sgr-nodes-in-443",)
    assert LBC in held.message
    assert FindingCode.MISSING not in {f.code for f in plan.findings if "443" in f.message}


def test_held_and_nothing_else_is_an_empty_plan_without_drift() -> None:
    plan = compute_plan("aws", [desired("a")], [observed("a", controller=LBC)],
                        judge_unmanaged=nothing_widens, remove_unmanaged=False)  # fmt: skip
    assert plan.empty and plan.drift().total == 0
    assert [f.code for f in plan.findings] == [FindingCode.HELD_BY_OTHER]


def test_a_controllers_rule_no_desired_item_names_is_only_left() -> None:
    plan = compute_plan("aws", [desired("a")], [observed("b", controller=LBC)],
                        judge_unmanaged=nothing_widens, remove_unmanaged=False)  # fmt: skip
    assert [d.key for d in plan.create] == ["a"]
    assert [left.reason for left in plan.leave] == [f"owned by {LBC}"]
    assert FindingCode.HELD_BY_OTHER not in {f.code for f in plan.findings}


def test_an_owned_item_under_the_same_key_wins_over_the_holder() -> None:
    plan = compute_plan("gcp", [desired("a")],
                        [observed("a", controller="GKE"), observed("a", owned=True)],
                        judge_unmanaged=nothing_widens, remove_unmanaged=False)  # fmt: skip
    assert plan.empty and [k.key for k in plan.keep] == ["a"]
    assert [left.reason for left in plan.leave] == ["owned by GKE"]
    assert FindingCode.HELD_BY_OTHER not in {f.code for f in plan.findings}


def test_an_identical_unmarked_rule_left_by_adoption_never_holds_it_too() -> None:
    plan = compute_plan("aws", [desired("a")], [observed("a")], judge_unmanaged=nothing_widens,
                        remove_unmanaged=True, claim=adopt, adopt_identical=False)  # fmt: skip
    assert plan.empty and plan.drift().total == 0
    assert [f.code for f in plan.findings] == [FindingCode.HELD_BY_OTHER]
    assert "spec.adoption: Never" in plan.findings[0].message


def test_a_rule_managed_elsewhere_is_left_unmarked_and_counts_as_held() -> None:
    why = "managed elsewhere: its marks were removed and put back 3 times"
    plan = compute_plan("aws", [desired("a")], [observed("a")], judge_unmanaged=nothing_widens,
                        remove_unmanaged=True, claim=adopt,
                        managed_elsewhere={"a": why})  # fmt: skip
    assert plan.empty and plan.drift().total == 0 and not plan.adopt
    assert [(left.observed.key, left.reason) for left in plan.leave] == [("a", why)]
    assert [f.code for f in plan.findings] == [FindingCode.MANAGED_ELSEWHERE]


def test_managed_elsewhere_never_excuses_a_rule_the_resource_would_not_claim() -> None:
    def refuse(item: ObservedItem[Any], wanted: DesiredItem[Any]) -> Claim | None:
        return None

    def widens(item: ObservedItem[Any]) -> Finding | None:
        return Finding.of(FindingCode.UNMANAGED_WIDENING, "widens", target="aws")

    plan = compute_plan("aws", [desired("a")], [observed("a")], judge_unmanaged=widens,
                        remove_unmanaged=False, claim=refuse,
                        managed_elsewhere={"a": "managed elsewhere"})  # fmt: skip
    assert [d.key for d in plan.create] == ["a"] and [u.key for u in plan.unmanaged] == ["a"]
