"""Each machine as it is really exposed, on moto: an account built as CircleCI's server-terraform
4.8 builds it (nomad-aws/security_groups.tf at tag 4.8.0: three security groups on every Nomad
client of an Auto Scaling group; 22 from 0.0.0.0/0 on ``circleci-nomad_ssh``; 4646-4648 from
the VPC CIDR on ``nomad_traffic_sg``), with only the nomad group configured."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.aws.world import OWNER, ROLE_KEYS, World
from server_hardening.cli import main
from server_hardening.compiler import compile_intent
from server_hardening.model import ServerHardeningSpec, parse_spec
from server_hardening.reconcile import Event, TargetReport, run_target
from server_hardening.rules import FindingCode, Role
from server_hardening.targets.aws import AwsTarget
from server_hardening.verification import Verdict

VPC_CIDR = "10.0.0.0/16"
SUBNETS = {
    Role.KUBERNETES_NODES: "10.0.0.0/20",
    Role.NOMAD_CLIENTS: "10.0.16.0/20",
    Role.EXTERNAL_VMS: "10.0.32.0/20",
}
ASG = "circleci-test_circleci_nomad_clients_asg"  # server-terraform 3.2.0-4.8.x naming


@dataclass
class Install:
    world: World
    subnets: dict[Role, str]
    ssh_group: str
    traffic_group: str
    nomad_instances: list[str]
    node_instances: list[str]


def _ami(world: World) -> str:
    return str(world.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"])


def server_terraform_48(world: World) -> Install:
    ec2 = world.ec2
    subnets = {
        role: ec2.create_subnet(VpcId=world.vpc, CidrBlock=cidr)["Subnet"]["SubnetId"]
        for role, cidr in SUBNETS.items()
    }
    traffic = ec2.create_security_group(
        GroupName="circleci-test-nomad_traffic_sg",
        Description="Security group that restrict Nomad Client Server communication within VPC",
        VpcId=world.vpc,
    )["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=traffic,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 4646, "ToPort": 4648,
             "IpRanges": [{"CidrIp": VPC_CIDR, "Description": "Allow CircleCI Nomad traffic within VPC"}]}
        ],
    )  # fmt: skip
    ssh = ec2.create_security_group(
        GroupName="circleci-test-circleci-nomad_ssh",
        Description="Security group that allows external users to SSH into nomad instances",
        VpcId=world.vpc,
    )["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=ssh,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ],
    )  # fmt: skip
    ami = _ami(world)
    ec2.create_launch_template(
        LaunchTemplateName="circleci-test-nomad-clients",
        LaunchTemplateData={
            "ImageId": ami,
            "InstanceType": "t3a.2xlarge",
            "SecurityGroupIds": [world.groups[Role.NOMAD_CLIENTS], traffic, ssh],
        },
    )
    autoscaling = world.double_autoscaling()
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=ASG,
        LaunchTemplate={"LaunchTemplateName": "circleci-test-nomad-clients", "Version": "$Latest"},
        MinSize=2,
        MaxSize=2,
        DesiredCapacity=2,
        VPCZoneIdentifier=subnets[Role.NOMAD_CLIENTS],
    )
    nomad = [
        str(i["InstanceId"])
        for i in autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[ASG])[
            "AutoScalingGroups"
        ][0]["Instances"]
    ]
    nodes = ec2.run_instances(
        ImageId=ami,
        MinCount=2,
        MaxCount=2,
        SubnetId=subnets[Role.KUBERNETES_NODES],
        SecurityGroupIds=[world.groups[Role.KUBERNETES_NODES]],
    )["Instances"]
    ec2.run_instances(
        ImageId=ami,
        MinCount=1,
        MaxCount=1,
        SubnetId=subnets[Role.EXTERNAL_VMS],
        SecurityGroupIds=[world.groups[Role.EXTERNAL_VMS]],
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "ManagedBy", "Value": "circleci-machine-provisioner"}],
            }
        ],
    )
    world.double.proxy.reset()
    return Install(world, subnets, ssh, traffic, nomad, [str(n["InstanceId"]) for n in nodes])


def spec_for(world: World, **aws: Any) -> ServerHardeningSpec:
    return parse_spec(
        {
            "serverVersion": "4.8",
            "topology": {
                "kubernetesNodes": {"cidrs": [SUBNETS[Role.KUBERNETES_NODES]]},
                "nomadClients": {"cidrs": [SUBNETS[Role.NOMAD_CLIENTS]]},
                "externalVMs": {"cidrs": [SUBNETS[Role.EXTERNAL_VMS]]},
                "dns": {"cidrs": ["10.0.0.2/32"]},
            },
            "unmanagedRules": "Remove",
            "aws": {
                "region": "us-east-1",
                "securityGroups": {
                    ROLE_KEYS[r]: g for r, g in world.groups.items() if r is not Role.LOAD_BALANCERS
                },
                "endpointUrl": world.double.url,
                **aws,
            },
        }
    )


def run(world: World, spec: ServerHardeningSpec, *, examine: bool = True) -> TargetReport:
    assert spec.aws is not None
    intent = compile_intent(spec)
    target = AwsTarget.from_intent(
        intent, spec.aws, OWNER, client=world.ec2, record_call=world.record, sleep=lambda _s: None
    )
    events: list[Event] = []
    return run_target("aws", lambda: target, spec, 0, events, intent=intent if examine else None)


def rules_of(world: World, group: str) -> list[tuple[Any, ...]]:
    out = world.ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": [group]}]
    )["SecurityGroupRules"]
    return sorted(
        (r["IsEgress"], r["IpProtocol"], r.get("FromPort"), r.get("ToPort"), r.get("CidrIpv4"))
        for r in out
    )


def test_a_second_group_on_the_nomad_clients_opening_ssh_to_the_world_is_found_per_machine(
    world: World,
) -> None:
    install = server_terraform_48(world)
    before = {g: rules_of(world, g) for g in (install.ssh_group, install.traffic_group)}
    spec = spec_for(world, machines={"nomadClients": {"autoScalingGroups": [ASG]}})

    report = run(world, spec)

    world_open = [
        f
        for f in report.findings
        if f.code is FindingCode.WORLD_OPEN_SENSITIVE_PORT and install.ssh_group in f.message
    ]
    assert len(world_open) == 1, [f.message for f in report.findings]
    assert world_open[0].row == "ALL-IN-1"
    assert set(world_open[0].objects) == set(install.nomad_instances)
    assert all(i in world_open[0].message for i in install.nomad_instances)
    widening = [
        f
        for f in report.findings
        if f.code is FindingCode.UNMANAGED_WIDENING and install.traffic_group in f.message
    ]
    assert len(widening) == 1 and "4646-4648" in widening[0].message
    assert report.rows is not None
    ssh_rows = [r for r in report.rows if r.row == "ALL-IN-1" and r.verdict is Verdict.VIOLATED]
    assert ssh_rows, [(r.row, r.verdict) for r in report.rows]
    violated = [
        c
        for r in ssh_rows
        for c in r.checks
        if c.verdict is Verdict.VIOLATED and c.check.destination.role is Role.NOMAD_CLIENTS
    ]
    assert violated and set(violated[0].machines) == set(install.nomad_instances)
    assert any(install.ssh_group in d for d in violated[0].decided_by)
    # Enforce with unmanagedRules: Remove wrote only to the configured groups.
    assert report.applied is not None and report.applied.writes > 0
    assert {g: rules_of(world, g) for g in before} == before


def test_without_the_examination_the_pass_reads_no_machine(world: World) -> None:
    server_terraform_48(world)
    spec = spec_for(world, machines={"nomadClients": {"autoScalingGroups": [ASG]}})

    report = run(world, spec, examine=False)

    assert report.rows is None
    assert not [f for f in report.findings if "circleci-nomad_ssh" in f.message]
    operations = {op for op, _ in world.calls}
    assert "DescribeNetworkInterfaces" not in operations


def test_a_network_acl_denying_4647_between_nodes_and_nomad_clients_blocks_nomad_in_1(
    world: World,
) -> None:
    install = server_terraform_48(world)
    ec2 = world.ec2
    acl = ec2.create_network_acl(VpcId=world.vpc)["NetworkAcl"]["NetworkAclId"]
    entries = [
        (90, "6", "deny", False, SUBNETS[Role.KUBERNETES_NODES], (4647, 4647)),
        (100, "-1", "allow", False, "0.0.0.0/0", None),
        (100, "-1", "allow", True, "0.0.0.0/0", None),
    ]
    for number, protocol, action, egress, cidr, ports in entries:
        extra: dict[str, Any] = {"PortRange": {"From": ports[0], "To": ports[1]}} if ports else {}
        ec2.create_network_acl_entry(
            NetworkAclId=acl, RuleNumber=number, Protocol=protocol, RuleAction=action,
            Egress=egress, CidrBlock=cidr, **extra,
        )  # fmt: skip
    nomad_subnet = install.subnets[Role.NOMAD_CLIENTS]
    current = ec2.describe_network_acls(
        Filters=[{"Name": "association.subnet-id", "Values": [nomad_subnet]}]
    )["NetworkAcls"][0]
    association = next(
        a["NetworkAclAssociationId"]
        for a in current["Associations"]
        if a["SubnetId"] == nomad_subnet
    )
    ec2.replace_network_acl_association(AssociationId=association, NetworkAclId=acl)

    report = run(world, spec_for(world))

    assert report.rows is not None
    nomad_in = [r for r in report.rows if r.row == "NOMAD-IN-1"]
    assert [r.verdict for r in nomad_in] == [Verdict.VIOLATED]
    blocked = [
        f
        for f in report.findings
        if f.code is FindingCode.GUIDE_ROW_BLOCKED and f.row == "NOMAD-IN-1"
    ]
    assert blocked and f"{acl} inbound entry 90" in blocked[0].message, [
        f.message for f in report.findings
    ]


def test_after_apply_every_row_holds_on_machines_that_carry_only_their_role_group(
    world: World,
) -> None:
    ec2 = world.ec2
    ami = _ami(world)
    for role, cidr in SUBNETS.items():
        subnet = ec2.create_subnet(VpcId=world.vpc, CidrBlock=cidr)["Subnet"]["SubnetId"]
        tags = (
            [{"ResourceType": "instance",
              "Tags": [{"Key": "ManagedBy", "Value": "circleci-machine-provisioner"}]}]
            if role is Role.EXTERNAL_VMS
            else []
        )  # fmt: skip
        ec2.run_instances(
            ImageId=ami, MinCount=2, MaxCount=2, SubnetId=subnet,
            SecurityGroupIds=[world.groups[role]], TagSpecifications=tags,
        )  # fmt: skip
    spec = spec_for(world)
    run(world, spec, examine=False)  # first convergence: the guide's rules, unmanaged removed

    report = run(world, spec)

    assert report.rows is not None and report.rows
    verdicts = {(r.row, r.verdict) for r in report.rows}
    assert all(v is Verdict.HOLDS for _, v in verdicts), sorted(
        (r.row, c.check.describe(), c.decided_by)
        for r in report.rows
        for c in r.checks
        if c.verdict is not Verdict.HOLDS
    )
    assert not [
        f
        for f in report.findings
        if f.code in (FindingCode.WORLD_OPEN_SENSITIVE_PORT, FindingCode.GUIDE_ROW_BLOCKED)
    ]


def _resource_file(tmp_path: Path, world: World, **aws: Any) -> Path:
    spec = spec_for(world, **aws).model_dump(by_alias=True, exclude_none=True, mode="json")
    spec["kubernetes"] = {"networkPolicies": {"enabled": False}}
    path = tmp_path / "hardening.yaml"
    body = {
        "apiVersion": "hardening.circleci.com/v1alpha1",
        "kind": "ServerHardening",
        "metadata": {"name": "server", "namespace": "circleci"},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(body))
    return path


def test_verify_says_all_in_1_is_violated_with_the_ssh_group_as_evidence(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install = server_terraform_48(world)
    path = _resource_file(tmp_path, world, machines={"nomadClients": {"autoScalingGroups": [ASG]}})
    before = {g: rules_of(world, g) for g in world.groups.values()}

    code = main(["verify", "-f", str(path), "-o", "json"])

    document = json.loads(capsys.readouterr().out)
    assert code == 3
    ssh = [r for r in document["rows"] if r["row"] == "ALL-IN-1" and r["verdict"] == "violated"]
    evidence = [
        c
        for r in ssh
        for c in r["checks"]
        if c["to"] == "nomadClients" and c["verdict"] == "violated"
    ]
    assert evidence and set(evidence[0]["machines"]) == set(install.nomad_instances)
    assert any(install.ssh_group in d for d in evidence[0]["decidedBy"])
    assert any(
        f["code"] == "WorldOpenSensitivePort" and install.ssh_group in f["message"]
        for f in document["findings"]
    )
    assert "CIS AWS Foundations" in ssh[0]["controls"]
    # Read-only: not one rule changed anywhere.
    assert {g: rules_of(world, g) for g in world.groups.values()} == before

    assert main(["verify", "-f", str(path), "-o", "markdown"]) == 3
    report = capsys.readouterr().out
    assert "| ALL-IN-1 | aws | violated |" in report and install.ssh_group in report


def test_verify_exits_2_on_bad_input_naming_the_field(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _resource_file(tmp_path, world)
    path.write_text(path.read_text().replace("region: us-east-1", "region: nowhere"))

    assert main(["verify", "-f", str(path)]) == 2
    assert "spec.aws.region" in capsys.readouterr().err


def test_a_selector_that_matches_nothing_is_a_finding_naming_the_field(world: World) -> None:
    server_terraform_48(world)
    spec = spec_for(
        world,
        machines={
            "nomadClients": {"autoScalingGroups": [ASG, "no-such-asg"]},
            "kubernetesNodes": {"instanceTags": {"eks:nodegroup-name": "absent"}},
        },
    )

    report = run(world, spec)

    unmatched = sorted(
        f.message for f in report.findings if f.code is FindingCode.MACHINE_SELECTOR_UNMATCHED
    )
    assert len(unmatched) == 2, [f.message for f in report.findings]
    assert unmatched[0].startswith("spec.aws.machines.kubernetesNodes.instanceTags")
    assert unmatched[1].startswith("spec.aws.machines.nomadClients.autoScalingGroups")
    assert "'no-such-asg'" in unmatched[1]
