"""Brownfield planning: adopt what is exactly desired, take back what was ours, leave other
controllers' rules and declared exceptions, and never count any of them as drift."""

from __future__ import annotations

import datetime as dt
from typing import Any

from server_hardening.drift import Claim, DesiredItem, ObservedItem, compute_plan
from server_hardening.model import DeclaredExceptionSpec, ExceptionTarget
from server_hardening.policy.exceptions import matcher
from server_hardening.rules import Finding, FindingCode

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def desired(key: str, content: str = "v1") -> DesiredItem[Any]:
    return DesiredItem(key=key, fingerprint=content, payload={"content": content}, rows=("ROW-1",))


def unmarked(key: str, content: str = "v1", *, controller: str = "") -> ObservedItem[Any]:
    return ObservedItem(
        key=key,
        fingerprint=content,
        payload={"content": content},
        owned=False,
        native_id=f"id-{key}",
        controller=controller,
    )


def everything_widens(item: ObservedItem[Any]) -> Finding | None:
    return Finding.of(FindingCode.UNMANAGED_WIDENING, f"{item.key} widens", target="t")


def same_content(item: ObservedItem[Any], wanted: DesiredItem[Any]) -> Claim | None:
    if item.payload == wanted.payload:
        return Claim.ADOPT
    return Claim.TAKE_BACK if item.payload.get("content", "").startswith("ours") else None


def test_an_identical_unmarked_item_is_adopted_not_created_and_not_drift() -> None:
    plan = compute_plan("t", [desired("a")], [unmarked("a")], judge_unmanaged=everything_widens,
                        remove_unmanaged=True, claim=same_content)  # fmt: skip
    assert [a.observed.native_id for a in plan.adopt] == ["id-a"]
    assert not (plan.create or plan.update or plan.unmanaged or plan.remove_unmanaged)
    assert plan.drift().total == 0 and not plan.empty
    assert [f.code for f in plan.findings] == [FindingCode.ADOPTABLE]


def test_with_adoption_off_an_identical_item_is_left_and_nothing_is_missing() -> None:
    plan = compute_plan("t", [desired("a")], [unmarked("a")], judge_unmanaged=everything_widens,
                        remove_unmanaged=True, claim=same_content, adopt_identical=False)  # fmt: skip
    assert plan.empty and plan.drift().total == 0
    assert [(left.observed.key, left.reason) for left in plan.leave] == [
        ("a", "identical to a desired item; spec.adoption: Never")
    ]


def test_our_own_stripped_or_orphaned_item_is_taken_back_and_repaired() -> None:
    plan = compute_plan("t", [desired("a")], [unmarked("a", "ours-old")],
                        judge_unmanaged=everything_widens, remove_unmanaged=False,
                        claim=same_content)  # fmt: skip
    assert [(u.observed.native_id, u.desired.key) for u in plan.update] == [("id-a", "a")]
    assert not plan.create and not plan.unmanaged


def test_a_different_unmarked_item_under_a_desired_key_is_judged_not_claimed() -> None:
    plan = compute_plan("t", [desired("a")], [unmarked("a", "theirs")],
                        judge_unmanaged=everything_widens, remove_unmanaged=True,
                        claim=same_content)  # fmt: skip
    assert [d.key for d in plan.create] == ["a"]
    assert [u.key for u in plan.remove_unmanaged] == ["a"]


def test_another_controllers_item_is_left_and_judged_for_exposure_only() -> None:
    def exposure(item: ObservedItem[Any]) -> Finding | None:
        return Finding.of(FindingCode.WORLD_OPEN_SENSITIVE_PORT, "open", target="t")

    plan = compute_plan("t", [], [unmarked("lb", controller="GKE")],
                        judge_unmanaged=everything_widens, remove_unmanaged=True,
                        judge_foreign=exposure)  # fmt: skip
    assert plan.empty and not plan.remove_unmanaged and plan.drift().total == 0
    assert [left.reason for left in plan.leave] == ["owned by GKE"]
    assert [f.code for f in plan.findings] == [FindingCode.WORLD_OPEN_SENSITIVE_PORT]


def test_a_declared_exception_excuses_until_it_expires() -> None:
    exceptions = [
        DeclaredExceptionSpec(
            target=ExceptionTarget.KUBERNETES,
            name="id-prometheus-*",
            reason="Prometheus scrapes the server",
            expires=NOW + dt.timedelta(hours=1),
        )
    ]
    extra = unmarked("prometheus-scrape")

    def plan_at(moment: dt.datetime) -> Any:
        return compute_plan("t", [], [extra], judge_unmanaged=everything_widens,
                            remove_unmanaged=True,
                            exception_for=matcher(exceptions, "kubernetes", moment))  # fmt: skip

    before = plan_at(NOW)
    assert before.empty and before.drift().total == 0
    assert [f.code for f in before.findings] == [FindingCode.DECLARED_EXCEPTION]
    assert "spec.exceptions[0]: Prometheus scrapes the server" in before.leave[0].reason

    after = plan_at(NOW + dt.timedelta(hours=2))
    assert [u.key for u in after.remove_unmanaged] == ["prometheus-scrape"]
    assert {f.code for f in after.findings} == {
        FindingCode.EXCEPTION_EXPIRED,
        FindingCode.UNMANAGED_WIDENING,
    }


def test_an_exception_of_another_target_does_not_match() -> None:
    exceptions = [DeclaredExceptionSpec(target=ExceptionTarget.AWS, name="*", reason="all of AWS")]
    assert matcher(exceptions, "kubernetes", NOW)(unmarked("x")) is None
    assert matcher(exceptions, "aws", NOW)(unmarked("x")) is not None
