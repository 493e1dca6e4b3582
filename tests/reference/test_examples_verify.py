"""Every example in examples/ that configures a cloud, set up on the doubles as the operator's
docs tell users to set it up (docs/aws.md, docs/gcp.md): each role's machines in the role's own
subnet carrying only the role's configured security group (AWS) or target tag (GCP). Then
``hardening apply`` (the CLI's one Enforce pass) and ``hardening verify``: every row of the
guide holds on the effective state of the machines, and verify exits 0.

The machines are derived from the example's spec (its roles, their CIDRs, groups and tags),
never listed by hand; the examples' security group IDs are replaced by moto's (moto makes its
own IDs). The Kubernetes target is switched off: these are the clouds' rows.

Then GKE's own rules on the default network's address space: its ``-vms`` rule lets the Nomad
clients and VMs reach the nodes on ports no check of the guide asks about; it is reported on the
effective state, and left alone.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapters.aws.double import MotoDouble
from adapters.gcp.gcp_support import anonymous
from builders import EXAMPLES
from cli_run import run as hardening
from fakes.gcp_compute import FakeCompute
from server_hardening.model import ServerHardeningSpec, configured_by_role, parse_spec
from server_hardening.rules import Role
from server_hardening.targets.aws.machines import PROVISIONER_TAG, PROVISIONER_VALUES

MACHINES_PER_ROLE = 2
# What a machine set up as the docs say must not show after apply (the default egress rule of a
# new AWS group stays an UnmanagedWidening warning with unmanagedRules: Report, as documented).
ALARMING = {"WorldOpenSensitivePort", "GuideRowBlocked", "MachineSelectorUnmatched",
            "MachinesUnreadable"}  # fmt: skip


def _examples(section: str) -> list[Any]:
    out = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        if section in (yaml.safe_load(path.read_text()).get("spec") or {}):
            out.append(pytest.param(path, id=path.stem))
    return out


def _role_cidrs(spec: ServerHardeningSpec) -> dict[Role, list[str]]:
    """The roles whose machines the clouds govern, with the subnets the example gives them."""
    topology = spec.topology
    out = {
        Role.KUBERNETES_NODES: topology.kubernetes_nodes.cidrs,
        Role.NOMAD_CLIENTS: topology.nomad_clients.cidrs,
    }
    if topology.external_vms.enabled:
        out[Role.EXTERNAL_VMS] = topology.external_vms.cidrs
    if topology.nomad_servers is not None:
        out[Role.NOMAD_SERVERS] = topology.nomad_servers.cidrs
    return out


def _hosts(cidr: str, count: int) -> list[str]:
    net = ipaddress.ip_network(cidr)
    return [str(net.network_address + 10 + i) for i in range(count)]


def _supernet(cidrs: list[str]) -> str:
    """The smallest network holding every CIDR (the VPC the example's subnets are cut from)."""
    nets = [ipaddress.ip_network(c) for c in cidrs]
    candidate = nets[0]
    while not all(n.subnet_of(candidate) for n in nets):  # type: ignore[arg-type]
        candidate = candidate.supernet()
    return str(candidate)


def _resource_file(tmp_path: Path, example: Path, spec: dict[str, Any]) -> Path:
    document = yaml.safe_load(example.read_text())
    spec["kubernetes"] = {**spec.get("kubernetes", {}), "networkPolicies": {"enabled": False}}
    document["spec"] = spec
    path = tmp_path / example.name
    path.write_text(yaml.safe_dump(document))
    return path


def _apply_then_verify(path: Path) -> dict[str, Any]:
    """``hardening apply`` then ``hardening verify``: every row holds, exit 0, and no finding
    that machines set up as documented must not show."""
    applied = hardening("apply", "-f", str(path), "-o", "json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    verified = hardening("verify", "-f", str(path), "-o", "json")
    document: dict[str, Any] = json.loads(verified.stdout)
    not_holding = [
        (row["row"], row["target"], check["from"], check["to"], check["port"], check["result"],
         check["decidedBy"])
        for row in document["rows"]
        if row["verdict"] != "holds"
        for check in row["checks"]
        if check["verdict"] != "holds"
    ]  # fmt: skip
    assert not not_holding, not_holding
    assert document["rows"], document
    assert all(t["examined"] and not t["error"] for t in document["targets"]), document["targets"]
    assert verified.returncode == 0, verified.stdout + verified.stderr
    alarming = [f["message"] for f in document["findings"]
                if f["code"] in ALARMING or f["severity"] == "error"]  # fmt: skip
    assert not alarming, alarming
    return document


# ------------------------------------------------------------------------------------------------
# AWS


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def _build_aws(double: MotoDouble, spec: ServerHardeningSpec) -> dict[str, str]:
    """The example's account: a VPC holding its subnets, one group per configured role, and
    each governed role's instances in its subnets carrying only that role's group. Returns the
    example's group IDs -> moto's."""
    assert spec.aws is not None
    ec2 = double.client()
    roles = _role_cidrs(spec)
    vpc = ec2.create_vpc(CidrBlock=_supernet([c for cs in roles.values() for c in cs]))["Vpc"]
    groups: dict[str, str] = {}
    by_role: dict[Role, str] = {}
    for role, example_id in configured_by_role(spec.aws.security_groups).items():
        made = ec2.create_security_group(
            GroupName=f"circleci-{role.value}", Description=role.value, VpcId=vpc["VpcId"]
        )["GroupId"]
        groups[example_id] = made
        by_role[role] = made
    image = str(ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"])
    for role, cidrs in roles.items():
        for cidr in cidrs:
            subnet = ec2.create_subnet(VpcId=vpc["VpcId"], CidrBlock=cidr)["Subnet"]["SubnetId"]
            tags: list[Any] = []
            if role is Role.EXTERNAL_VMS:  # the machine provisioner tags the VMs it starts
                tags = [{"ResourceType": "instance",
                         "Tags": [{"Key": PROVISIONER_TAG, "Value": PROVISIONER_VALUES[0]}]}]  # fmt: skip
            for address in _hosts(cidr, MACHINES_PER_ROLE):
                ec2.run_instances(
                    ImageId=image, MinCount=1, MaxCount=1, SubnetId=subnet,
                    PrivateIpAddress=address, SecurityGroupIds=[by_role[role]],
                    TagSpecifications=tags,
                )  # fmt: skip
    return groups


@pytest.mark.parametrize("example", _examples("aws"))
def test_after_apply_every_row_of_an_aws_example_holds(
    example: Path, moto_double: MotoDouble, aws_env: None, tmp_path: Path
) -> None:
    moto_double.reset()
    spec = parse_spec(yaml.safe_load(example.read_text())["spec"])
    groups = _build_aws(moto_double, spec)
    body = yaml.safe_load(example.read_text())["spec"]
    body["aws"]["securityGroups"] = {
        key: groups[value] for key, value in body["aws"]["securityGroups"].items()
    }
    body["aws"]["endpointUrl"] = moto_double.url

    document = _apply_then_verify(_resource_file(tmp_path, example, body))

    assert {r["target"] for r in document["rows"]} == {"aws"}


# ------------------------------------------------------------------------------------------------
# GCP


@pytest.fixture
def gcp_anonymous(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("server_hardening.targets.gcp.adapter.make_clients", anonymous)


def _build_gcp(fake: FakeCompute, spec: ServerHardeningSpec) -> None:
    """The example's project: its network, and each governed role's instances in its subnets
    carrying the role's target tag (GKE's nodes with their pod ranges as alias IPs)."""
    assert spec.gcp is not None
    tags = configured_by_role(spec.gcp.target_tags)
    fake.add_network(spec.gcp.project, spec.gcp.network)
    pods = spec.topology.kubernetes_pods.cidrs if spec.topology.kubernetes_pods else []
    pod_ranges = ipaddress.ip_network(pods[0]).subnets(new_prefix=24) if pods else iter(())
    for role, cidrs in _role_cidrs(spec).items():
        addresses = [a for cidr in cidrs for a in _hosts(cidr, MACHINES_PER_ROLE)]
        for i, address in enumerate(addresses):
            alias = [str(next(pod_ranges))] if role is Role.KUBERNETES_NODES and pods else []
            fake.seed_instance(
                spec.gcp.project, f"{role.value.lower()}-{i}", network=spec.gcp.network,
                ip=address, tags=[tags[role]], alias_ranges=alias,
            )  # fmt: skip


@pytest.mark.parametrize("example", _examples("gcp"))
def test_after_apply_every_row_of_a_gcp_example_holds(
    example: Path, fake: FakeCompute, gcp_anonymous: None, tmp_path: Path
) -> None:
    spec = parse_spec(yaml.safe_load(example.read_text())["spec"])
    _build_gcp(fake, spec)
    body = yaml.safe_load(example.read_text())["spec"]
    body["gcp"]["endpoint"] = fake.url

    document = _apply_then_verify(_resource_file(tmp_path, example, body))

    assert {r["target"] for r in document["rows"]} == {"gcp"}


# ------------------------------------------------------------------------------------------------
# GKE's own rules on the default network's address space (examples/gcp-v3.yaml)

GKE_CLUSTER = "gke-circleci-1a2b3c4d"


def _gke_rules(spec: ServerHardeningSpec) -> list[dict[str, Any]]:
    """GKE's firewalls for a cluster on an auto-mode network, as GKE makes them: ``-all`` from
    the pod range, ``-master`` from the control plane, ``-vms`` from 10.128.0.0/9 (every
    auto-mode subnet, the example's Nomad and VM subnets among them) on every port."""
    assert spec.gcp is not None and spec.topology.kubernetes_pods is not None
    every_port = [{"IPProtocol": "tcp", "ports": ["1-65535"]},
                  {"IPProtocol": "udp", "ports": ["1-65535"]}, {"IPProtocol": "icmp"}]  # fmt: skip
    rules = [
        ("all", spec.topology.kubernetes_pods.cidrs, [{"IPProtocol": "all"}]),
        ("master", ["172.16.0.0/28"], [{"IPProtocol": "tcp", "ports": ["443", "10250"]}]),
        ("vms", ["10.128.0.0/9"], every_port),
    ]
    return [
        {"name": f"{GKE_CLUSTER}-{suffix}", "network": f"global/networks/{spec.gcp.network}",
         "direction": "INGRESS", "priority": 1000, "sourceRanges": sources, "allowed": allowed,
         "targetTags": [spec.gcp.target_tags.kubernetes_nodes]}
        for suffix, sources, allowed in rules
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("restrict_egress", "code"),
    [(False, "UnmanagedWidening"), (True, "UnmanagedRuleShadowed")],
    ids=["open-egress", "egress-floor"],
)
def test_gkes_vms_rule_is_reported_on_every_port_no_row_lists_and_left_alone(
    fake: FakeCompute, gcp_anonymous: None, tmp_path: Path, restrict_egress: bool, code: str
) -> None:
    """GKE's ``-vms`` rule lets the Nomad clients and VMs reach the nodes on every port; no
    check of the guide asks about most of them. Reported, with the ports and GKE's remedy;
    with the Nomad clients' and VMs' egress floor in place it is stopped there (info). Never
    written, even with unmanagedRules: Remove; every row still holds."""
    example = EXAMPLES / "gcp-v3.yaml"
    body = yaml.safe_load(example.read_text())["spec"]
    body["gcp"].update(endpoint=fake.url, restrictEgress=restrict_egress)
    body["unmanagedRules"] = "Remove"
    spec = parse_spec(body)
    assert spec.gcp is not None
    _build_gcp(fake, spec)
    for rule in _gke_rules(spec):
        fake.seed(spec.gcp.project, rule)
    gke = {name: rule for name, rule in fake.rules(spec.gcp.project).items()
           if name.startswith(GKE_CLUSTER)}  # fmt: skip

    document = _apply_then_verify(_resource_file(tmp_path, example, body))

    vms = f"{GKE_CLUSTER}-vms"
    about = [f for f in document["findings"] if f["message"].startswith(f"firewall {vms} (GKE)")]
    assert {f["code"] for f in about} == {code}, [f["message"] for f in document["findings"]]
    senders = {f["message"].split(" instances ")[0].rsplit(" ", 1)[1] for f in about}
    assert senders == {"nomadClients", "externalVMs"}
    for finding in about:
        assert (
            "kubernetesNodes instances kubernetesnodes-0, kubernetesnodes-1" in finding["message"]
        )
        assert "udp 1-65535" in finding["message"]
        assert "10.128.0.0/9" in finding["message"] and "restores it" in finding["message"]
    # GKE's other rules admit no governed role's machines; none of GKE's rules was written.
    assert not [f for f in document["findings"] if f"{GKE_CLUSTER}-all" in f["message"]]
    assert {name: rule for name, rule in fake.rules(spec.gcp.project).items()
            if name.startswith(GKE_CLUSTER)} == gke  # fmt: skip
