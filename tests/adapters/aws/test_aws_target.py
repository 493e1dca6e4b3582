"""The AWS adapter against moto over real HTTP, driven by the real boto3 client.

Request counts are taken at the proxy (what reached "AWS", retries included) and asserted
exactly. Where moto differs from EC2 see ``double.py``; no test depends on those gaps.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from adapters.aws.double import MotoDouble
from adapters.aws.world import (
    OWNER,
    World,
    bulk_rules,
    capture_calls,
    reconcile,
    run_pass,
)
from server_hardening.model import Adoption, ResourceRef
from server_hardening.ownership import (
    MANAGED_BY_LABEL,
    OWNER_TAG,
    OWNER_UID_TAG,
    PROVENANCE_TAG,
    describe,
    owner_key,
)
from server_hardening.reconcile import plan_target
from server_hardening.renderers.aws import render_security_groups
from server_hardening.rules import Peer, PeerKind, Role
from server_hardening.targets.aws import (
    AwsPermanentError,
    AwsTarget,
    AwsTransientError,
    RetryPolicy,
)
from server_hardening.targets.base import PermanentTargetError, TransientTargetError

REPO = Path(__file__).resolve().parents[3]
GUIDE_RULES = 39  # what the v3 guide renders for the four groups of World.spec()


def _tags(rule: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in rule.get("Tags", [])}


def _owned(world: World) -> list[dict[str, Any]]:
    return [r for r in world.rules() if _tags(r).get(OWNER_TAG) == owner_key(OWNER)]


def _authorize_tagged(world: World, group: str, perm: dict[str, Any], owner: str = "") -> str:
    """Add one rule as another client would (optionally marked as owned by ``owner``)."""
    kwargs: dict[str, Any] = {"GroupId": group, "IpPermissions": [perm]}
    if owner:
        kwargs["TagSpecifications"] = [
            {"ResourceType": "security-group-rule", "Tags": [{"Key": OWNER_TAG, "Value": owner}]}
        ]
    out = world.ec2.authorize_security_group_ingress(**kwargs)
    return str(out["SecurityGroupRules"][0]["SecurityGroupRuleId"])


# ------------------------------------------------------------------------------------------
# Converging


def test_converges_from_empty_groups_and_then_does_nothing(bare_world: World) -> None:
    world = bare_world
    target = world.target(world.guide_rendering())

    plan, result = reconcile(target)

    assert plan.drift().missing == GUIDE_RULES
    assert result is not None
    assert result.created == GUIDE_RULES
    assert result.errors == []
    # Empty groups have no rule to prove they exist: one DescribeSecurityGroups says they do.
    assert world.double.counts() == {
        "DescribeSecurityGroupRules": 1,
        "DescribeSecurityGroups": 1,
        "AuthorizeSecurityGroupIngress": 4,
        "AuthorizeSecurityGroupEgress": 4,
    }
    rules = world.rules()
    assert len(rules) == GUIDE_RULES
    for rule in rules:
        tags = _tags(rule)
        assert tags[OWNER_TAG] == "circleci/server"
        assert tags[OWNER_UID_TAG] == "uid-1"
        assert tags[MANAGED_BY_LABEL] == "server-hardening"
        assert rule["Description"].startswith("server-hardening circleci/server [")

    world.double.proxy.reset()
    plan, result = reconcile(target)
    assert plan.empty
    assert result is None
    assert world.double.counts() == {"DescribeSecurityGroupRules": 1}


def test_only_owned_and_missing_rules_change_and_unmanaged_ones_are_reported(world: World) -> None:
    nomad, vms = world.groups[Role.NOMAD_CLIENTS], world.groups[Role.EXTERNAL_VMS]
    me = owner_key(OWNER)
    # Correct and owned: NOMAD-IN-1 exactly as rendered.
    correct = _authorize_tagged(
        world,
        nomad,
        {
            "IpProtocol": "tcp",
            "FromPort": 4647,
            "ToPort": 4647,
            "UserIdGroupPairs": [
                {
                    "GroupId": world.groups[Role.KUBERNETES_NODES],
                    "Description": describe(["NOMAD-IN-1"], OWNER),
                }
            ],
        },
        owner=me,
    )
    # Owned, desired, but with a stale description: modified in place (same rule ID).
    stale = _authorize_tagged(
        world,
        nomad,
        {
            "IpProtocol": "6",  # a protocol number: the key is normalised
            "FromPort": 64535,
            "ToPort": 65535,
            "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "old words"}],
        },
        owner=me,
    )
    # Owned and no longer desired: revoked by its ID.
    undesired = _authorize_tagged(
        world,
        nomad,
        {"IpProtocol": "tcp", "FromPort": 9999, "ToPort": 9999,
         "IpRanges": [{"CidrIp": "10.9.0.0/16", "Description": "server-hardening old"}]},
        owner=me,
    )  # fmt: skip
    # Unmanaged: a harmless-looking rule and a world-open SSH rule. Left alone, reported.
    unmanaged = _authorize_tagged(
        world, nomad, {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080,
                       "IpRanges": [{"CidrIp": "10.8.0.0/16"}]}
    )  # fmt: skip
    world_ssh = _authorize_tagged(
        world, vms, {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                     "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    )  # fmt: skip
    calls = capture_calls(world.ec2)
    world.double.proxy.reset()

    plan, result = reconcile(world.target(world.guide_rendering()))

    assert result is not None
    assert (result.created, result.updated, result.deleted) == (GUIDE_RULES - 2, 1, 1)
    assert result.removed_unmanaged == 0
    by_id = {r["SecurityGroupRuleId"]: r for r in world.rules()}
    assert correct in by_id
    assert stale in by_id
    assert by_id[stale]["Description"] == describe(["NOMAD-IN-2"], OWNER)
    assert undesired not in by_id
    assert unmanaged in by_id
    assert world_ssh in by_id
    codes = {(f.code, f.message.split(" ")[0]) for f in plan.findings}
    assert ("UnmanagedWidening", unmanaged) in codes
    assert ("WorldOpenSensitivePort", world_ssh) in codes
    # The four default allow-all egress rules: reported with what they do to the guide.
    moot = [f for f in plan.findings if "makes every egress restriction" in f.message]
    assert len(moot) == 4
    revokes = [params for op, params in calls if op.startswith("RevokeSecurityGroup")]
    assert revokes == [{"GroupId": nomad, "SecurityGroupRuleIds": [undesired]}]
    assert world.double.counts()["ModifySecurityGroupRules"] == 1

    # Remove: the unmanaged rules go too, by rule ID and nothing else.
    calls.clear()
    plan, result = reconcile(world.target(world.guide_rendering()), remove_unmanaged=True)
    assert result is not None
    assert result.removed_unmanaged == 2 + 4  # two added above, four default egress rules
    assert (result.created, result.updated, result.deleted) == (0, 0, 0)
    left = {r["SecurityGroupRuleId"] for r in world.rules()}
    assert unmanaged not in left
    assert world_ssh not in left
    assert len(left) == GUIDE_RULES
    for op, params in calls:
        if op.startswith("RevokeSecurityGroup"):
            assert set(params) == {"GroupId", "SecurityGroupRuleIds"}


def test_a_rule_owned_by_another_resource_is_a_conflict_and_left_alone(world: World) -> None:
    """As the operator runs it (the production per-target pipeline): a rule tagged by another
    ServerHardening makes the whole target a conflict; nothing is written there, not even with
    unmanagedRules: Remove, and the conflict names the other resource."""
    nomad = world.groups[Role.NOMAD_CLIENTS]
    theirs = _authorize_tagged(
        world,
        nomad,
        {"IpProtocol": "tcp", "FromPort": 7000, "ToPort": 7000,
         "IpRanges": [{"CidrIp": "10.7.0.0/16"}]},
        owner="other/installation",
    )  # fmt: skip
    before = {r["SecurityGroupRuleId"] for r in world.rules()}
    world.double.proxy.reset()

    report = run_pass(world.target(world.guide_rendering()), remove_unmanaged=True)

    assert report.conflict_with == "other/installation"
    assert report.plan is None and report.applied is None
    conflicts = [f for f in report.findings if f.code == "Conflict"]
    assert len(conflicts) == 1 and "other/installation" in conflicts[0].message
    assert {r["SecurityGroupRuleId"] for r in world.rules()} == before
    assert theirs in before
    assert set(world.double.counts()) == {"DescribeSecurityGroupRules"}


def test_an_identical_hand_made_rule_is_adopted_never_duplicated_or_revoked(world: World) -> None:
    """Brownfield: the install docs have admins create the guide's rules by hand. One that is
    exactly a desired rule is adopted: tagged and described, no authorise, no revoke, the same
    rule ID before and after, even with unmanagedRules: Remove."""
    nomad, nodes = world.groups[Role.NOMAD_CLIENTS], world.groups[Role.KUBERNETES_NODES]
    twin = _authorize_tagged(
        world,
        nomad,
        {"IpProtocol": "tcp", "FromPort": 4647, "ToPort": 4647,
         "UserIdGroupPairs": [{"GroupId": nodes, "Description": "by hand"}]},
    )  # fmt: skip
    calls = capture_calls(world.ec2)

    report = run_pass(world.target(world.guide_rendering()), remove_unmanaged=True)

    assert report.applied is not None and report.error is None
    assert report.applied.adopted == 1
    assert report.applied.created == GUIDE_RULES - 1
    assert report.applied.removed_unmanaged == 4  # the default egress rules, not the twin
    authorised = [
        pair.get("GroupId")
        for op, params in calls
        if op == "AuthorizeSecurityGroupIngress" and params["GroupId"] == nomad
        for perm in params["IpPermissions"]
        if perm.get("FromPort") == 4647
        for pair in perm.get("UserIdGroupPairs", [])
    ]
    assert authorised == []
    assert not [
        params
        for op, params in calls
        if op.startswith("RevokeSecurityGroup") and twin in params["SecurityGroupRuleIds"]
    ]
    by_id = {r["SecurityGroupRuleId"]: r for r in world.rules(nomad)}
    assert _tags(by_id[twin])[OWNER_TAG] == owner_key(OWNER)
    assert by_id[twin]["Description"] == describe(["NOMAD-IN-1"], OWNER)
    adoptable = [f for f in report.findings if f.code == "Adoptable"]
    assert len(adoptable) == 1 and twin in adoptable[0].message

    again = run_pass(world.target(world.guide_rendering()), previously_managed=GUIDE_RULES)
    assert again.plan is not None and again.plan.empty
    assert again.drift.total == 0


def test_with_adoption_never_an_identical_rule_is_left_and_nothing_is_missing(world: World) -> None:
    nomad, nodes = world.groups[Role.NOMAD_CLIENTS], world.groups[Role.KUBERNETES_NODES]
    twin = _authorize_tagged(
        world,
        nomad,
        {"IpProtocol": "tcp", "FromPort": 4647, "ToPort": 4647,
         "UserIdGroupPairs": [{"GroupId": nodes, "Description": "by hand"}]},
    )  # fmt: skip
    run_pass(world.target(world.guide_rendering()), adoption=Adoption.NEVER)

    again = run_pass(
        world.target(world.guide_rendering()),
        adoption=Adoption.NEVER,
        remove_unmanaged=True,
        previously_managed=GUIDE_RULES - 1,
    )

    assert again.plan is not None
    assert [left.observed.native_id for left in again.plan.leave] == [twin]
    assert again.drift.missing == 0
    assert twin in {r["SecurityGroupRuleId"] for r in world.rules(nomad)}
    assert OWNER_TAG not in _tags(
        next(r for r in world.rules(nomad) if r["SecurityGroupRuleId"] == twin)
    )


# ------------------------------------------------------------------------------------------
# Drift made by someone else


def test_drift_is_detected_reported_in_audit_and_repaired_when_applied(bare_world: World) -> None:
    world = bare_world
    target = world.target(world.guide_rendering())
    reconcile(target)
    nomad = world.groups[Role.NOMAD_CLIENTS]
    victim = next(r for r in _owned(world) if r["GroupId"] == nomad and not r["IsEgress"])
    other = MotoDouble.client(world.double)
    other.revoke_security_group_ingress(
        GroupId=nomad, SecurityGroupRuleIds=[victim["SecurityGroupRuleId"]]
    )
    ssh = _authorize_tagged(
        world, nomad, {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                       "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    )  # fmt: skip
    world.double.proxy.reset()

    # Audit: observe and plan, never write.
    plan, result = reconcile(target, apply=False)
    assert result is None
    assert plan.drift().missing == 1
    assert [i.native_id for i in plan.unmanaged] == [ssh]
    assert "WorldOpenSensitivePort" in {f.code for f in plan.findings}
    assert world.double.counts() == {"DescribeSecurityGroupRules": 1}

    # Enforce (Report): the managed rule comes back; the world-open rule is only reported.
    world.double.proxy.reset()
    plan, result = reconcile(target)
    assert result is not None
    assert result.created == 1
    assert world.double.counts() == {
        "DescribeSecurityGroupRules": 1,
        "AuthorizeSecurityGroupIngress": 1,
    }
    assert ssh in {r["SecurityGroupRuleId"] for r in world.rules(nomad)}

    # Enforce (Remove): the world-open rule goes, by its ID.
    world.double.proxy.reset()
    plan, result = reconcile(target, remove_unmanaged=True)
    assert result is not None
    assert result.removed_unmanaged == 1
    assert world.double.counts() == {
        "DescribeSecurityGroupRules": 1,
        "RevokeSecurityGroupIngress": 1,
    }
    plan, _ = reconcile(target, apply=False)
    assert plan.empty
    assert plan.drift().total == 0


# ------------------------------------------------------------------------------------------
# Request counts


def _bulk_target(world: World, per_group: int) -> AwsTarget:
    aws = world.aws_spec()
    rendered = render_security_groups(bulk_rules(per_group), aws, OWNER)
    return world.target(rendered, aws=aws)


def test_a_no_op_reconcile_of_four_groups_with_50_rules_is_one_read(bare_world: World) -> None:
    world = bare_world
    target = _bulk_target(world, 50)
    _, first = reconcile(target)
    assert first is not None
    assert first.created == 200
    world.double.proxy.reset()

    plan, result = reconcile(target)

    assert plan.empty
    assert result is None
    assert world.double.counts() == {"DescribeSecurityGroupRules": 1}


def test_a_change_in_all_four_groups_is_one_call_per_group_direction_and_kind(
    bare_world: World,
) -> None:
    world = bare_world
    aws = world.aws_spec()
    before = bulk_rules(50)
    reconcile(world.target(render_security_groups(before, aws, OWNER), aws=aws))
    # In every group: one description changes (rows), one inbound and one outbound rule go,
    # one inbound and one outbound rule come.
    after = []
    for rule in before:
        port = rule.ports.first if rule.ports else 0
        if port in (10001, 10002):
            continue
        if port == 10000:
            after.append(dataclasses.replace(rule, rows=frozenset({"BENCH-2"})))
        else:
            after.append(rule)
    extra = [r for r in bulk_rules(54) if r.ports and r.ports.first >= 10052]
    after.extend(extra)
    calls = capture_calls(world.ec2)
    world.double.proxy.reset()

    _, result = reconcile(world.target(render_security_groups(after, aws, OWNER), aws=aws))

    assert result is not None
    assert (result.created, result.updated, result.deleted) == (8, 4, 8)
    assert world.double.counts() == {
        "DescribeSecurityGroupRules": 1,
        "AuthorizeSecurityGroupIngress": 4,
        "AuthorizeSecurityGroupEgress": 4,
        "ModifySecurityGroupRules": 4,
        "RevokeSecurityGroupIngress": 4,
        "RevokeSecurityGroupEgress": 4,
    }
    order = [op for op, _ in calls]
    last_authorize = max(i for i, op in enumerate(order) if op.startswith("Authorize"))
    first_revoke = min(i for i, op in enumerate(order) if op.startswith("Revoke"))
    assert last_authorize < first_revoke


@pytest.mark.slow
def test_describe_pages_by_1000_rules(moto_double: MotoDouble) -> None:
    from adapters.aws.world import make_world, many_groups

    world = make_world(moto_double, keep_default_egress=False)
    rendered = many_groups(world.ec2, world.vpc, 24, 50)  # 1,200 rules
    target = world.target(rendered)
    reconcile(target)
    world.double.proxy.reset()

    plan, _ = reconcile(target)

    assert plan.empty
    assert world.double.counts() == {"DescribeSecurityGroupRules": 2}


# ------------------------------------------------------------------------------------------
# Throttling and errors


def test_throttling_is_retried_recorded_and_still_converges(bare_world: World) -> None:
    world = bare_world
    world.double.proxy.throttle("AuthorizeSecurityGroupIngress", 3)
    world.double.proxy.throttle("DescribeSecurityGroupRules", 2)

    _plan, result = reconcile(world.target(world.guide_rendering()))

    assert result is not None
    assert result.created == GUIDE_RULES
    assert world.calls[("AuthorizeSecurityGroupIngress", "throttled")] == 3
    assert world.calls[("DescribeSecurityGroupRules", "throttled")] == 2
    assert world.double.counts()["AuthorizeSecurityGroupIngress"] == 4 + 3
    assert world.double.counts()["DescribeSecurityGroupRules"] == 1 + 2
    assert len(world.rules()) == GUIDE_RULES


def test_throttling_beyond_the_budget_is_transient_and_says_what_was_applied(
    bare_world: World,
) -> None:
    world = bare_world
    target = world.target(world.guide_rendering(), retry=RetryPolicy(max_attempts=3))
    plan = plan_target(target, target.observe())
    world.double.proxy.throttle("AuthorizeSecurityGroupEgress", 100)

    with pytest.raises(AwsTransientError) as caught:
        target.apply(plan)

    assert isinstance(caught.value, TransientTargetError)
    assert caught.value.operation == "AuthorizeSecurityGroupEgress"
    # The first group's inbound rules went in before its outbound call gave up.
    assert caught.value.result.created > 0
    assert f"created {caught.value.result.created}" in str(caught.value)
    assert world.calls[("AuthorizeSecurityGroupEgress", "throttled")] == 3


def test_a_missing_group_is_a_permanent_error_naming_it(world: World) -> None:
    aws = world.aws_spec(securityGroups={"nomadClients": "sg-0123456789abcdef0"})
    rendered = render_security_groups([], aws, OWNER)
    target = world.target(rendered, aws=aws)

    with pytest.raises(PermanentTargetError) as caught:
        target.observe()

    assert "sg-0123456789abcdef0" in str(caught.value)
    assert "nomadClients" in str(caught.value)
    assert caught.value.resource == "sg-0123456789abcdef0"


def test_a_group_deleted_between_observe_and_apply_is_permanent(bare_world: World) -> None:
    world = bare_world
    target = world.target(world.guide_rendering())
    plan = plan_target(target, target.observe())
    gone = world.groups[Role.EXTERNAL_VMS]
    world.ec2.delete_security_group(GroupId=gone)

    with pytest.raises(AwsPermanentError) as caught:
        target.apply(plan)

    assert gone in str(caught.value)
    assert "externalVMs" in str(caught.value)


def test_quota_over_60_in_one_group_is_a_finding_and_no_partial_write(bare_world: World) -> None:
    world = bare_world
    aws = world.aws_spec()
    rules = bulk_rules(20) + [
        r for r in bulk_rules(130, roles=[Role.NOMAD_CLIENTS]) if r.ports and r.ports.first >= 10020
    ]  # nomadClients: 65 inbound, 65 outbound
    rendered = render_security_groups(rules, aws, OWNER)
    assert [f.code for f in rendered.findings] == ["QuotaExceeded", "QuotaExceeded"]
    assert "65 IPv4 rules" in rendered.findings[0].message
    calls = capture_calls(world.ec2)

    _, result = reconcile(world.target(rendered, aws=aws))

    assert result is not None
    nomad = world.groups[Role.NOMAD_CLIENTS]
    assert world.rules(nomad) == []
    assert all(p.get("GroupId") != nomad for op, p in calls if not op.startswith("Describe"))
    assert result.created == 3 * 20
    assert any(f.code == "QuotaExceeded" for f in result.findings)
    assert any(nomad in e and "over the quota of 60" in e for e in result.errors)


def test_unmanaged_rules_count_against_the_quota_too(bare_world: World) -> None:
    world = bare_world
    aws = world.aws_spec(ruleQuota={"inbound": 5, "outbound": 5})
    nomad = world.groups[Role.NOMAD_CLIENTS]
    for i in range(4):
        _authorize_tagged(
            world, nomad, {"IpProtocol": "tcp", "FromPort": 7000 + i, "ToPort": 7000 + i,
                           "IpRanges": [{"CidrIp": f"10.7.{i}.0/24"}]}
        )  # fmt: skip
    rendered = render_security_groups(bulk_rules(4, roles=[Role.NOMAD_CLIENTS]), aws, OWNER)
    world.double.proxy.reset()

    _, result = reconcile(world.target(rendered, aws=aws))

    assert result is not None
    assert result.writes == 0
    [finding] = [f for f in result.findings if f.code == "QuotaExceeded"]
    assert "6 IPv4 rules" in finding.message
    assert "4 IPv4/0 IPv6 now, 2 to add" in finding.message
    # Reads only (the three other groups are empty, hence one DescribeSecurityGroups).
    assert world.double.counts() == {"DescribeSecurityGroupRules": 1, "DescribeSecurityGroups": 1}


def test_a_lane_without_room_for_old_and_new_revokes_first(bare_world: World) -> None:
    world = bare_world
    aws = world.aws_spec(ruleQuota={"inbound": 3, "outbound": 3})
    nomad_only = [Role.NOMAD_CLIENTS]
    old = bulk_rules(6, roles=nomad_only)  # 3 in, 3 out
    reconcile(world.target(render_security_groups(old, aws, OWNER), aws=aws))
    new = [
        dataclasses.replace(r, peer=Peer(PeerKind.CIDRS, ("192.168.0.0/24",)))
        for r in old
        if r.direction.value == "ingress"
    ] + [r for r in old if r.direction.value == "egress"]
    calls = capture_calls(world.ec2)

    _, result = reconcile(world.target(render_security_groups(new, aws, OWNER), aws=aws))

    assert result is not None
    assert (result.created, result.deleted) == (3, 3)
    order = [op for op, _ in calls if not op.startswith("Describe")]
    assert order == ["RevokeSecurityGroupIngress", "AuthorizeSecurityGroupIngress"]


def test_a_rule_added_meanwhile_is_a_duplicate_not_an_error(bare_world: World) -> None:
    world = bare_world
    target = world.target(world.guide_rendering())
    reconcile(target)
    nomad = world.groups[Role.NOMAD_CLIENTS]
    owned_in = [r for r in _owned(world) if r["GroupId"] == nomad and not r["IsEgress"]]
    for rule in owned_in:
        world.ec2.revoke_security_group_ingress(
            GroupId=nomad, SecurityGroupRuleIds=[rule["SecurityGroupRuleId"]]
        )
    plan = plan_target(target, target.observe())
    assert len(plan.create) == len(owned_in) == 2
    # Someone else puts one of them back before the apply: the first of the batch, with the
    # same description (moto then refuses the whole call as EC2 does; see double.py).
    nodes = world.groups[Role.KUBERNETES_NODES]
    world.ec2.authorize_security_group_ingress(
        GroupId=nomad,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 4647, "ToPort": 4647,
             "UserIdGroupPairs": [{"GroupId": nodes,
                                   "Description": describe(["NOMAD-IN-1"], OWNER)}]}
        ],
    )  # fmt: skip
    world.double.proxy.reset()

    result = target.apply(plan)

    assert result.created == 1
    assert result.errors == []
    assert [f.code for f in result.findings] == ["HeldByOther"]
    # One authorize (duplicate), one look, one authorize of the rest.
    assert world.double.counts() == {
        "AuthorizeSecurityGroupIngress": 2,
        "DescribeSecurityGroupRules": 1,
    }
    assert len(world.rules(nomad)) == len(
        [r for r in world.guide_rendering().atoms if r.group_id == nomad]
    )


def test_a_rule_revoked_meanwhile_is_gone_not_an_error(bare_world: World) -> None:
    world = bare_world
    aws = world.aws_spec()
    before = bulk_rules(10, roles=[Role.NOMAD_CLIENTS])
    reconcile(world.target(render_security_groups(before, aws, OWNER), aws=aws))
    after = [r for r in before if r.ports and r.ports.first not in (10000, 10002, 10004)]
    target = world.target(render_security_groups(after, aws, OWNER), aws=aws)
    plan = plan_target(target, target.observe())
    assert len(plan.delete) == 3
    nomad = world.groups[Role.NOMAD_CLIENTS]
    world.ec2.revoke_security_group_ingress(
        GroupId=nomad, SecurityGroupRuleIds=[plan.delete[0].native_id]
    )
    world.double.proxy.reset()

    result = target.apply(plan)

    assert result.deleted == 2
    assert result.errors == []
    # One revoke (not found), one look at those IDs, one revoke of the two still there.
    assert world.double.counts() == {
        "RevokeSecurityGroupIngress": 2,
        "DescribeSecurityGroupRules": 1,
    }
    assert len(world.rules(nomad)) == 7


# ------------------------------------------------------------------------------------------
# Release


def test_release_delete_revokes_only_owned_rules(world: World) -> None:
    target = world.target(world.guide_rendering())
    reconcile(target)
    observation = target.observe()
    world.double.proxy.reset()

    result = target.release(observation, delete=True)

    assert result.deleted == GUIDE_RULES
    assert world.double.counts() == {
        "RevokeSecurityGroupIngress": 4,
        "RevokeSecurityGroupEgress": 4,
    }
    left = world.rules()
    assert len(left) == 4  # the four default egress rules nobody owns
    assert all(OWNER_TAG not in _tags(r) for r in left)


def test_release_orphan_keeps_every_rule_and_drops_the_ownership_tags(world: World) -> None:
    target = world.target(world.guide_rendering())
    reconcile(target)
    observation = target.observe()
    world.double.proxy.reset()

    result = target.release(observation, delete=False)

    # Every rule returned (unmarked), none revoked.
    assert (result.updated, result.deleted) == (GUIDE_RULES, 0)
    assert world.double.counts() == {"DeleteTags": 1}
    rules = world.rules()
    assert len(rules) == GUIDE_RULES + 4
    assert all(OWNER_TAG not in _tags(r) and OWNER_UID_TAG not in _tags(r) for r in rules)
    # The operator's creations keep saying so: a resource adopting them later knows.
    created = [r for r in rules if _tags(r).get(PROVENANCE_TAG) == "created"]
    assert len(created) == GUIDE_RULES
    # A resource re-created under the same name does not silently take them back.
    again = target.observe()
    assert not any(item.owned for item in again.items)


# ------------------------------------------------------------------------------------------
# Configuration and IAM


def test_the_endpoint_comes_from_aws_endpoint_url_ec2_when_the_spec_has_none(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", world.double.url)
    aws = world.aws_spec(endpointUrl=None)
    assert aws.endpoint_url is None
    target = AwsTarget(world.guide_rendering(), aws, OWNER, record_call=world.record)

    target.observe()

    assert world.double.counts() == {"DescribeSecurityGroupRules": 1}


def _policy_actions() -> list[str]:
    policy = json.loads((REPO / "deploy/aws/iam-policy.json").read_text())
    actions: set[str] = set()
    for statement in policy["Statement"]:
        listed = statement["Action"]
        actions.update([listed] if isinstance(listed, str) else listed)
    return sorted(actions)


def test_the_iam_policy_actions_are_enough(world: World) -> None:
    actions = _policy_actions()
    with world.double.enforce_iam(actions) as creds:
        client = world.double.client(**creds)
        target = world.target(world.guide_rendering(), client=client)
        reconcile(target, remove_unmanaged=True)
        _, again = reconcile(target)
        assert again is None
        target.release(target.observe(), delete=False)
        reconcile(target, remove_unmanaged=True)  # unmanaged now: all revoked, all re-created
        target.release(target.observe(), delete=True)
    assert world.rules() == []


def test_a_missing_permission_fails_only_its_own_step_and_names_it(world: World) -> None:
    actions = [a for a in _policy_actions() if a != "ec2:RevokeSecurityGroupEgress"]
    with world.double.enforce_iam(actions) as creds:
        target = world.target(world.guide_rendering(), client=world.double.client(**creds))
        report = run_pass(target, remove_unmanaged=True)
    assert report.error is None and report.applied is not None
    # Every create and ingress revoke landed; the egress revokes are reported, named.
    assert report.applied.created == GUIDE_RULES
    refused = [e for e in report.applied.errors if "ec2:RevokeSecurityGroupEgress" in e]
    assert len(refused) == 4  # the default egress rule of each group
    assert "refused (AccessDenied" in refused[0] or "refused (UnauthorizedOperation" in refused[0]
    assert "statement ChangeRulesOfTheManagedGroupsOnly" in refused[0]
    assert [f.code for f in report.applied.findings].count("PermissionRefused") == 4
    assert report.last_error


def test_refused_adoption_tagging_stops_nothing_else_of_the_pass(world: World) -> None:
    """Brownfield under a policy that refuses a standalone CreateTags: the hand-made twin stays
    as it was (unmarked), the error names the permission and the statement that grants it, and
    every create, update and revoke of the pass still happens: the world-open SSH rule under
    Remove goes, after the rules that replace it were added."""
    nomad, nodes = world.groups[Role.NOMAD_CLIENTS], world.groups[Role.KUBERNETES_NODES]
    twin = _authorize_tagged(
        world, nomad,
        {"IpProtocol": "tcp", "FromPort": 4647, "ToPort": 4647,
         "UserIdGroupPairs": [{"GroupId": nodes, "Description": "by hand"}]},
    )  # fmt: skip
    open_ssh = _authorize_tagged(
        world, nomad,
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    )  # fmt: skip
    client = world.double.client()

    def refuse(**_: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "UnauthorizedOperation", "Message": "not authorized"},
             "ResponseMetadata": {"HTTPStatusCode": 403}},
            "CreateTags",
        )  # fmt: skip

    client.meta.events.register("before-call.ec2.CreateTags", refuse)
    calls = capture_calls(client)

    report = run_pass(world.target(world.guide_rendering(), client=client), remove_unmanaged=True)

    assert report.error is None and report.applied is not None
    applied = report.applied
    assert applied.adopted == 0
    assert applied.created == GUIDE_RULES - 1  # all but the twin's access, which is held
    assert applied.removed_unmanaged == 5  # four default egress rules and the open SSH
    [error] = applied.errors
    assert error.startswith(f"ec2:CreateTags on security-group-rule/{twin}: refused")
    assert "statement MarkRulesAsThisResourcesOnly" in error
    assert [f.code for f in applied.findings].count("PermissionRefused") == 1
    rules = {r["SecurityGroupRuleId"]: r for r in world.rules()}
    assert twin in rules and OWNER_TAG not in _tags(rules[twin])
    assert rules[twin]["Description"] == "by hand"
    assert open_ssh not in rules
    order = [op for op, _ in calls if not op.startswith("Describe")]
    assert order.index("RevokeSecurityGroupIngress") > max(
        i for i, op in enumerate(order) if op.startswith("Authorize")
    )


def test_bad_credentials_are_permanent(world: World) -> None:
    with world.double.enforce_iam(["ec2:DescribeSecurityGroupRules"]):
        client = world.double.client(aws_access_key_id="nobody", aws_secret_access_key="x")
        target = world.target(world.guide_rendering(), client=client)
        with pytest.raises(PermanentTargetError):
            target.observe()
    assert world.calls[("DescribeSecurityGroupRules", "error")] == 1


def test_a_different_owner_sees_our_rules_as_another_owners(world: World) -> None:
    reconcile(world.target(world.guide_rendering()))
    other = ResourceRef("elsewhere", "server", "uid-2")
    observation = world.target(world.guide_rendering(), owner=other).observe()
    assert {i.owner for i in observation.items if i.owner} == {"circleci/server"}
    assert not any(i.owned for i in observation.items)


def test_a_refused_authorise_keeps_the_rules_it_was_to_replace(bare_world: World) -> None:
    """The new rules of one group cannot be added (IAM refuses the call for that group): its old
    rules stay, an error says why, and the other groups' changes of the pass still happen."""
    world = bare_world
    aws = world.aws_spec()
    nomad = world.groups[Role.NOMAD_CLIENTS]
    old = bulk_rules(4)
    reconcile(world.target(render_security_groups(old, aws, OWNER), aws=aws))
    moved = [dataclasses.replace(r, peer=Peer(PeerKind.CIDRS, ("192.168.0.0/24",))) for r in old]
    client = world.double.client()

    def refuse_nomad(params: dict[str, Any], **_: Any) -> None:
        if params.get("GroupId") == nomad:
            raise ClientError(
                {"Error": {"Code": "UnauthorizedOperation", "Message": "not authorized"},
                 "ResponseMetadata": {"HTTPStatusCode": 403}},
                "AuthorizeSecurityGroupIngress",
            )  # fmt: skip

    for op in ("AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress"):
        client.meta.events.register(f"provide-client-params.ec2.{op}", refuse_nomad)

    report = run_pass(
        world.target(render_security_groups(moved, aws, OWNER), aws=aws, client=client)
    )

    assert report.error is None and report.applied is not None
    assert (report.applied.created, report.applied.deleted) == (3 * 4, 3 * 4)
    nomad_now = {r["CidrIpv4"] for r in world.rules(nomad)}
    assert nomad_now == {r.peer.cidrs[0] for r in old if r.subject is Role.NOMAD_CLIENTS}
    assert sum("ec2:AuthorizeSecurityGroup" in e for e in report.applied.errors) == 2
    assert sum("revokes not made" in e for e in report.applied.errors) == 2
