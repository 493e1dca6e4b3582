"""The GCP write plan, without google-cloud: adds in one wave, removes in the next, pacing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from server_hardening.drift import DesiredItem, ObservedItem, Plan, Update
from server_hardening.planners.gcp import (
    PROJECT_REQUESTS_PER_MINUTE,
    WriteKind,
    fits_quota,
    pacing,
    plan_writes,
)
from server_hardening.renderers.gcp import FirewallBody


def _desired(name: str) -> DesiredItem[FirewallBody]:
    return DesiredItem(name, "f-" + name, {"name": name})


def _observed(name: str, *, owned: bool = True) -> ObservedItem[FirewallBody]:
    return ObservedItem(name, "old-" + name, {"name": name}, owned=owned, native_id=name)


PLAN: Plan[FirewallBody] = Plan(
    target="gcp",
    create=(_desired("a"), _desired("b")),
    update=(Update(_observed("c"), _desired("c")),),
    delete=(_observed("stale"),),
    unmanaged=(_observed("debug-ssh", owned=False),),
    remove_unmanaged=(_observed("debug-ssh", owned=False),),
)


def test_every_insert_and_update_is_in_the_first_wave_and_every_delete_in_the_second() -> None:
    writes = plan_writes(PLAN)
    assert [(w.kind, w.name) for w in writes.adds] == [
        (WriteKind.INSERT, "a"),
        (WriteKind.INSERT, "b"),
        (WriteKind.UPDATE, "c"),
    ]
    assert [(w.kind, w.name, w.unmanaged) for w in writes.removes] == [
        (WriteKind.DELETE, "stale", False),
        (WriteKind.DELETE, "debug-ssh", True),
    ]
    assert writes.inserts == 2
    assert all(w.desired is not None and w.desired.key == w.name for w in writes.adds)


def test_unmanaged_rules_are_removed_only_when_the_plan_says_so() -> None:
    reported_only = replace(PLAN, remove_unmanaged=())
    writes = plan_writes(reported_only)
    assert [w.name for w in writes.removes] == ["stale"]
    assert plan_writes(Plan(target="gcp")).empty


def test_pacing_takes_a_share_of_the_rate_quota_and_never_more_threads_than_writes() -> None:
    default = pacing(33)
    assert default.in_flight == 8
    # 40 % of the 1,500 requests a minute the project has: 600 a minute, one per 0.1 s.
    assert default.interval_seconds == pytest.approx(60 / (PROJECT_REQUESTS_PER_MINUTE * 0.4))
    assert pacing(3).in_flight == 3
    assert pacing(0).in_flight == 1
    assert pacing(100, max_in_flight=2, requests_per_minute=60).interval_seconds == 1.0
    with pytest.raises(ValueError, match="requests_per_minute"):
        pacing(1, requests_per_minute=0)


def test_the_whole_insert_wave_must_fit_the_firewalls_quota() -> None:
    assert fits_quota(16, 20.0, 4.0) == (True, 16)
    assert fits_quota(17, 20.0, 4.0) == (False, 16)
    assert fits_quota(1, 20.0, 25.0) == (False, -5)
