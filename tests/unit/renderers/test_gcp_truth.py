"""Truth table: the rendered GCP firewalls, plus the default network's own rules, evaluated the way
GCP evaluates them (tests/truth/gcp_eval.py) over the guide's probe matrix (tests/truth/probes.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from builders import OWNER, make_spec
from fakes.gcp_compute import FakeCompute
from server_hardening.compiler import compile_intent
from server_hardening.model import ServerHardeningSpec
from server_hardening.policy.gcp import judge_firewall
from server_hardening.renderers.gcp import render_firewalls
from server_hardening.rules import Role
from truth import probes as guide
from truth.gcp_eval import Endpoint, allowed, explain

PROJECT = "truth-proj-1"
TAGS = {
    "kubernetesNodes": "k8s-node",
    "nomadClients": "nomad-client",
    "externalVMs": "circleci-vm",
    "nomadServers": "nomad-server",
}
ROLE_TAG = {
    Role.KUBERNETES_NODES: "k8s-node",
    Role.NOMAD_CLIENTS: "nomad-client",
    Role.EXTERNAL_VMS: "circleci-vm",
    Role.NOMAD_SERVERS: "nomad-server",
}
HEALTH_CHECKER = Endpoint("health-check", "35.191.3.4", on_network=False)


def default_network_rules() -> list[dict[str, Any]]:
    fake = FakeCompute()  # not started: only its seeding helpers
    fake.seed_default_network(PROJECT, "default")
    return list(fake.rules(PROJECT).values())


def spec_with_gcp(**changes: Any) -> ServerHardeningSpec:
    gcp = {"project": PROJECT, "network": "default", "targetTags": dict(TAGS)}
    gcp.update(changes.pop("gcp", {}))
    return make_spec(gcp=gcp, **changes)


def world(spec: ServerHardeningSpec) -> list[dict[str, Any]]:
    assert spec.gcp is not None
    rendered = render_firewalls(compile_intent(spec).cloud_rules("gcp"), spec.gcp, OWNER)
    return [*rendered.firewalls, *default_network_rules()]


def endpoint(ep: guide.Endpoint) -> Endpoint:
    if ep.role is None:
        return Endpoint(ep.label, ep.ip, on_network=False)
    return Endpoint(ep.label, ep.ip, tags=(ROLE_TAG[ep.role],))


CASES = {
    "v3 defaults": {},
    "v3 admin SSH from an office": {
        "access.adminSSH": {"enabled": True, "sources": ["203.0.113.0/24"]}
    },
    "v3 SSH rerun off": {"access.sshRerun": {"enabled": False}},
    "v3 open egress": {"gcp": {"restrictEgress": False}},
    "v4.2": {"serverVersion": "4.2"},
    "v4.3": {"serverVersion": "4.3"},
    "v3 no external VMs": {"topology.externalVMs": {"enabled": False}},
    "v4.8 external Nomad servers": {
        "serverVersion": "4.8",
        "topology.nomadServers": {"cidrs": ["10.3.0.0/24"]},
    },
    "v4.10 podman": {
        "serverVersion": "4.10",
        "topology.nomadClients": {"cidrs": ["10.1.0.0/16"], "runtime": "podman"},
    },
    "v4.10 monitoring the Nomad clients": {
        "serverVersion": "4.10",
        "kubernetes.monitoring": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "nomadClients": True,
        },
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_guide_holds_on_a_default_network(case: str) -> None:
    spec = spec_with_gcp(**CASES[case])
    rules = world(spec)
    failures = []
    for probe in guide.guide_probes(spec):
        src, dst = endpoint(probe.source), endpoint(probe.destination)
        got = allowed(rules, src, dst, probe.protocol, probe.port)
        if got != probe.expected:
            failures.append(f"{probe}: {explain(rules, src, dst, probe.protocol, probe.port)}")
    assert failures == []


def test_gcp_specific_flows() -> None:
    spec = spec_with_gcp()
    rules = world(spec)
    eps = {k: endpoint(v) for k, v in guide.endpoints(spec).items()}
    other = Endpoint("other-vm", "10.128.0.5", tags=("web",))  # untagged by us, default network
    assert allowed(rules, HEALTH_CHECKER, eps["k8s"], "tcp", 30000)
    assert allowed(rules, HEALTH_CHECKER, eps["k8s"], "tcp", 32767)
    assert not allowed(rules, HEALTH_CHECKER, eps["nomad"], "tcp", 4647)
    # The guide's flows, with LBs transparent (LB-IN-x/NOMAD-OUT-x land on the nodes).
    assert allowed(rules, eps["nomad"], eps["k8s"], "tcp", 4647)
    assert allowed(rules, eps["k8s"], eps["nomad"], "tcp", 4647)
    assert allowed(rules, eps["outsider"], eps["nomad"], "tcp", 64535)
    assert allowed(rules, eps["k8s"], eps["vm"], "tcp", 2376)
    assert allowed(rules, eps["outsider"], eps["k8s"], "tcp", 443)
    # default-allow-internal / -ssh / -icmp no longer reach managed tags.
    assert not allowed(rules, other, eps["nomad"], "tcp", 4647)
    assert not allowed(rules, eps["outsider"], eps["vm"], "tcp", 22)
    assert not allowed(rules, eps["nomad"], eps["nomad2"], "icmp", 0)
    # Isolation holds on the SSH-rerun ports open to the world.
    assert not allowed(rules, eps["nomad"], eps["nomad2"], "tcp", 64535)
    assert not allowed(rules, eps["vm"], eps["vm2"], "tcp", 54782)
    # Egress is restricted: a Nomad client cannot reach an unlisted port outside.
    assert not allowed(rules, eps["nomad"], eps["outsider"], "tcp", 8080)
    assert allowed(rules, eps["nomad"], eps["outsider"], "tcp", 443)
    # Untagged instances keep the default network's behaviour.
    assert allowed(rules, eps["outsider"], other, "tcp", 22)


def test_an_unmanaged_world_open_ssh_rule_breaks_the_table_and_is_flagged() -> None:
    spec = spec_with_gcp()
    assert spec.gcp is not None
    rendered = render_firewalls(compile_intent(spec).cloud_rules("gcp"), spec.gcp, OWNER)
    debug = {
        "name": "debug-ssh",
        "network": "global/networks/default",
        "direction": "INGRESS",
        "priority": 1000,
        "sourceRanges": ["0.0.0.0/0"],
        "targetTags": ["nomad-client"],
        "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
    }
    rules = [*world(spec), debug]
    eps = {k: endpoint(v) for k, v in guide.endpoints(spec).items()}
    assert allowed(rules, eps["outsider"], eps["nomad"], "tcp", 22)
    # ... but still not between Nomad clients: the isolation deny sits above it.
    assert not allowed(rules, eps["nomad2"], eps["nomad"], "tcp", 22)
    finding = judge_firewall(debug, rendered)
    assert (
        finding is not None
        and finding.code == "WorldOpenSensitivePort"
        and finding.row == "ALL-IN-1"
    )
    assert finding.severity.value == "error"


def test_external_nomad_servers_on_gcp_pass_health_checks_and_refuse_the_rest() -> None:
    spec = spec_with_gcp(
        serverVersion="4.8", **{"topology.nomadServers": {"cidrs": ["10.3.0.0/24"]}}
    )
    rules = world(spec)
    eps = {k: endpoint(v) for k, v in guide.endpoints(spec).items()}
    for port in (4646, 4647, 4648):
        assert allowed(rules, HEALTH_CHECKER, eps["nsrv"], "tcp", port)
        assert allowed(rules, eps["k8s"], eps["nsrv"], "tcp", port)
    assert allowed(rules, eps["nomad"], eps["nsrv"], "tcp", 4647)
    assert not allowed(rules, eps["nomad"], eps["nsrv"], "tcp", 4646)  # clients need RPC only
    assert not allowed(rules, eps["outsider"], eps["nsrv"], "tcp", 4647)
    assert not allowed(rules, eps["k8s"], eps["nomad"], "tcp", 4647)  # K8S-OUT-2 moved


def test_the_installation_rows_hold_pods_health_checks_podman_and_monitoring() -> None:
    """CHOICE-K8S-PODS (alias IPs, through the egress floor), CHOICE-NOMAD-HEALTH-CHECKS,
    CHOICE-NOMAD-PODMAN and CHOICE-NP-MONITORING's Nomad half, evaluated as GCP does."""
    spec = spec_with_gcp(
        serverVersion="4.10",
        **{
            "topology.nomadClients": {"cidrs": ["10.1.0.0/16"], "runtime": "podman"},
            "topology.nomadServers": {"cidrs": ["10.3.0.0/24"]},
            "kubernetes.monitoring": {
                "namespaceSelector": {"matchLabels": {"team": "obs"}},
                "nomadClients": True,
            },
        },
    )
    rules = world(spec)
    eps = {k: endpoint(v) for k, v in guide.endpoints(spec).items()}
    pod = Endpoint("pod", "10.4.1.5", tags=("k8s-node",), alias=True)
    other_pod = Endpoint("pod-2", "10.4.2.5", tags=("k8s-node",), alias=True)
    # Pods on different nodes, and the pods' guide peers, through both floors.
    assert allowed(rules, pod, other_pod, "tcp", 8080)
    assert allowed(rules, pod, eps["nsrv"], "tcp", 4646)
    assert allowed(rules, pod, eps["nomad"], "tcp", 4646)  # scraping the clients' metrics
    assert not allowed(rules, pod, eps["nomad"], "tcp", 4647)  # external servers: not the pods'
    # Google's health checks reach the clients' 4646 and nothing else of theirs.
    assert allowed(rules, HEALTH_CHECKER, eps["nomad"], "tcp", 4646)
    assert not allowed(rules, HEALTH_CHECKER, eps["nomad"], "tcp", 4647)
    # podman: the whole 32768-65535 from the rerun sources, still not client to client.
    for port in (32768, 40000, 65535):
        assert allowed(rules, eps["outsider"], eps["nomad"], "tcp", port)
        assert not allowed(rules, eps["nomad2"], eps["nomad"], "tcp", port)
    assert not allowed(rules, eps["outsider"], eps["nomad"], "tcp", 32767)


def test_without_a_pod_range_the_egress_floor_would_cut_pods_between_nodes() -> None:
    """Why the pod range is required with restrictEgress (the spec is refused without it): the
    same rules minus the pods' would block pod-to-pod traffic between nodes."""
    spec = spec_with_gcp()
    rules = [r for r in world(spec) if "-pods" not in str(r.get("name", ""))]
    pod = Endpoint("pod", "10.4.1.5", tags=("k8s-node",), alias=True)
    other_pod = Endpoint("pod-2", "10.4.2.5", tags=("k8s-node",), alias=True)
    assert not allowed(rules, pod, other_pod, "tcp", 8080)
