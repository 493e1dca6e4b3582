"""Every call the AWS adapter makes, on every path, authorized against the shipped IAM policy
with its resource ARNs and conditions (``tests/iam``): moto ignores both, so the calls are
recorded through a botocore hook, turned into the requests AWS authorizes, evaluated, and a
call the policy does not allow is answered ``UnauthorizedOperation`` before it is sent, as EC2
would. Each path then has to succeed under that enforcement.

Dropping any one statement of the policy must refuse at least one recorded call, named."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from adapters.aws.double import REGION, MotoDouble
from adapters.aws.world import OWNER, World, make_world, reconcile, run_pass
from iam.aws_requests import (
    RecordedCall,
    enforce_policy,
    refusals,
    requests_for,
    rule_tags,
)
from server_hardening.ownership import OWNER_TAG, owner_key
from server_hardening.rules import Role
from server_hardening.targets.aws import AwsTarget, adapter
from server_hardening.targets.aws.errors import POLICY_STATEMENTS

REPO = Path(__file__).resolve().parents[3]
POLICY = REPO / "deploy/aws/iam-policy.json"
PLACEHOLDERS = {
    Role.KUBERNETES_NODES: "SG_KUBERNETES_NODES",
    Role.NOMAD_CLIENTS: "SG_NOMAD_CLIENTS",
    Role.EXTERNAL_VMS: "SG_EXTERNAL_VMS",
    Role.LOAD_BALANCERS: "SG_LOAD_BALANCERS",
}


def shipped_policy(world: World) -> dict[str, Any]:
    """deploy/aws/iam-policy.json filled in as its header says, for this world."""
    text = POLICY.read_text()
    for role, placeholder in PLACEHOLDERS.items():
        text = text.replace(placeholder, world.groups[role])
    text = text.replace("REGION", REGION).replace("ACCOUNT_ID", "123456789012")
    text = text.replace("NAMESPACE/NAME", owner_key(OWNER))
    return dict(json.loads(text))


@dataclass
class Run:
    """One world whose target client is under the shipped policy."""

    world: World
    policy: dict[str, Any]
    calls: list[RecordedCall]
    client: Any

    def target(self, **kwargs: Any) -> AwsTarget:
        return self.world.target(self.world.guide_rendering(**kwargs), client=self.client)


def under_policy(world: World, policy: dict[str, Any] | None = None) -> Run:
    policy = policy or shipped_policy(world)
    client = world.double.client()
    calls = enforce_policy(client, "ec2", policy, rule_tags(world.ec2), region=REGION)
    return Run(world, policy, calls, client)


def converge(world: World) -> None:
    """Set up outside the policy: the guide's rules, created and owned."""
    reconcile(world.target(world.guide_rendering()))


def _seed_guide_by_hand(world: World) -> dict[str, str]:
    """Every inbound guide rule, made by hand without tags (the install docs' way)."""
    ids: dict[str, str] = {}
    for atom in world.guide_rendering().atoms:
        if atom.direction.value != "ingress":
            continue
        perm: Any = atom.permission()
        for ranges in ("IpRanges", "Ipv6Ranges", "UserIdGroupPairs", "PrefixListIds"):
            for entry in perm.get(ranges, []):
                entry["Description"] = "from the install docs"
        out = world.ec2.authorize_security_group_ingress(
            GroupId=atom.group_id, IpPermissions=[perm]
        )
        ids[atom.key()] = str(out["SecurityGroupRules"][0]["SecurityGroupRuleId"])
    return ids


def _tags_by_id(world: World) -> dict[str, dict[str, str]]:
    return {
        r["SecurityGroupRuleId"]: {t["Key"]: t["Value"] for t in r.get("Tags", [])}
        for r in world.rules()
    }


# ------------------------------------------------------------------------------------------
# The paths: each sets its world up outside the policy, then runs the product under it.


def observe(world: World) -> Run:
    converge(world)
    run = under_policy(world)
    report = run_pass(run.target(), apply=False)
    assert report.error is None and report.plan is not None and report.plan.empty
    return run


def observe_an_empty_group(world: World) -> Run:
    """A managed group with no rule at all: observe also asks whether it exists."""
    for group in world.groups.values():
        world.ec2.revoke_security_group_egress(
            GroupId=group,
            IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        )
    run = under_policy(world)
    report = run_pass(run.target(), apply=False)
    assert report.error is None and report.plan is not None and report.plan.create
    assert any(c.operation == "DescribeSecurityGroups" for c in run.calls)
    return run


