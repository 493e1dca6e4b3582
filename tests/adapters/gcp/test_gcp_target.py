"""The GCP adapter against the fake Compute API, through the real google-cloud-compute clients."""

from __future__ import annotations

import pytest

from adapters.gcp.gcp_support import (
    PROJECT,
    Recorder,
    fake,
    gcp_spec,
    make_fake,
    make_target,
    plan_for,
    reconcile,
    recorder,
)
from builders import OWNER, make_spec
from fakes.gcp_compute import FakeCompute
from server_hardening.model import ResourceRef, UnmanagedRules
from server_hardening.ownership import gcp_name_prefix
from server_hardening.reconcile import run_target
from server_hardening.targets.base import PermanentTargetError, TransientTargetError

__all__ = ["fake", "recorder"]  # fixtures

# What one observe costs: the network's VPC rules (one page here) and its firewall policies.
OBSERVE = ["firewalls.list", "networks.getEffectiveFirewalls"]
# ...and when a rule of ours is to be created: our names across the project's networks (another
# installation of the same namespace/name would collide with them).
OBSERVE_TO_CREATE = [*OBSERVE, "firewalls.list"]

PREFIX = gcp_name_prefix(OWNER)
WRITES = ("firewalls.insert", "firewalls.update", "firewalls.patch", "firewalls.delete")


def writes(fake: FakeCompute) -> list[str]:
    """The writes the adapter chose to send (less those the fake's chaos refused)."""
    return [r.operation for r in fake.log if r.operation in WRITES and not r.chaos]


def without_polls(calls: list[str]) -> list[str]:
    return [c for c in calls if c != "globalOperations.wait"]


def test_converges_from_an_empty_network_then_a_reconcile_only_lists(
    fake: FakeCompute, recorder: Recorder
) -> None:
    target = make_target(gcp_spec(fake), recorder)
    desired = len(target.policy.desired())
    plan, result = reconcile(target)

    # 27 for the guide's rows, 4 for the pods' range (CHOICE-K8S-PODS), 1 for the Nomad
    # clients' health checks (CHOICE-NOMAD-HEALTH-CHECKS)
    assert len(plan.create) == desired == 32
    assert result.errors == [] and result.created == desired
    assert (
        without_polls(fake.calls())
        == [*OBSERVE_TO_CREATE, "projects.get"] + ["firewalls.insert"] * desired
    )
    # every operation came back RUNNING and needed one wait to be DONE
    assert fake.calls("globalOperations.wait") == ["globalOperations.wait"] * desired
    assert set(fake.rules(PROJECT)) == {d.key for d in target.policy.desired()}

    fake.reset_log()
    _, again = plan_for(target)
    assert again.empty and again.unmanaged == ()
    assert target.apply(again).writes == 0
    assert fake.calls() == OBSERVE


def test_list_is_filtered_by_network_and_paged(fake: FakeCompute, recorder: Recorder) -> None:
    for i in range(620):  # more than one 500-item page on our network
        fake.seed(
            PROJECT,
            {
                "name": f"bulk-{i:04d}",
                "network": "global/networks/circleci",
                "sourceRanges": ["192.0.2.0/24"],
                "targetTags": ["unrelated"],
                "allowed": [{"IPProtocol": "tcp", "ports": ["8080"]}],
            },
        )
    fake.seed(
        PROJECT,
        {"name": "elsewhere", "network": "global/networks/other", "sourceTags": ["a"],
         "allowed": [{"IPProtocol": "all"}]},
    )  # fmt: skip
    fake.firewall_quota = 1000
    target = make_target(gcp_spec(fake), recorder)
    observed = target.observe()
    assert len(observed.items) == 620
    assert fake.calls() == [
        "firewalls.list",
        "firewalls.list",
        "networks.getEffectiveFirewalls",
        "firewalls.list",
    ]
    assert fake.log[0].query["filter"] == 'network eq ".*/global/networks/circleci$"'
    assert fake.log[0].query["maxResults"] == "500"


