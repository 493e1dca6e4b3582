"""The CircleCI-like installation the field tier hardens, and the truth table it must end up with.

The expected verdicts are written from the guide's rows and the choices the project documents
(README, docs/guide-mapping), not computed from the operator's output:

- LB-IN-1/2: the frontend (v3 ``circleci-server-traefik``, v4 ``circleci-proxy``) from
  "external", which is every IPv4 address: the internet, Nomad clients, VMs, other nodes and
  pods of other namespaces alike;
- LB-IN-3/4/5: the VM service (3000), the Nomad server (4647) and the output processor (8585)
  from Nomad clients only (v4.3 keeps 4647 alone);
- CHOICE-NP-SNAT: the load balancer is not transparent, so the component pods also admit the
  Kubernetes nodes on the component ports;
- CHOICE-NP-PORTS: on the pod ports behind the Services (targetPort), not the Service ports;
- CHOICE-NP-NAMESPACE: pods of the server's namespace reach each other;
- CHOICE-NP-DEFAULT-DENY: everything else into the namespace is blocked (data stores, ports no
  row lists);
- the pod's own node is always allowed (Kubernetes NetworkPolicy semantics: kubelet probes);
- with restrictEgress (v3 here): K8S-OUT-1 (2376 to VMs), K8S-OUT-2 (4647 to Nomad clients),
  ALL-OUT-2/3 (80/443 to external), CHOICE-NP-APISERVER; nothing else leaves.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from field.node import HOST_ADDR, NODE_ADDR, OUTSIDE
from field.workloads import PodSpec, ServiceSpec

V3, V4, OTHER = "circleci-v3", "circleci-v4", "field-other"
#: Ports the outside stand-ins listen on (for the egress rows).
OUTSIDE_PORTS = (22, 25, 80, 443, 2376, 4647, 8200, 64535)

V3_PODS = [
    PodSpec("traefik", {"app": "traefik", "layer": "application"}, (8000, 8443, 9000)),
    PodSpec("nomad-server", {"app": "nomad-server", "layer": "application"}, (4647, 4646)),
    PodSpec("output-processor", {"app": "output-processor"}, (8585,)),
    PodSpec("vm-service", {"app": "vm-service"}, (3000,)),
    PodSpec("postgresql", {"app": "postgresql", "layer": "data"}, (5432,)),
    PodSpec("api", {"app": "api-service"}, (8080,)),
]
V3_SERVICES = [
    ServiceSpec("circleci-server-traefik", {"app": "traefik"}, [(80, 8000), (443, 8443)]),
    ServiceSpec("nomad-server-external", {"app": "nomad-server"}, [(4647, 4647)]),
    ServiceSpec("output-processor", {"app": "output-processor"}, [(8585, 8585)]),
    ServiceSpec("vm-service", {"app": "vm-service"}, [(3000, 3000)]),
    ServiceSpec("postgresql", {"app": "postgresql"}, [(5432, 5432)]),
]
V4_PODS = [
    PodSpec("proxy", {"app": "circleci-proxy"}, (8080, 8443, 4647, 3000)),
    PodSpec("nomad-server", {"app": "nomad-server"}, (4647,)),
    PodSpec("postgresql", {"app": "postgresql", "layer": "data"}, (5432,)),
    PodSpec("mongodb", {"app": "mongodb", "layer": "data"}, (27017,)),
    PodSpec("api", {"app": "api-service"}, (8080,)),
]
V4_SERVICES = [
    ServiceSpec("circleci-proxy", {"app": "circleci-proxy"}, [(80, 8080), (443, 8443), (4647, 4647)]),
    ServiceSpec("nomad-server", {"app": "nomad-server"}, [(4647, 4647)]),
    ServiceSpec("postgresql", {"app": "postgresql"}, [(5432, 5432)]),
    ServiceSpec("mongodb", {"app": "mongodb"}, [(27017, 27017)]),
]  # fmt: skip
OTHER_PODS = [PodSpec("stranger", {"app": "stranger"}, (8080,))]

# The node's /30 as a network (host bits set are refused: 10.213.255.2/30 is 10.213.255.0/30).
NODE_NETWORK = str(ipaddress.ip_interface(f"{NODE_ADDR}/30").network)

TOPOLOGY = {
    # The node itself, its veth to the control plane, and "another node" outside.
    "kubernetesNodes": {"cidrs": [NODE_NETWORK, "10.213.100.8/29"]},
    "nomadClients": {"cidrs": ["10.213.100.16/29"]},
    "externalVMs": {"cidrs": ["10.213.100.24/29"]},
}


def server_hardening(namespace: str, version: str, **kubernetes: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hardening.circleci.com/v1alpha1",
        "kind": "ServerHardening",
        "metadata": {"name": "circleci", "namespace": namespace},
        "spec": {"serverVersion": version, "topology": TOPOLOGY, "kubernetes": kubernetes},
    }


def v3_resource(api_server_port: int) -> dict[str, Any]:
    return server_hardening(
        V3, "3",
        networkPolicies={"restrictEgress": True},
        apiServer={"cidrs": [f"{HOST_ADDR}/32"], "ports": [api_server_port]},
    )  # fmt: skip


def v4_resource() -> dict[str, Any]:
    return server_hardening(V4, "4.3")


@dataclass(frozen=True)
class Case:
    source: str  # a key of sources(): world, nomad, vm, other-node, node, stranger, api-v3, ...
    namespace: str  # where the destination pod is ("outside" for egress to a stand-in)
    destination: str  # pod name, or an OUTSIDE key
    port: int
    expected: bool
    rows: str

    @property
    def id(self) -> str:
        verdict = "allowed" if self.expected else "blocked"
        return f"{self.source}->{self.namespace}/{self.destination}:{self.port}-{verdict}"


def _row(
    source: str, namespace: str, expect: dict[tuple[str, int], tuple[bool, str]]
) -> list[Case]:
    return [Case(source, namespace, d, p, ok, why) for (d, p), (ok, why) in expect.items()]


Y, N = True, False
DENY = "CHOICE-NP-DEFAULT-DENY"


def v3_ingress(source: str) -> list[Case]:
    frontend_only = {
        ("traefik", 8000): (Y, "LB-IN-1, CHOICE-NP-PORTS (Service 80 -> 8000)"),
        ("traefik", 8443): (Y, "LB-IN-2, CHOICE-NP-PORTS (Service 443 -> 8443)"),
        ("traefik", 9000): (N, f"{DENY}: a port no row lists"),
        ("nomad-server", 4647): (N, "LB-IN-4: Nomad clients only"),
        ("nomad-server", 4646): (N, f"{DENY}: the Nomad HTTP API is not listed"),
        ("output-processor", 8585): (N, "LB-IN-5: Nomad clients only"),
        ("vm-service", 3000): (N, "LB-IN-3: Nomad clients only"),
        ("postgresql", 5432): (N, f"{DENY}: a data store"),
    }
    nomad_rows = {
        ("nomad-server", 4647): "LB-IN-4",
        ("output-processor", 8585): "LB-IN-5",
        ("vm-service", 3000): "LB-IN-3",
    }
    expect = dict(frontend_only)
    if source in ("nomad", "other-node"):
        why = "" if source == "nomad" else " via CHOICE-NP-SNAT (node addresses)"
        expect |= {k: (Y, v + why) for k, v in nomad_rows.items()}
    if source in ("api-v3", "node"):
        why = "CHOICE-NP-NAMESPACE" if source == "api-v3" else "the pod's own node"
        expect = dict.fromkeys(frontend_only, (Y, why))
    return _row(source, V3, expect)


def v4_ingress(source: str) -> list[Case]:
    expect = {
        ("proxy", 8080): (Y, "LB-IN-1, CHOICE-NP-PORTS (Service 80 -> 8080)"),
        ("proxy", 8443): (Y, "LB-IN-2, CHOICE-NP-PORTS (Service 443 -> 8443)"),
        ("proxy", 4647): (N, "LB-IN-4: Nomad clients (and nodes) only"),
        ("proxy", 3000): (N, "LB-IN-3 is gone in v4.3"),
        ("nomad-server", 4647): (N, f"{DENY}: behind the proxy"),
        ("postgresql", 5432): (N, f"{DENY}: a data store"),
        ("mongodb", 27017): (N, f"{DENY}: a data store"),
    }
    if source == "nomad":
        expect[("proxy", 4647)] = (Y, "LB-IN-4")
    if source == "other-node":
        expect[("proxy", 4647)] = (Y, "LB-IN-4 via CHOICE-NP-SNAT (node addresses)")
    if source in ("api-v4", "node"):
        why = "CHOICE-NP-NAMESPACE" if source == "api-v4" else "the pod's own node"
        expect = dict.fromkeys(expect, (Y, why))
    return _row(source, V4, expect)


def v3_egress() -> list[Case]:
    """From a v3 pod (restrictEgress) to the outside stand-ins."""
    expect = {
        ("vm", 2376): (Y, "K8S-OUT-1"),
        ("nomad", 4647): (Y, "K8S-OUT-2"),
        ("world", 443): (Y, "ALL-OUT-3"),
        ("world", 80): (Y, "ALL-OUT-2"),
        ("world", 25): (N, f"{DENY} (egress): no row lists 25"),
        ("world", 8200): (N, f"{DENY} (egress): no row lists 8200"),
        # ALL-OUT-4 is common to all instances; the VCS defaults to external.
        ("nomad", 22): (Y, "ALL-OUT-4 (SSH to the VCS: external by default)"),
        ("nomad", 64535): (N, f"{DENY} (egress): no outbound row lists 64535"),
        ("vm", 4647): (N, f"{DENY} (egress): K8S-OUT-2 is to Nomad clients"),
    }
    return [Case("api-v3", "outside", d, p, ok, why) for (d, p), (ok, why) in expect.items()]


def v4_egress() -> list[Case]:
    """v4 without restrictEgress: nothing restricts egress."""
    return [
        Case("api-v4", "outside", "world", 25, Y, "egress is not restricted (restrictEgress off)"),
        Case("api-v4", "outside", "nomad", 22, Y, "egress is not restricted (restrictEgress off)"),
    ]


INGRESS_SOURCES = ("world", "nomad", "vm", "other-node", "node", "stranger")


def truth_table() -> list[Case]:
    cases: list[Case] = []
    for source in (*INGRESS_SOURCES, "api-v3"):
        cases += v3_ingress(source)
    for source in (*INGRESS_SOURCES, "api-v4"):
        cases += v4_ingress(source)
    cases += v3_egress() + v4_egress()
    # Across the two installations: the frontend is external to the other one, data stores
    # are not (v3's restricted egress also keeps its pods from the v4 pods' ports).
    cases += [
        Case("api-v4", V3, "traefik", 8443, Y, "LB-IN-2 (external includes other namespaces)"),
        Case("api-v4", V3, "postgresql", 5432, N, f"{DENY}: other namespaces are not the server's"),
        Case("api-v3", V4, "proxy", 8443, N, "v3 egress: ALL-OUT-3 is 443, the pod port is 8443"),
        Case("api-v3", V4, "postgresql", 5432, N, f"{DENY}: both ends"),
    ]  # fmt: skip
    return cases


def outside_address(name: str) -> str:
    return OUTSIDE[name]