def examine_machines(world: World) -> Run:
    """The machines of each role, read-only: the interfaces in the managed groups, their
    instances, every group on them, their subnets and network ACLs, and the Auto Scaling groups
    and instance tags the spec selects a role's machines by."""
    converge(world)
    subnet = world.ec2.create_subnet(VpcId=world.vpc, CidrBlock="10.0.16.0/24")["Subnet"][
        "SubnetId"
    ]
    world.ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=subnet,
        SecurityGroupIds=[world.groups[Role.NOMAD_CLIENTS]],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "role", "Value": "nomad"}]}],
    )  # fmt: skip
    run = under_policy(world)
    selectors = {
        "nomadClients": {"autoScalingGroups": ["nomad-clients"], "instanceTags": {"role": "nomad"}}
    }
    target = world.target(
        world.guide_rendering(), aws=world.aws_spec(machines=selectors), client=run.client
    )
    made = adapter.autoscaling_client_like

    def autoscaling_under_policy(ec2: Any, aws: Any) -> Any:
        client = made(ec2, aws)
        enforce_policy(
            client, "autoscaling", run.policy, rule_tags(world.ec2), region=REGION, into=run.calls
        )
        return client

    target.observe()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(adapter, "autoscaling_client_like", autoscaling_under_policy)
        machines = target.observe_machines()
    assert machines is not None
    return run


def create(world: World) -> Run:
    run = under_policy(world)
    _, result = reconcile(run.target())
    assert result is not None and result.created > 0 and not result.errors
    return run


def adopt(world: World) -> Run:
    """Brownfield: the guide's inbound rules exist, hand-made; they are adopted in place."""
    ids = _seed_guide_by_hand(world)
    run = under_policy(world)
    report = run_pass(run.target(), remove_unmanaged=True)
    assert report.error is None and report.applied is not None, report.last_error
    assert report.applied.adopted == len(ids) and not report.applied.errors
    tags = _tags_by_id(world)
    assert all(tags[rule][OWNER_TAG] == owner_key(OWNER) for rule in ids.values())
    return run


def take_back(world: World) -> Run:
    """Rules this resource made, orphaned (marks dropped), are marked again by the next pass."""
    converge(world)
    target = world.target(world.guide_rendering())
    target.release(target.observe(), delete=False)
    run = under_policy(world)
    _, result = reconcile(run.target())
    assert result is not None and result.adopted > 0 and not result.errors
    assert result.created == 0
    return run


def modify(world: World) -> Run:
    converge(world)
    nomad = world.groups[Role.NOMAD_CLIENTS]
    rule = next(r for r in world.rules(nomad) if OWNER_TAG in {t["Key"] for t in r.get("Tags", [])})
    world.ec2.modify_security_group_rules(
        GroupId=nomad,
        SecurityGroupRules=[
            {
                "SecurityGroupRuleId": rule["SecurityGroupRuleId"],
                "SecurityGroupRule": {
                    "IpProtocol": rule["IpProtocol"],
                    "FromPort": rule["FromPort"],
                    "ToPort": rule["ToPort"],
                    **(
                        {"CidrIpv4": rule["CidrIpv4"]}
                        if "CidrIpv4" in rule
                        else {"ReferencedGroupId": rule["ReferencedGroupInfo"]["GroupId"]}
                    ),
                    "Description": "edited by hand",
                },
            }
        ],
    )
    run = under_policy(world)
    _, result = reconcile(run.target())
    assert result is not None and result.updated == 1 and not result.errors
    return run


def revoke(world: World) -> Run:
    """Remove: the unmanaged default egress rules go, and so do owned rules no longer desired
    (three of the guide's, in both directions)."""
    converge(world)
    run = under_policy(world)
    guide = world.guide_rendering()
    fewer = dataclasses.replace(guide, atoms=guide.atoms[2:-2])
    report = run_pass(world.target(fewer, client=run.client), remove_unmanaged=True)
    assert report.error is None and report.applied is not None, report.last_error
    assert report.applied.deleted > 0 and report.applied.removed_unmanaged > 0
    return run


def release_delete(world: World) -> Run:
    converge(world)
    run = under_policy(world)
    target = run.target()
    result = target.release(target.observe(), delete=True)
    assert result.deleted > 0 and not result.errors
    return run


def release_orphan(world: World) -> Run:
    converge(world)
    run = under_policy(world)
    target = run.target()
    result = target.release(target.observe(), delete=False)
    assert not result.errors
    assert not any(OWNER_TAG in tags for tags in _tags_by_id(world).values())
    return run


def adopt_with_tagging_refused(world: World) -> Run:
    """The same brownfield, with every standalone CreateTags refused (an older policy): the
    creates and revokes of the pass still happen, under the shipped policy."""
    ids = _seed_guide_by_hand(world)
    run = under_policy(world)

    def refuse_standalone_tagging(**_: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "UnauthorizedOperation", "Message": "not authorized"},
             "ResponseMetadata": {"HTTPStatusCode": 403}},
            "CreateTags",
        )  # fmt: skip

    run.client.meta.events.register("before-call.ec2.CreateTags", refuse_standalone_tagging)
    report = run_pass(run.target(), remove_unmanaged=True)
    assert report.error is None and report.applied is not None, report.last_error
    assert report.applied.adopted == 0 and report.applied.created > 0
    assert report.applied.removed_unmanaged > 0
    assert any("ec2:CreateTags" in e for e in report.applied.errors)
    assert set(ids.values()) <= set(_tags_by_id(world))  # nothing hand-made was revoked
    return run