def test_waits_on_pending_operations(recorder: Recorder) -> None:
    with make_fake(pending_operations=True) as fake:
        target = make_target(gcp_spec(fake), recorder)
        _, result = reconcile(target)
        desired = len(target.policy.desired())
        assert result.created == desired
        assert fake.calls("globalOperations.wait") == ["globalOperations.wait"] * desired
        # every insert of a round is sent before its waits begin: the operations run side by
        # side (a write the network refused as busy goes again in a later round)
        ops = [c for c in fake.calls() if c not in OBSERVE][1:]
        rounds = rounds_of(ops)
        assert all(inserts == waits for inserts, waits in rounds)
        assert sum(inserts for inserts, _ in rounds) == desired
        assert rounds[0][0] >= desired - fake.chaos_count("firewalls.insert", 400)


def rounds_of(ops: list[str]) -> list[tuple[int, int]]:
    """(inserts, waits) of each run of inserts followed by its waits."""
    out: list[tuple[int, int]] = []
    for op in ops:
        if op == "firewalls.insert" and (not out or out[-1][1]):
            out.append((0, 0))
        inserts, waits = out[-1]
        out[-1] = (inserts + 1, waits) if op == "firewalls.insert" else (inserts, waits + 1)
    return out


def test_converges_a_default_network_changing_only_owned_and_missing_rules(
    fake: FakeCompute, recorder: Recorder
) -> None:
    fake.seed_default_network(PROJECT, "default")
    target = make_target(gcp_spec(fake, network="default"), recorder)
    bodies = {d.key: dict(d.payload) for d in target.policy.desired()}
    correct = f"{PREFIX}nomad-in-allow-k8s"
    wrong = f"{PREFIX}nomad-in-allow-rerun"
    fake.seed(PROJECT, bodies[correct])
    fake.seed(PROJECT, {**bodies[wrong], "sourceRanges": ["0.0.0.0/0", "198.51.100.0/24"]})
    stale = {**bodies[correct], "name": f"{PREFIX}nomad-in-allow-old"}
    fake.seed(PROJECT, stale)
    fake.seed(
        PROJECT,
        {"name": "team-allow-monitoring", "network": "global/networks/default",
         "sourceRanges": ["10.9.0.0/24"], "targetTags": ["monitoring"],
         "allowed": [{"IPProtocol": "tcp", "ports": ["9100"]}]},
    )  # fmt: skip
    before = fake.rules(PROJECT)

    fake.reset_log()
    plan, result = reconcile(target)
    assert [u.desired.key for u in plan.update] == [wrong]
    assert [d.key for d in plan.delete] == [stale["name"]]
    assert len(plan.create) == len(bodies) - 2
    assert result.errors == []
    assert (result.created, result.updated, result.deleted) == (len(bodies) - 2, 1, 1)

    log = writes(fake)
    # the adds of the pass in one wave (in any order), then the delete
    assert sorted(log[:-1]) == ["firewalls.insert"] * (len(bodies) - 2) + ["firewalls.update"]
    assert log[-1] == "firewalls.delete"
    after = fake.rules(PROJECT)
    for name in ("default-allow-internal", "default-allow-ssh", "team-allow-monitoring", correct):
        assert after[name] == before[name], name
    assert stale["name"] not in after

    codes = {f.code for f in plan.findings}
    assert "UnmanagedRuleShadowed" in codes  # default-allow-internal/ssh under our floor
    shadowed = {i.key for i in plan.unmanaged}
    assert {"default-allow-internal", "default-allow-ssh"} <= shadowed
    assert "team-allow-monitoring" not in shadowed  # targets no managed tag
    _, settled = plan_for(target)
    assert settled.empty


