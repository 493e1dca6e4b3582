"""What real installations need beyond the guide's idealised topology: podman's SSH-rerun range,
pods with addresses of their own, health checks as flows, CircleCI's monitoring reference, and
load-balancer settings that cannot be right."""

from __future__ import annotations

from typing import Any

import pytest

from builders import GKE_POD_RANGE, make_spec, spec_dict
from server_hardening.compiler import compile_intent
from server_hardening.model import SpecError, parse_spec
from server_hardening.rules import Direction, PeerKind, PortRange, Protocol, Role, Rule

GCP = {"project": "my-project", "network": "circleci", "targetTags": {}}
EXTERNAL_SERVERS = {"serverVersion": "4.10", "topology.nomadServers": {"cidrs": ["10.3.0.0/24"]}}


def _rerun(rules: tuple[Rule, ...]) -> Rule:
    (rule,) = [r for r in rules if "NOMAD-IN-2" in r.rows]
    return rule


@pytest.mark.parametrize(
    ("runtime", "ports", "rows"),
    [
        (None, PortRange(64535, 65535), {"NOMAD-IN-2"}),
        ("docker", PortRange(64535, 65535), {"NOMAD-IN-2"}),
        ("podman", PortRange(32768, 65535), {"NOMAD-IN-2", "CHOICE-NOMAD-PODMAN"}),
    ],
)
def test_the_ssh_rerun_range_follows_the_nomad_clients_runtime(
    runtime: str | None, ports: PortRange, rows: set[str]
) -> None:
    clients: dict[str, Any] = {"cidrs": ["10.1.0.0/16"]}
    if runtime:
        clients["runtime"] = runtime
    intent = compile_intent(make_spec(**{"topology.nomadClients": clients}))
    for rules in (intent.rules, intent.cloud_rules("gcp")):
        rerun = _rerun(rules)
        assert (rerun.subject, rerun.ports, rerun.rows) == (Role.NOMAD_CLIENTS, ports, rows)
    world = [f.message for f in intent.findings if f.code == "WorldOpenSSHRerun"]
    assert any(str(ports) in m for m in world)


def test_gcp_restricting_egress_without_the_pod_range_is_refused_naming_the_field() -> None:
    body = spec_dict(gcp=GCP)
    del body["topology"]["kubernetesPods"]
    with pytest.raises(SpecError) as refused:
        parse_spec(body)
    (error,) = refused.value.errors
    assert error.path == "spec.topology.kubernetesPods"
    assert "restrictEgress" in error.reason and "clusterIpv4Cidr" in error.reason
    # Without restrictEgress nothing blocks pods on the egress side: no refusal.
    parse_spec({**body, "gcp": {**GCP, "restrictEgress": False}})


def test_pods_are_admitted_wherever_the_nodes_are_on_both_clouds() -> None:
    intent = compile_intent(make_spec(gcp=GCP, **EXTERNAL_SERVERS))
    for rules in (intent.rules, intent.cloud_rules("gcp")):
        by_node_row = {
            (r.subject, r.direction, r.protocol, r.ports, row)
            for r in rules
            if r.peer.kind is PeerKind.KUBERNETES_NODES
            for row in r.rows
            if not row.startswith("CHOICE")
        }
        by_pod_row = {
            (r.subject, r.direction, r.protocol, r.ports, row)
            for r in rules
            if r.peer.kind is PeerKind.KUBERNETES_PODS
            for row in r.rows
            if not row.startswith("CHOICE")
        }
        assert by_node_row and by_node_row <= by_pod_row | _node_only(rules)
        pods = [r for r in rules if r.peer.kind is PeerKind.KUBERNETES_PODS]
        assert all(r.peer.cidrs == (GKE_POD_RANGE,) for r in pods)
        assert all("CHOICE-K8S-PODS" in r.rows for r in pods)
        assert {"K8S-IN-2", "K8S-OUT-3", "V48-SRV-IN-1"} <= {row for r in pods for row in r.rows}


