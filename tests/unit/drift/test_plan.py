"""The diff: only owned items change; unmanaged ones are judged, and removed only when asked."""

from __future__ import annotations

import pytest

from server_hardening.drift import DesiredItem, ObservedItem, compute_plan
from server_hardening.rules import Finding, FindingCode, Severity


def desired(key: str, content: str = "v1") -> DesiredItem:
    return DesiredItem(key=key, fingerprint=content, payload={"k": key}, rows=("ROW-1",))


def observed(key: str, content: str = "v1", *, owned: bool = True, owner: str = "") -> ObservedItem:
    return ObservedItem(
        key=key,
        fingerprint=content,
        payload={"k": key},
        owned=owned,
        native_id=f"id-{key}",
        owner=owner,
    )


def widening(item: ObservedItem) -> Finding | None:
    if item.key.startswith("wide"):
        return Finding(
            Severity.WARNING, FindingCode("UnmanagedWidening"), f"{item.key} widens", target="t"
        )
    return None


def test_in_sync_is_an_empty_plan() -> None:
    plan = compute_plan("t", [desired("a"), desired("b")], [observed("a"), observed("b")],
                        judge_unmanaged=widening, remove_unmanaged=False)  # fmt: skip
    assert plan.empty and plan.writes == 0 and plan.drift().total == 0 and plan.managed == 2


def test_missing_modified_and_stale_items_are_planned() -> None:
    plan = compute_plan(
        "t",
        [desired("a"), desired("b", "v2"), desired("c")],
        [observed("b", "v1"), observed("old")],
        judge_unmanaged=widening,
        remove_unmanaged=False,
    )
    assert [d.key for d in plan.create] == ["a", "c"]
    assert [(u.observed.key, u.desired.fingerprint) for u in plan.update] == [("b", "v2")]
    assert [o.key for o in plan.delete] == ["old"]
    assert plan.drift().as_status() == {
        "missing": 2,
        "modified": 1,
        "unexpected": 1,
        "unmanagedWidening": 0,
    }
    assert {f.code for f in plan.findings} == {"Missing", "Modified", "Unexpected"}


def test_unowned_items_are_never_updated_or_deleted() -> None:
    plan = compute_plan("t", [desired("a", "v2")], [observed("a", "v1", owned=False), observed("x", owned=False)],
                        judge_unmanaged=widening, remove_unmanaged=True)  # fmt: skip
    assert [d.key for d in plan.create] == ["a"]
    assert not plan.update and not plan.delete and not plan.remove_unmanaged


def test_widening_unmanaged_items_are_reported_and_removed_only_when_asked() -> None:
    kwargs = {"judge_unmanaged": widening}
    reported = compute_plan(
        "t", [], [observed("wide-open", owned=False)], remove_unmanaged=False, **kwargs
    )  # type: ignore[arg-type]
    assert [o.key for o in reported.unmanaged] == ["wide-open"] and not reported.remove_unmanaged
    assert reported.empty and reported.drift().unmanaged_widening == 1
    removed = compute_plan(
        "t", [], [observed("wide-open", owned=False)], remove_unmanaged=True, **kwargs
    )  # type: ignore[arg-type]
    assert [o.native_id for o in removed.remove_unmanaged] == ["id-wide-open"] and not removed.empty


def test_items_of_another_owner_are_left_to_the_conflict_check() -> None:
    plan = compute_plan("t", [], [observed("wide-x", owned=False, owner="ns/other")],
                        judge_unmanaged=widening, remove_unmanaged=True)  # fmt: skip
    assert plan.empty and not plan.unmanaged


def test_a_duplicate_owned_item_is_removed() -> None:
    plan = compute_plan("t", [desired("a")], [observed("a"), ObservedItem("a", "v1", {}, True, "id-a2")],
                        judge_unmanaged=widening, remove_unmanaged=False)  # fmt: skip
    assert [o.native_id for o in plan.delete] == ["id-a2"] and not plan.create


def test_two_desired_items_with_one_key_are_a_bug() -> None:
    with pytest.raises(ValueError, match="share the key"):
        compute_plan(
            "t", [desired("a"), desired("a")], [], judge_unmanaged=widening, remove_unmanaged=False
        )
