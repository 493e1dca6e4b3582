"""Truth table: the rendered security groups evaluated the way AWS evaluates them
(tests/truth/aws_eval.py) over the guide's probe matrix (tests/truth/probes.py), plus the flows
through the load balancers, which have a group of their own on AWS."""

from __future__ import annotations

from typing import Any

import pytest

from builders import OWNER, make_spec
from server_hardening.compiler import compile_intent
from server_hardening.model import ServerHardeningSpec
from server_hardening.renderers.aws import RenderedSecurityGroups, render_security_groups
from server_hardening.rules import Role
from truth import probes as guide
from truth.aws_eval import Host, explain, verdict, with_extra

GROUPS = {
    "kubernetesNodes": "sg-0000000000000000a",
    "nomadClients": "sg-0000000000000000b",
    "externalVMs": "sg-0000000000000000c",
    "loadBalancers": "sg-0000000000000000d",
    "nomadServers": "sg-0000000000000000e",
}
ROLE_KEY = {
    Role.KUBERNETES_NODES: "kubernetesNodes",
    Role.NOMAD_CLIENTS: "nomadClients",
    Role.EXTERNAL_VMS: "externalVMs",
    Role.LOAD_BALANCERS: "loadBalancers",
    Role.NOMAD_SERVERS: "nomadServers",
}
LB_IP = "10.0.200.5"  # in the node subnet (the default for loadBalancers.cidrs)


def spec_with_aws(groups: dict[str, str] | None = None, **changes: Any) -> ServerHardeningSpec:
    aws = {"region": "us-east-1", "securityGroups": dict(GROUPS if groups is None else groups)}
    return make_spec(aws=aws, **changes)


def rendered(spec: ServerHardeningSpec) -> RenderedSecurityGroups:
    assert spec.aws is not None
    return render_security_groups(compile_intent(spec).cloud_rules("aws"), spec.aws, OWNER)


def host(spec: ServerHardeningSpec, ep: guide.Endpoint) -> Host:
    assert spec.aws is not None
    if ep.role is None:
        return Host(ep.label, ep.ip)
    group = spec.aws.security_groups.model_dump(by_alias=True).get(ROLE_KEY[ep.role])
    return Host(ep.label, ep.ip, (group,) if group else ())


def hosts(spec: ServerHardeningSpec) -> dict[str, Host]:
    out = {k: host(spec, v) for k, v in guide.endpoints(spec).items()}
    assert spec.aws is not None
    lb_group = spec.aws.security_groups.load_balancers
    out["lb"] = Host("lb", LB_IP, (lb_group,) if lb_group else ())
    return out