PATHS: dict[str, Callable[[World], Run]] = {
    "observe": observe,
    "observe an empty group": observe_an_empty_group,
    "examine the machines": examine_machines,
    "create": create,
    "adopt": adopt,
    "take back": take_back,
    "modify": modify,
    "revoke": revoke,
    "release Delete": release_delete,
    "release Orphan": release_orphan,
    "adopt, tagging refused": adopt_with_tagging_refused,
}


@pytest.fixture(scope="module")
def runs(moto_double: MotoDouble) -> dict[str, Run]:
    return {name: path(make_world(moto_double)) for name, path in PATHS.items()}


def assert_allowed(policy: dict[str, Any], calls: list[RecordedCall]) -> None:
    refused = refusals(policy, calls, REGION)
    assert not refused, "refused:\n" + "\n".join(str(r) for r in refused)


@pytest.mark.parametrize("path", list(PATHS))
def test_every_call_of_the_path_is_allowed_by_the_shipped_policy(
    runs: dict[str, Run], path: str
) -> None:
    run = runs[path]
    assert run.calls, "the path made no call"
    assert_allowed(run.policy, run.calls)


def test_a_refused_call_names_a_statement_the_policy_has(runs: dict[str, Run]) -> None:
    """The error of a refused call names the statement that grants it: every call made has
    one, and the names are the policy's."""
    sids = set(_sids())
    made = {c.operation for run in runs.values() for c in run.calls}
    assert made <= set(POLICY_STATEMENTS)
    for named in POLICY_STATEMENTS.values():
        assert any(named.startswith(sid) for sid in sids), named
        assert all(
            sid in sids for sid in re.findall(r"\b[A-Z][A-Za-z]+Only\b|\bRead[A-Za-z]+", named)
        )


def _sids() -> list[str]:
    return [str(s["Sid"]) for s in json.loads(POLICY.read_text())["Statement"]]


@pytest.mark.parametrize("sid", _sids())
def test_dropping_a_statement_refuses_a_call_and_names_it(runs: dict[str, Run], sid: str) -> None:
    messages: dict[str, str] = {}
    for name, run in runs.items():
        kept = [s for s in run.policy["Statement"] if s["Sid"] != sid]
        assert len(kept) == len(run.policy["Statement"]) - 1
        try:
            assert_allowed({**run.policy, "Statement": kept}, run.calls)
        except AssertionError as error:
            messages[name] = str(error)
    assert messages, (
        f"no call of any path needs {sid}: the policy grants more than the product uses"
    )
    for message in messages.values():
        # "<service>:<Operation> <resource>: <action> on <ARN> [...]: no statement allows it"
        assert message.startswith("refused:\n")
        assert "no statement allows it" in message


def test_every_action_the_policy_grants_is_called_on_some_path(runs: dict[str, Run]) -> None:
    granted = {
        action
        for statement in json.loads(POLICY.read_text())["Statement"]
        for action in (
            [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        )
    }
    called = {r.action for run in runs.values() for c in run.calls for r in requests_for(c, REGION)}
    assert called == granted, "an action no path calls is excess privilege"


def test_the_tag_on_create_only_statement_would_refuse_adoption(runs: dict[str, Run]) -> None:
    """The statement this policy replaced (CreateTags only with ec2:CreateAction): under it, every
    standalone CreateTags of an adoption is refused, which moto never showed."""
    run = runs["adopt"]
    policy = json.loads(json.dumps(run.policy))
    [marking] = [s for s in policy["Statement"] if s["Sid"] == "MarkRulesAsThisResourcesOnly"]
    marking["Condition"] = {
        "StringEquals": {
            "ec2:CreateAction": ["AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress"]
        }
    }
    refused = refusals(policy, run.calls, REGION)
    assert refused
    assert {r.call.operation for r in refused} == {"CreateTags"}
    assert all(
        r.request.resource.split(":")[-1].startswith("security-group-rule/sgr-") for r in refused
    )


def _tagging(run: Run, tags: list[dict[str, str]], existing: dict[str, str]) -> RecordedCall:
    return RecordedCall(
        "ec2", "CreateTags", {"Resources": ["sgr-0123456789abcdef0"], "Tags": tags},
        {"sgr-0123456789abcdef0": existing},
    )  # fmt: skip


def test_the_policy_lets_the_operator_mark_rules_only_as_its_own(runs: dict[str, Run]) -> None:
    run = runs["adopt"]
    ours = {"Key": OWNER_TAG, "Value": owner_key(OWNER)}
    allowed = _tagging(run, [ours], {})
    assert refusals(run.policy, [allowed], REGION) == []
    assert (
        refusals(run.policy, [_tagging(run, [ours], {OWNER_TAG: owner_key(OWNER)})], REGION) == []
    )
    for tags, existing in (
        ([ours], {OWNER_TAG: "another/resource"}),  # another resource's rule
        ([{"Key": OWNER_TAG, "Value": "another/resource"}], {}),  # marking for someone else
        ([ours, {"Key": "Name", "Value": "x"}], {}),  # a tag that is not the product's
        ([{"Key": "hardening.circleci.com/owner-uid", "Value": "u"}], {}),  # no owner tag
    ):
        assert refusals(run.policy, [_tagging(run, tags, existing)], REGION), (tags, existing)
