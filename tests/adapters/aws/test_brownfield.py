"""A brownfield AWS account, as CircleCI's install docs leave it plus an NLB Service's rules:
the first Enforce pass adopts what is the guide's, never touches the cloud provider's rules,
and no moment of the pass has less access than both the state before and the state after."""

from __future__ import annotations

from typing import Any

from adapters.aws.world import OWNER, World, capture_calls, run_pass
from server_hardening.ownership import OWNER_TAG, owner_key
from server_hardening.renderers.aws import AtomicRule, parse_rule
from server_hardening.rules import Role

NLB = "a953ad6f802b345fe85f29d793a4e104"


def _add(world: World, group: str, perm: dict[str, Any]) -> str:
    out = world.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[perm])
    return str(out["SecurityGroupRules"][0]["SecurityGroupRuleId"])


def _seed_by_hand(world: World) -> dict[str, str]:
    """Every rule the guide wants, created by hand without tags (the install docs' way), plus
    the NLB rules the Kubernetes cloud provider adds to the nodes' group, plus a team's extra."""
    ids: dict[str, str] = {}
    for atom in world.guide_rendering().atoms:
        if atom.direction.value != "ingress":
            continue
        perm = atom.permission()
        for ranges in ("IpRanges", "Ipv6Ranges", "UserIdGroupPairs", "PrefixListIds"):
            for entry in perm.get(ranges, []):  # type: ignore[attr-defined]
                entry["Description"] = "from the install docs"
        ids[atom.key()] = _add(world, atom.group_id, dict(perm))
    nodes = world.groups[Role.KUBERNETES_NODES]
    for what, perm in (
        ("client", {"IpProtocol": "tcp", "FromPort": 31234, "ToPort": 31234,
                    "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}),
        ("health", {"IpProtocol": "tcp", "FromPort": 31235, "ToPort": 31235,
                    "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}),
        ("mtu", {"IpProtocol": "icmp", "FromPort": 3, "ToPort": 4,
                 "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}),
    ):  # fmt: skip
        perm["IpRanges"][0]["Description"] = f"kubernetes.io/rule/nlb/{what}={NLB}"  # type: ignore[index]
        ids[f"nlb-{what}"] = _add(world, nodes, perm)
    ids["extra"] = _add(
        world,
        world.groups[Role.NOMAD_CLIENTS],
        {"IpProtocol": "tcp", "FromPort": 9090, "ToPort": 9090,
         "IpRanges": [{"CidrIp": "198.51.100.0/24", "Description": "a team's extra"}]},
    )  # fmt: skip
    return ids


def _access(world: World) -> set[str]:
    """What the groups allow now, by meaning (one string per atomic grant)."""
    raw = world.ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": list(world.groups.values())}], MaxResults=1000
    )["SecurityGroupRules"]
    return {parse_rule(rule).key() for rule in raw}


def test_the_first_pass_adopts_the_guides_rules_and_leaves_the_cloud_providers(
    world: World,
) -> None:
    ids = _seed_by_hand(world)
    guide = {a.key() for a in world.guide_rendering().atoms}
    before = _access(world)
    calls = capture_calls(world.ec2)
    snapshots: list[set[str]] = []

    def after_write(**_: Any) -> None:
        snapshots.append(_access(world))

    for op in ("AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress",
               "RevokeSecurityGroupIngress", "RevokeSecurityGroupEgress",
               "ModifySecurityGroupRules", "CreateTags"):  # fmt: skip
        world.ec2.meta.events.register(f"after-call.ec2.{op}", after_write)

    report = run_pass(world.target(world.guide_rendering()), remove_unmanaged=True)

    assert report.error is None and report.applied is not None
    ingress = {k for k in guide if " ingress " in k}
    assert report.applied.adopted == len(ingress)
    # No authorise carries a rule that was adopted: adoption is tags and descriptions only.
    authorised = {
        AtomicRule.key(parse_rule({**rule, "GroupId": params["GroupId"], "IsEgress": False}))
        for op, params in calls
        if op == "AuthorizeSecurityGroupIngress"
        for rule in _flatten(params["IpPermissions"])
    }
    assert not authorised & ingress
    after = {r["SecurityGroupRuleId"]: r for r in world.ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": list(world.groups.values())}], MaxResults=1000
    )["SecurityGroupRules"]}  # fmt: skip
    for key in ingress:
        tags = {t["Key"]: t["Value"] for t in after[ids[key]].get("Tags", [])}
        assert tags[OWNER_TAG] == owner_key(OWNER), key
    # The cloud provider's NLB rules: untouched, and left as the cloud provider's.
    for what in ("client", "health", "mtu"):
        assert ids[f"nlb-{what}"] in after
        assert not after[ids[f"nlb-{what}"]].get("Tags")
    assert report.plan is not None
    left = {item.observed.native_id: item.reason for item in report.plan.leave}
    assert all("cloud provider" in left[ids[f"nlb-{w}"]] for w in ("client", "health", "mtu"))
    # The team's extra rule widens access: removed (Remove), after every add of the pass.
    assert ids["extra"] not in after
    # Not Drifted because of rules identical to the guide: only the extra and the default
    # egress rules were unmanaged widening.
    assert report.drift.missing == 0 and report.drift.modified == 0
    # No moment had less access than both the state before and the state after.
    end = _access(world)
    floor = before & end
    assert snapshots, "the pass wrote"
    for moment in snapshots:
        assert floor <= moment

    again = run_pass(world.target(world.guide_rendering()), previously_managed=len(guide))
    assert again.plan is not None and again.plan.empty
    assert again.drift.total == 0


def _flatten(permissions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """IpPermissions (several peers each) as DescribeSecurityGroupRules-shaped rules."""
    out = []
    for perm in permissions:
        base = {k: perm[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in perm}
        for entry in perm.get("IpRanges", []):
            out.append({**base, "CidrIpv4": entry["CidrIp"]})
        for entry in perm.get("Ipv6Ranges", []):
            out.append({**base, "CidrIpv6": entry["CidrIpv6"]})
        for entry in perm.get("UserIdGroupPairs", []):
            out.append({**base, "ReferencedGroupInfo": {"GroupId": entry["GroupId"]}})
    return out


def test_plan_live_shows_exactly_what_the_next_pass_does(
    world: World, tmp_path: Any, capsys: Any, monkeypatch: Any
) -> None:
    """``hardening plan --live`` (read-only) against the brownfield account, then one Enforce
    pass with ``hardening apply``: every adopt, create and delete it listed is what the pass did,
    and listing wrote nothing."""
    import json

    import yaml

    from server_hardening.cli import main

    ids = _seed_by_hand(world)
    spec = world.spec().model_dump(by_alias=True, exclude_none=True, mode="json")
    spec["kubernetes"] = {"networkPolicies": {"enabled": False}}
    spec["unmanagedRules"] = "Remove"
    resource = {
        "apiVersion": "hardening.circleci.com/v1alpha1",
        "kind": "ServerHardening",
        "metadata": {"name": OWNER.name, "namespace": OWNER.namespace},
        "spec": spec,
    }
    path = tmp_path / "hardening.yaml"
    path.write_text(yaml.safe_dump(resource))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    before = _access(world)
    seeded = {r["SecurityGroupRuleId"] for r in world.rules()}
    world.double.proxy.reset()

    assert main(["plan", "--live", "-f", str(path), "-o", "json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    # Read-only: the rules, and the machines of each role with every layer on them.
    assert "DescribeSecurityGroupRules" in world.double.counts()
    assert all(op.startswith("Describe") for op in world.double.counts()), world.double.counts()
    assert _access(world) == before
    (aws,) = planned["targets"]
    by_action: dict[str, set[str]] = {}
    for action in aws["actions"]:
        by_action.setdefault(action["action"], set()).add(action["id"])
    assert ids["extra"] in by_action["delete"]
    assert {ids[f"nlb-{w}"] for w in ("client", "health", "mtu")} <= by_action["leave"]
    assert {ids[k] for k in ids if not k.startswith(("nlb-", "extra"))} == by_action["adopt"]

    assert main(["apply", "-f", str(path), "-o", "json"]) == 0
    applied = json.loads(capsys.readouterr().out)
    after = {r["SecurityGroupRuleId"] for r in world.rules()}
    assert by_action["delete"].isdisjoint(after)
    assert by_action["adopt"] <= after and by_action["leave"] <= after
    # The pass did what the plan said: the same actions, seen from before the writes.
    assert [t["actions"] for t in applied["targets"]] == [aws["actions"]]
    created = [r for r in world.rules() if r["SecurityGroupRuleId"] not in seeded]
    assert len(created) == len(by_action.get("create", set()))


def test_a_world_open_nodeport_that_backs_nomads_4647_is_sensitive(world: World) -> None:
    """The cloud provider's NLB client rule opens a NodePort to 0.0.0.0/0; behind that NodePort
    is circleci-proxy's 4647. Left alone (the cloud provider's), but reported as what it is."""
    ids = _seed_by_hand(world)
    target = world.target(world.guide_rendering())
    target.policy.node_ports = {31234: ("circleci-proxy", 4647), 31235: ("circleci-proxy", 443)}

    report = run_pass(target, remove_unmanaged=True)

    exposed = [f for f in report.findings if f.code == "WorldOpenSensitivePort"]
    assert len(exposed) == 1
    assert ids["nlb-client"] in exposed[0].message
    assert "NodePort 31234" in exposed[0].message and "port 4647" in exposed[0].message
    assert exposed[0].row == "NOMAD-IN-1"
    assert ids["nlb-client"] in {r["SecurityGroupRuleId"] for r in world.rules()}  # left