CASES: dict[str, dict[str, Any]] = {
    "v3 defaults": {},
    "v3 admin SSH from an office": {
        "access.adminSSH": {"enabled": True, "sources": ["203.0.113.0/24"]}
    },
    "v3 SSH rerun off": {"access.sshRerun": {"enabled": False}},
    "v3 DNS set": {"topology.dns": {"cidrs": ["10.0.0.2/32"]}},
    "v3 external narrowed to a proxy": {"topology.external": {"cidrs": ["192.0.2.10/32"]}},
    "v4.2": {"serverVersion": "4.2"},
    "v4.3": {"serverVersion": "4.3"},
    "v4.8 external Nomad servers": {
        "serverVersion": "4.8",
        "topology.nomadServers": {"cidrs": ["10.3.0.0/24"]},
    },
    "v3 no external VMs": {"topology.externalVMs": {"enabled": False}},
    "v3 transparent load balancers": {"topology.loadBalancers": {"transparent": True}},
    "v4.10 podman": {
        "serverVersion": "4.10",
        "topology.nomadClients": {"cidrs": ["10.1.0.0/16"], "runtime": "podman"},
    },
    "v4.10 pods with addresses of their own": {
        "serverVersion": "4.10",
        "topology.kubernetesPods": {"cidrs": ["10.100.0.0/16"]},
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_guide_holds_in_security_groups(case: str) -> None:
    spec = spec_with_aws(**CASES[case])
    groups = rendered(spec).groups
    failures, decided = [], 0
    for probe in guide.guide_probes(spec):
        src, dst = host(spec, probe.source), host(spec, probe.destination)
        got = verdict(groups, src, dst, probe.protocol, probe.port)
        if got is None:
            continue
        decided += 1
        if got != probe.expected:
            failures.append(f"{probe}: {explain(groups, src, dst, probe.protocol, probe.port)}")
    assert failures == []
    assert decided > 10


LB_FLOWS = [
    # (source, destination, port, allowed, row)
    ("outsider", "lb", 80, True, "LB-IN-1"),
    ("outsider", "lb", 443, True, "LB-IN-2"),
    ("nomad", "lb", 3000, True, "LB-IN-3 + NOMAD-OUT-2"),
    ("nomad", "lb", 4647, True, "LB-IN-4 + NOMAD-OUT-3"),
    ("nomad", "lb", 8585, True, "LB-IN-5 + NOMAD-OUT-4"),
    ("lb", "k8s", 30000, True, "LB-OUT-1 + K8S-IN-1"),
    ("lb", "k8s", 32767, True, "LB-OUT-1 + K8S-IN-1"),
    ("outsider", "lb", 4647, False, "LB-IN-4: Nomad clients only"),
    ("outsider", "lb", 22, False, "unlisted"),
    ("vm", "lb", 4647, False, "LB-IN-4: Nomad clients only"),
    ("outsider", "k8s", 30000, False, "K8S-IN-1: load balancers only"),
    ("nomad", "k8s", 30000, False, "K8S-IN-1: load balancers only"),
    ("lb", "k8s", 5432, False, "LB-OUT-1: NodePorts only"),
    ("k8s", "k8s2", 10250, True, "K8S-OUT-3 + K8S-IN-2"),
    ("nomad", "nomad2", 22, False, "NOMAD-ISO-1 (ALL-OUT-4 alone does not make it)"),
    ("nomad", "nomad2", 80, False, "NOMAD-ISO-1 (egress 80 to external includes the subnet)"),
    ("vm", "vm2", 443, False, "VM-ISO-1 (egress 443 to external includes the subnet)"),
    ("nomad", "outsider", 8080, False, "egress: 80/443/22 only"),
    ("k8s", "outsider", 25, False, "egress: 80/443/22 only"),
]


@pytest.mark.parametrize(("src", "dst", "port", "expected", "row"), LB_FLOWS)
def test_flows_through_the_load_balancer_group(
    src: str, dst: str, port: int, expected: bool, row: str
) -> None:
    spec = spec_with_aws()
    groups = rendered(spec).groups
    eps = hosts(spec)
    got = verdict(groups, eps[src], eps[dst], "tcp", port)
    assert got is expected, f"{row}: {explain(groups, eps[src], eps[dst], 'tcp', port)}"


def test_isolation_rows_are_written_as_nothing() -> None:
    spec = spec_with_aws()
    result = rendered(spec)
    for group in result.groups:
        for direction in ("ingress", "egress"):
            for perm in group[direction]:
                for pair in perm.get("UserIdGroupPairs", []):
                    assert "ISO" not in pair["Description"]
    codes = {(f.code, f.row) for f in result.findings}
    assert ("IsolationByOmission", "NOMAD-ISO-1") in codes
    assert ("IsolationByOmission", "VM-ISO-1") in codes


def test_the_default_allow_all_egress_makes_egress_rows_moot() -> None:
    spec = spec_with_aws()
    groups = rendered(spec).groups
    default = {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    opened = with_extra(groups, {GROUPS["nomadClients"]: {"egress": [default]}})
    eps = hosts(spec)
    assert verdict(groups, eps["nomad"], eps["outsider"], "tcp", 8080) is False
    assert verdict(opened, eps["nomad"], eps["outsider"], "tcp", 8080) is True
    # Isolation still holds: the other Nomad client's ingress has no rule for it.
    assert verdict(opened, eps["nomad"], eps["nomad2"], "tcp", 8080) is False


def test_a_role_without_a_group_is_unfiltered_on_its_side_only() -> None:
    groups_without_lb = {k: v for k, v in GROUPS.items() if k != "loadBalancers"}
    spec = spec_with_aws(groups_without_lb)
    groups = rendered(spec).groups
    eps = hosts(spec)
    lb = Host("lb", "10.0.0.5")  # no group: addressed by the node CIDRs it lives in
    # The nodes still admit NodePorts only from the load balancers' addresses (node CIDRs).
    assert verdict(groups, lb, eps["k8s"], "tcp", 30000) is True
    assert verdict(groups, eps["outsider"], eps["k8s"], "tcp", 30000) is False
    # Nomad clients still reach the LB only on the listed ports (their own egress).
    assert verdict(groups, eps["nomad"], lb, "tcp", 4647) is True
    assert verdict(groups, eps["nomad"], lb, "tcp", 5432) is False
    # Both ends unfiltered: not this product's to decide.
    assert verdict(groups, eps["outsider"], lb, "tcp", 22) is None


SERVERS_NLB = [
    # (source, destination, port, allowed, why): the external servers' internal NLB keeps the
    # sender's address, not its security group (CHOICE-AWS-NOMAD-NLB); server-terraform 4.8's
    # NLB has no group and checks :4646 from its own address (CHOICE-NOMAD-HEALTH-CHECKS).
    ("nomad via the NLB", "nsrv", 4647, True, "V48-SRV-IN-2 by address"),
    ("k8s via the NLB", "nsrv", 4646, True, "V48-SRV-IN-1 by address"),
    ("nlb", "nsrv", 4646, True, "CHOICE-NOMAD-HEALTH-CHECKS"),
    ("nlb", "nsrv", 4647, False, "the health check is 4646 only"),
    ("nomad", "nlb", 4647, True, "NOMAD-OUT-3 by address"),
    ("k8s", "nlb", 4648, True, "V48-K8S-OUT-1 by address"),
    ("nomad", "nlb", 4646, False, "clients need RPC only"),
    ("outsider via the NLB", "nsrv", 4647, False, "only the clients' addresses"),
]


@pytest.mark.parametrize(("src", "dst", "port", "expected", "why"), SERVERS_NLB)
def test_flows_through_the_nomad_servers_nlb(
    src: str, dst: str, port: int, expected: bool, why: str
) -> None:
    spec = spec_with_aws(
        serverVersion="4.8", **{"topology.nomadServers": {"cidrs": ["10.3.0.0/24"]}}
    )
    groups = rendered(spec).groups
    eps = hosts(spec)
    forwarded = {  # the forwarded leg leaves the NLB with the sender's address, no group
        f"{name} via the NLB": Host(f"{name} via the NLB", eps[name].ip)
        for name in ("nomad", "k8s", "outsider")
    }
    eps = {**eps, **forwarded, "nlb": Host("nlb", "10.3.0.200")}  # 4.8: an NLB without a group
    got = verdict(groups, eps[src], eps[dst], "tcp", port)
    assert got is expected, f"{why}: {explain(groups, eps[src], eps[dst], 'tcp', port)}"