def test_drift_by_another_client_is_detected_then_repaired_or_only_reported(
    fake: FakeCompute, recorder: Recorder
) -> None:
    target = make_target(gcp_spec(fake), recorder)
    reconcile(target)
    deleted = f"{PREFIX}vm-in-deny-vm"
    edited = f"{PREFIX}k8s-in-allow-ext"
    fake.remove(PROJECT, deleted)
    fake.edit(PROJECT, edited, sourceRanges=["0.0.0.0/0", "10.99.0.0/16"])
    fake.seed(
        PROJECT,
        {"name": "debug-ssh", "network": "global/networks/circleci", "priority": 1000,
         "sourceRanges": ["0.0.0.0/0"], "targetTags": ["nomad-client"],
         "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]},
    )  # fmt: skip

    # Audit: observe and plan only; the report names all three; nothing but a list happens.
    fake.reset_log()
    _, plan = plan_for(target)
    assert [c.key for c in plan.create] == [deleted]
    assert [u.desired.key for u in plan.update] == [edited]
    assert [u.key for u in plan.unmanaged] == ["debug-ssh"]
    # A world-open SSH rule is the same finding on GCP as on every target.
    exposed = [f for f in plan.findings if f.code == "WorldOpenSensitivePort"]
    assert len(exposed) == 1 and exposed[0].row == "ALL-IN-1"
    assert exposed[0].severity.value == "error"
    assert "debug-ssh" in exposed[0].message and "22 (SSH)" in exposed[0].message
    assert plan.drift().as_status() == {
        "missing": 1, "unexpected": 0, "modified": 1, "unmanagedWidening": 1,
    }  # fmt: skip
    assert fake.calls() == OBSERVE_TO_CREATE
    assert {r.method for r in fake.log} == {"GET"}

    # Enforce with Report: repaired, the unmanaged rule only reported.
    fake.reset_log()
    result = target.apply(plan)
    assert (result.created, result.updated, result.deleted, result.removed_unmanaged) == (
        1,
        1,
        0,
        0,
    )
    assert sorted(writes(fake)) == ["firewalls.insert", "firewalls.update"]
    assert "debug-ssh" in fake.rules(PROJECT)
    _, after = plan_for(target)
    assert after.empty and [u.key for u in after.unmanaged] == ["debug-ssh"]

    # Enforce with Remove: the widening rule goes.
    remover = make_target(gcp_spec(fake), recorder, unmanaged=UnmanagedRules.REMOVE)
    _, result = reconcile(remover, remove=True)
    assert result.removed_unmanaged == 1
    assert "debug-ssh" not in fake.rules(PROJECT)


def test_throttling_is_retried_with_backoff_and_recorded(
    fake: FakeCompute, recorder: Recorder
) -> None:
    fake.calm()  # counts exactly the retries and sleeps of the faults scripted here
    fake.throttle("firewalls.insert", times=3)
    fake.unavailable("firewalls.list", times=1)
    target = make_target(gcp_spec(fake), recorder)
    _, result = reconcile(target)
    desired = len(target.policy.desired())
    assert result.errors == [] and result.created == desired
    assert recorder.count("firewalls.insert", "throttled") == 3
    assert recorder.count("firewalls.list", "transient_error") == 1
    assert recorder.count("firewalls.insert", "ok") == desired
    assert len(fake.calls("firewalls.insert")) == desired + 3
    assert len(recorder.sleeps) == 4 and all(s > 0 for s in recorder.sleeps)
    assert len(fake.rules(PROJECT)) == desired


def test_a_lost_insert_response_is_retried_with_the_same_request_id(
    fake: FakeCompute, recorder: Recorder
) -> None:
    fake.calm()  # the first insert is the one whose answer is lost
    fake.fail("firewalls.insert", status=503, reason="backendError", after=True)
    target = make_target(gcp_spec(fake), recorder)
    _, result = reconcile(target)
    assert result.errors == [] and result.created == len(target.policy.desired())
    inserts = [r for r in fake.log if r.operation == "firewalls.insert"]
    assert inserts[0].query["requestId"] == inserts[1].query["requestId"]
    assert inserts[1].status == 200  # the same operation again, not a 409


def test_throttling_past_the_budget_is_a_transient_error(
    fake: FakeCompute, recorder: Recorder
) -> None:
    fake.throttle("firewalls.list", times=10)
    target = make_target(gcp_spec(fake), recorder, attempts=3)
    with pytest.raises(TransientTargetError, match=r"firewalls\.list"):
        target.observe()
    assert len(fake.calls("firewalls.list")) == 3


def test_quota_too_small_writes_nothing_and_reports_the_numbers(
    fake: FakeCompute, recorder: Recorder
) -> None:
    fake.seed_default_network(PROJECT, "circleci")  # 4 rules in use
    fake.firewall_quota = 20
    target = make_target(gcp_spec(fake), recorder)
    fake.reset_log()
    plan, result = reconcile(target)
    assert writes(fake) == []
    assert fake.calls() == [*OBSERVE_TO_CREATE, "projects.get"]
    quota = [f for f in result.findings if f.code == "QuotaExceeded"]
    assert len(quota) == 1
    assert "20 with 4 in use" in quota[0].message
    assert f"{len(plan.create)} new rule(s) need {len(plan.create) - 16} more" in quota[0].message
    assert result.errors


def test_quota_exceeded_on_insert_stops_before_anything_else(
    fake: FakeCompute, recorder: Recorder
) -> None:
    fake.fail(
        "firewalls.insert",
        status=403,
        reason="quotaExceeded",
        message="Quota 'FIREWALLS' exceeded.  Limit: 200.0 globally.",
    )
    target = make_target(gcp_spec(fake), recorder)
    _, result = reconcile(target)
    assert fake.rules(PROJECT) == {}
    assert writes(fake) == ["firewalls.insert"]
    assert [f.code for f in result.findings] == ["QuotaExceeded"]
    assert "limit 200.0" in result.findings[0].message


def test_a_missing_permission_is_permanent_and_named(fake: FakeCompute, recorder: Recorder) -> None:
    fake.deny_permission("firewalls.insert", "compute.firewalls.create", f"projects/{PROJECT}")
    target = make_target(gcp_spec(fake), recorder)
    _, plan = plan_for(target)
    with pytest.raises(PermanentTargetError, match=r"compute\.firewalls\.create"):
        target.apply(plan)
    assert recorder.count("firewalls.insert", "error") == 1
    assert len(fake.calls("firewalls.insert")) == 1  # not retried

    fake.deny_permission("firewalls.list", "compute.firewalls.list")
    with pytest.raises(PermanentTargetError, match=r"compute\.firewalls\.list"):
        target.observe()


def test_release_deletes_owned_rules_only(fake: FakeCompute, recorder: Recorder) -> None:
    fake.seed_default_network(PROJECT, "circleci")
    target = make_target(gcp_spec(fake), recorder)
    reconcile(target)
    other = make_target(gcp_spec(fake), recorder, owner=ResourceRef("other-ns", "other", "uid-2"))
    # Another resource's rules on the same network (seeded: as the operator runs it, a second
    # resource that meets ours is a conflict and writes nothing, asserted below).
    for item in other.policy.desired():
        fake.seed(PROJECT, dict(item.payload))
    assert run_target("gcp", lambda: other, make_spec(), 0, []).conflict_with == (
        "circleci-server/circleci"
    )
    observed = target.observe()
    assert any(i.owner == "other-ns/other" for i in observed.items)
    result = target.release(observed, delete=True)
    assert result.deleted == len(target.policy.desired()) and result.errors == []
    left = fake.rules(PROJECT)
    assert not any(n.startswith(PREFIX) for n in left)
    assert len(left) == 4 + len(other.policy.desired())


def test_release_orphan_unmarks_and_a_recreated_resource_takes_them_back(
    fake: FakeCompute, recorder: Recorder
) -> None:
    target = make_target(gcp_spec(fake), recorder)
    reconcile(target)
    fake.reset_log()
    result = target.release(target.observe(), delete=False)
    desired = len(target.policy.desired())
    assert result.updated == desired and result.errors == []
    assert writes(fake) == ["firewalls.patch"] * desired
    rules = fake.rules(PROJECT)
    assert all(r["description"].startswith("released from ") for r in rules.values())
    assert all(r.get("allowed") or r.get("denied") for r in rules.values())
    assert not any(i.owned for i in target.observe().items)

    # Re-created under the same name: the released rules are exactly the desired ones, so they
    # are planned as adoptions (no insert, no 409): only their descriptions get the mark back.
    again = make_target(gcp_spec(fake), recorder)
    fake.reset_log()
    plan, result = reconcile(again)
    assert result.errors == []
    assert result.adopted == desired and result.created == 0
    assert {f.code for f in plan.findings} == {"Adoptable"}
    assert writes(fake) == ["firewalls.update"] * desired
    assert all(
        r["description"].startswith("server-hardening ") for r in fake.rules(PROJECT).values()
    )
    _, settled = plan_for(again)
    assert settled.empty