def _node_only(rules: tuple[Rule, ...]) -> set[tuple[Any, ...]]:
    """Rows that reach the nodes because a load balancer is transparent (LB-OUT-1 on AWS), not
    because the guide names the nodes: they are not the pods' traffic."""
    return {
        (r.subject, r.direction, r.protocol, r.ports, row)
        for r in rules
        for row in r.rows
        if row in {"LB-OUT-1"}
    }


def test_without_a_pod_range_no_pod_rule_is_written() -> None:
    intent = compile_intent(make_spec())
    assert not [r for r in intent.rules if r.peer.kind is PeerKind.KUBERNETES_PODS]


def test_health_checks_of_external_nomad_servers_are_rules_on_both_clouds() -> None:
    intent = compile_intent(make_spec(gcp=GCP, **EXTERNAL_SERVERS))
    (gcp,) = [
        r
        for r in intent.cloud_rules("gcp")
        if r.subject is Role.NOMAD_SERVERS and r.peer.kind is PeerKind.HEALTH_CHECKS
    ]
    assert (gcp.ports, gcp.rows) == (PortRange(4646, 4648), {"CHOICE-NOMAD-HEALTH-CHECKS"})
    # AWS: the internal NLB checks :4646 from the servers' subnet, by address (4.8's NLB has
    # no security group for a reference to match).
    (aws,) = [r for r in intent.cloud_rules("aws") if "CHOICE-NOMAD-HEALTH-CHECKS" in r.rows]
    assert (aws.subject, aws.direction, aws.protocol, aws.ports) == (
        Role.NOMAD_SERVERS, Direction.INGRESS, Protocol.TCP, PortRange(4646, 4646),
    )  # fmt: skip
    assert (aws.peer.kind, aws.peer.cidrs) == (PeerKind.CIDRS, ("10.3.0.0/24",))


def test_monitoring_is_opt_in() -> None:
    without = compile_intent(make_spec())
    assert not [r for r in without.cloud_rules("aws") if "CHOICE-NP-MONITORING" in r.rows]
    nomad = compile_intent(
        make_spec(
            gcp=GCP,
            **{
                "kubernetes.monitoring": {
                    "namespaceSelector": {"matchLabels": {"team": "obs"}},
                    "nomadClients": True,
                }
            },
        )
    )
    # The instances' rules only: the namespace's egress policy (built from ``rules``) does
    # not open the clients' 4646 to every pod of the namespace.
    assert not [r for r in nomad.rules if "CHOICE-NP-MONITORING" in r.rows]
    for rules in (nomad.cloud_rules("aws"), nomad.cloud_rules("gcp")):
        # (merged with NOMAD-IN-1's 4647 where it is written: ports 4646-4647)
        scrape = {
            (r.subject, r.direction, r.peer.kind)
            for r in rules
            if "CHOICE-NP-MONITORING" in r.rows
            and r.ports
            and r.ports.first <= 4646 <= r.ports.last
        }
        assert scrape == {
            (Role.NOMAD_CLIENTS, Direction.INGRESS, PeerKind.KUBERNETES_NODES),
            (Role.NOMAD_CLIENTS, Direction.INGRESS, PeerKind.KUBERNETES_PODS),
            (Role.KUBERNETES_NODES, Direction.EGRESS, PeerKind.NOMAD_CLIENTS),
        }


@pytest.mark.parametrize(
    ("load_balancers", "warned"),
    [
        ({"targetType": "Instance", "transparent": True}, True),
        ({"targetType": "Instance"}, False),
        ({"targetType": "IP", "transparent": True}, False),
        ({"targetType": "IP"}, False),
        ({"transparent": True, "cidrs": ["10.9.0.0/24"]}, True),
        ({"cidrs": ["10.9.0.0/24"]}, False),
    ],
)
def test_plan_warns_where_a_load_balancer_setting_cannot_be_right(
    load_balancers: dict[str, Any], warned: bool
) -> None:
    intent = compile_intent(make_spec(**{"topology.loadBalancers": load_balancers}))
    mismatches = [f for f in intent.findings if f.code == "LoadBalancerMismatch"]
    assert bool(mismatches) is warned
    assert all(f.severity == "warning" and f.row == "K8S-IN-1" for f in mismatches)
