"""A VPC-native GKE installation of CircleCI Server 4.8-4.10 as CircleCI's material and GKE
build it, on the GCP fake (``tests/fakes/gcp_compute.py``), created through google-cloud-compute.

What is created, and from where (versions in :mod:`reference.flows`):

- Network ``circleci``: the GKE node subnet 10.10.0.0/20 with the pod range 10.8.0.0/14 as a
  secondary range (pods send from alias IPs there), the private control plane 172.16.0.0/28,
  the Nomad subnetwork 10.20.0.0/19 (clients in 10.20.0.0/20, external servers in
  10.20.16.0/24), the VMs' 10.30.0.0/20.
- server-terraform's ``nomad-gcp`` firewalls, ``name = "cci"``. 4.8.x (``firewall.tf``):
  ``fw-cci-allow-retry-with-ssh-circleci-server`` (TCP 64535-65535 from 0.0.0.0/0),
  ``fw-cci-allow-nomad-traffic-circleci-server`` (TCP+UDP 4646-4648 from the Nomad subnetwork),
  ``fw-cci-allow-ssh-into-nomad-clients-circleci-server`` (TCP 22 from IAP 35.235.240.0/20),
  targets the clients' four tags; the server module's
  ``fw-cci-allow-nomad-client-traffic-circleci-server``. 4.9.x: ``cci-circleci-allow-retry-with-
  ssh`` (podman: 32768-65535), ``cci-circleci-allow-traffic-nomad-clients`` (TCP+UDP 4646-4648
  from the Nomad subnetwork and Google's health-check ranges 130.211.0.0/22, 35.191.0.0/16),
  ``cci-circleci-allow-ssh-nomad-clients`` (22 from IAP), target ``cci-circleci-nomad-clients``;
  the servers' ``cci-circleci-allow-nomad-client-traffic-nomad-servers`` (TCP+UDP 4646-4648
  from the Nomad subnetwork, the GKE pod range, the node subnet and the health-check ranges,
  and the clients' and servers' tags) and ``cci-circleci-allow-ssh-nomad-servers``. The client
  instance group autoheals on HTTP :4646 (``clients.tf``).
- GKE's own firewalls, named and shaped as GKE creates them for cluster ``circleci``:
  ``gke-circleci-1a2b3c4d-all`` (every protocol from the pod range), ``-master`` (443, 10250
  from the control plane), ``-vms`` (TCP/UDP 1-65535 and ICMP from the node subnet), all on the
  node tag ``gke-circleci-1a2b3c4d-node``; the GCE service controller's ``k8s-fw-<lb>`` for
  ``circleci-proxy`` (its ports from 0.0.0.0/0, described with ``kubernetes.io/service-name``)
  and ``k8s-<hash>-node-hc`` (kube-proxy's 10256 from the health-check ranges).
- The hardening docs' VM rule, made by hand: 54782 from 0.0.0.0/0 to ``circleci-vm``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from reference import flows as src
from reference.flows import Flow
from truth.gcp_eval import Endpoint

Version = Literal["4.8", "4.9", "4.10"]

PROJECT = "circleci-ref-1"
NETWORK = "circleci"
NODES = "10.10.0.0/20"
PODS = "10.8.0.0/14"
CONTROL_PLANE = "172.16.0.0/28"
NOMAD_SUBNET = "10.20.0.0/19"
CLIENTS = "10.20.0.0/20"
SERVERS = "10.20.16.0/24"
VMS = "10.30.0.0/20"
IAP = "35.235.240.0/20"
HEALTH_CHECKS = ["130.211.0.0/22", "35.191.0.0/16"]
WORLD = "0.0.0.0/0"
NODE_TAG = "gke-circleci-1a2b3c4d-node"
VM_TAG = "circleci-vm"
LB = "a953ad6f802b345fe85f29d793a4e104"


@dataclass
class GcpReference:
    version: Version
    podman: bool
    external_servers: bool
    endpoints: dict[str, Endpoint]
    flows: tuple[Flow, ...]
    spec: dict[str, Any]
    seeded: dict[str, str] = field(default_factory=dict)  # firewall name -> its source


def _firewalls(url: str) -> compute_v1.FirewallsClient:
    return compute_v1.FirewallsClient(
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        transport="rest",
        client_options={"api_endpoint": url},
    )


def _allowed(*entries: tuple[str, list[str]]) -> list[compute_v1.Allowed]:
    return [
        compute_v1.Allowed(I_p_protocol=proto, ports=ports) if ports else
        compute_v1.Allowed(I_p_protocol=proto)
        for proto, ports in entries
    ]  # fmt: skip


def build_gke(
    url: str, *, version: Version = "4.10", podman: bool = False, external_servers: bool = True
) -> GcpReference:
    """Create the installation's firewalls in the fake at ``url`` (see the module docstring)."""
    client = _firewalls(url)
    seeded: dict[str, str] = {}
    network = f"projects/{PROJECT}/global/networks/{NETWORK}"

    def insert(name: str, why: str, **fields: Any) -> None:
        body = compute_v1.Firewall(name=name, network=network, **fields)
        client.insert(project=PROJECT, firewall_resource=body).result()
        seeded[name] = why

    if version == "4.8":
        client_tags = ["circleci-server", "nomad-clients", "circleci-nomad-client",
                       "cci-nomad-client"]  # fmt: skip
        server_tags = ["circleci-server", "nomad-server", "circleci-nomad-server",
                       "cci-nomad-server", "circleci-cci-nomad-servers"]  # fmt: skip
        client_tag, server_tag = "cci-nomad-client", "cci-nomad-server"
        names = ("fw-cci-allow-retry-with-ssh-circleci-server",
                 "fw-cci-allow-nomad-traffic-circleci-server",
                 "fw-cci-allow-ssh-into-nomad-clients-circleci-server",
                 "fw-cci-allow-nomad-client-traffic-circleci-server", "")  # fmt: skip
        client_traffic_sources = [NOMAD_SUBNET]
        server_sources = [NOMAD_SUBNET]
        tf, tf_servers = src.TF_GCP_48, src.TF_GCP_48
    else:
        client_tag, server_tag = "cci-circleci-nomad-clients", "cci-circleci-nomad-servers"
        client_tags, server_tags = [client_tag], [server_tag]
        names = ("cci-circleci-allow-retry-with-ssh",
                 "cci-circleci-allow-traffic-nomad-clients",
                 "cci-circleci-allow-ssh-nomad-clients",
                 "cci-circleci-allow-nomad-client-traffic-nomad-servers",
                 "cci-circleci-allow-ssh-nomad-servers")  # fmt: skip
        client_traffic_sources = [NOMAD_SUBNET, *HEALTH_CHECKS]
        server_sources = [NOMAD_SUBNET, PODS, NODES, *HEALTH_CHECKS]
        tf, tf_servers = src.TF_GCP_49, src.TF_GCP_SERVERS
    retry = "32768-65535" if podman else "64535-65535"
    nomad = [4646, 4648]
    nomad_ports = [f"{nomad[0]}-{nomad[1]}"]
    retry_name, traffic_name, ssh_name, servers_name, servers_ssh_name = names

    insert(retry_name, tf, direction="INGRESS", priority=1000, source_ranges=[WORLD],
           target_tags=client_tags, allowed=_allowed(("tcp", [retry])))  # fmt: skip
    insert(traffic_name, tf, direction="INGRESS", priority=1000,
           source_ranges=client_traffic_sources, target_tags=client_tags,
           allowed=_allowed(("tcp", nomad_ports), ("udp", nomad_ports)))  # fmt: skip
    insert(ssh_name, tf, direction="INGRESS", priority=1000, source_ranges=[IAP],
           target_tags=client_tags, allowed=_allowed(("tcp", ["22"])))  # fmt: skip
    if external_servers:
        insert(servers_name, tf_servers, direction="INGRESS", priority=1000,
               source_ranges=server_sources, source_tags=[*client_tags, *server_tags],
               target_tags=server_tags,
               allowed=_allowed(("tcp", nomad_ports), ("udp", nomad_ports)))  # fmt: skip
        if version == "4.8":
            # 4.8's server rule admits the Nomad subnetwork only: the cluster's pods (alias
            # IPs) reach the servers' API through a rule made by hand.
            insert("circleci-nomad-servers-allow-cluster", src.DOCS_HARDENING,
                   direction="INGRESS", priority=1000, source_ranges=[NODES, PODS],
                   target_tags=server_tags, allowed=_allowed(("tcp", nomad_ports)))  # fmt: skip
        if servers_ssh_name:
            insert(servers_ssh_name, tf_servers, direction="INGRESS", priority=1000,
                   source_ranges=[IAP], target_tags=server_tags,
                   allowed=_allowed(("tcp", ["22"])))  # fmt: skip

    else:
        # In-cluster Nomad servers: the hardening docs' NOMAD-IN-1, made by hand (neither
        # server-terraform rule admits the cluster; its pods send from alias IPs).
        insert("circleci-nomad-allow-server-rpc", src.DOCS_HARDENING, direction="INGRESS",
               priority=1000, source_ranges=[NODES, PODS], target_tags=client_tags,
               allowed=_allowed(("tcp", ["4647"])))  # fmt: skip

    # GKE's own rules, and the service controller's for circleci-proxy.
    proxy_ports = ["80", "443"] if external_servers else ["80", "443", "4647"]
    for name, fields in (
        ("gke-circleci-1a2b3c4d-all", {"source_ranges": [PODS], "allowed": _allowed(
            ("tcp", []), ("udp", []), ("icmp", []), ("esp", []), ("ah", []), ("sctp", []))}),
        ("gke-circleci-1a2b3c4d-master", {"source_ranges": [CONTROL_PLANE],
                                          "allowed": _allowed(("tcp", ["443", "10250"]))}),
        ("gke-circleci-1a2b3c4d-vms", {"source_ranges": [NODES], "allowed": _allowed(
            ("tcp", ["1-65535"]), ("udp", ["1-65535"]), ("icmp", []))}),
        (f"k8s-fw-{LB}", {"source_ranges": [WORLD], "allowed": _allowed(("tcp", proxy_ports)),
                          "description": '{"kubernetes.io/service-name":'
                                         '"circleci-server/circleci-proxy"}'}),
        ("k8s-5f9d0e1c2b3a4d5e-node-hc", {"source_ranges": HEALTH_CHECKS,
                                          "allowed": _allowed(("tcp", ["10256"]))}),
    ):  # fmt: skip
        insert(name, src.GKE_RULES, direction="INGRESS", priority=1000, target_tags=[NODE_TAG],
               **fields)  # fmt: skip

    # The hardening docs' VM rule (made by hand).
    insert("circleci-vm-allow-ssh-rerun", src.DOCS_HARDENING, direction="INGRESS",
           priority=1000, source_ranges=[WORLD], target_tags=[VM_TAG],
           allowed=_allowed(("tcp", ["54782"])))  # fmt: skip

    endpoints = {
        "node": Endpoint("node", "10.10.0.10", (NODE_TAG,)),
        "pod": Endpoint("pod", "10.8.1.5", (NODE_TAG,), alias=True),
        "pod-on-another-node": Endpoint("pod-on-another-node", "10.8.2.5", (NODE_TAG,), alias=True),
        "nomad-client": Endpoint("nomad-client", "10.20.0.10", tuple(client_tags)),
        "vm": Endpoint("vm", "10.30.0.10", (VM_TAG,)),
        "control-plane": Endpoint("control-plane", "172.16.0.2", on_network=False),
        "user": Endpoint("user", "198.51.100.7", on_network=False),
        "iap": Endpoint("iap", "35.235.240.5", on_network=False),
        "health-checker": Endpoint("health-checker", "35.191.0.5", on_network=False),
        "github": Endpoint("github", "140.82.112.3", on_network=False),
        "internet": Endpoint("internet", "93.184.215.14", on_network=False),
    }
    if external_servers:
        endpoints["nomad-server"] = Endpoint("nomad-server", "10.20.16.10", tuple(server_tags))
        endpoints["nomad-server-2"] = Endpoint("nomad-server-2", "10.20.16.11",
                                               tuple(server_tags))  # fmt: skip
    reference = GcpReference(version, podman, external_servers, endpoints, (), {}, seeded)
    reference.flows = tuple(_flows(reference, tf, tf_servers))
    reference.spec = _spec(reference, url, client_tag, server_tag)
    return reference


def _flows(ref: GcpReference, tf: str, tf_servers: str) -> list[Flow]:
    rerun = 40000 if ref.podman else 64600
    out = [
        Flow("users reach the frontend (pass-through, client IP kept)", "user", "node", "tcp",
             443, f"LB-IN-2; {src.GKE_RULES} (k8s-fw-)"),
        Flow("kube-proxy's health check", "health-checker", "node", "tcp", 10256,
             f"{src.GKE_RULES} (k8s-...-node-hc)"),
        Flow("pods reach pods on other nodes (alias IPs)", "pod", "pod-on-another-node", "tcp",
             8080, f"K8S-IN-2, K8S-OUT-3, CHOICE-K8S-PODS; {src.GKE_RULES} (-all)"),
        Flow("the control plane reaches the kubelet", "control-plane", "node", "tcp", 10250,
             f"{src.GKE_RULES} (-master)"),
        Flow("pods reach the internet", "pod", "internet", "tcp", 443, "ALL-OUT-3"),
        Flow("pods pull code over SSH", "pod", "github", "tcp", 22, "ALL-OUT-4"),
        Flow("retry with SSH into a Docker job", "user", "nomad-client", "tcp", rerun,
             f"NOMAD-IN-2; {tf} retry SSH"),
        Flow("admins reach the Nomad clients through IAP", "iap", "nomad-client", "tcp", 22,
             f"ALL-IN-1 (adminSSH from IAP); {tf} ssh"),
        Flow("Nomad clients fetch images", "nomad-client", "internet", "tcp", 443, "ALL-OUT-3"),
        Flow("Nomad clients pull code over SSH", "nomad-client", "github", "tcp", 22,
             "ALL-OUT-4"),
        Flow("retry with SSH into a machine job", "user", "vm", "tcp", 54782,
             f"VM-IN-5; {src.DOCS_HARDENING}"),
        Flow("VMs pull code over SSH", "vm", "github", "tcp", 22, "VM-OUT-1"),
    ]  # fmt: skip
    if ref.version != "4.8":
        out.append(
            Flow("the client group's autohealing check", "health-checker", "nomad-client", "tcp",
                 4646, f"CHOICE-NOMAD-HEALTH-CHECKS; {src.TF_GCP_CLIENT_HEALTH}")
        )  # fmt: skip
    if ref.external_servers:
        out += [
            Flow("Nomad clients reach the servers (RPC, pass-through)", "nomad-client",
                 "nomad-server", "tcp", 4647, f"NOMAD-OUT-3, V48-SRV-IN-2; {tf_servers}"),
            Flow("the servers reach their clients", "nomad-server", "nomad-client", "tcp", 4647,
                 f"NOMAD-IN-1, V48-SRV-OUT-1; {tf}"),
            Flow("the server's pods drive Nomad's API", "pod", "nomad-server", "tcp", 4646,
                 f"V48-K8S-OUT-1, V48-SRV-IN-1, CHOICE-K8S-PODS; {tf_servers}"),
            Flow("the servers among themselves (RPC)", "nomad-server", "nomad-server-2", "tcp",
                 4647, f"V48-SRV-PEER-1; {tf_servers}"),
            Flow("the servers among themselves (Serf)", "nomad-server", "nomad-server-2", "udp",
                 4648, f"V48-SRV-PEER-1; {tf_servers}"),
        ]  # fmt: skip
        if ref.version != "4.8":
            out.append(
                Flow("the servers' load balancer health check", "health-checker",
                     "nomad-server", "tcp", 4646, f"CHOICE-NOMAD-HEALTH-CHECKS; {tf_servers}")
            )  # fmt: skip
    else:
        out += [
            Flow("the in-cluster Nomad server's pods reach the clients", "pod", "nomad-client",
                 "tcp", 4647, f"NOMAD-IN-1, K8S-OUT-2, CHOICE-K8S-PODS; {tf}"),
            Flow("Nomad clients reach the proxy's 4647 (pass-through)", "nomad-client", "node",
                 "tcp", 4647, f"NOMAD-OUT-3, LB-IN-4; {src.GKE_RULES} (k8s-fw-)"),
        ]  # fmt: skip
    return out


def _spec(ref: GcpReference, url: str, client_tag: str, server_tag: str) -> dict[str, Any]:
    topology: dict[str, Any] = {
        "kubernetesNodes": {"cidrs": [NODES]},
        "kubernetesPods": {"cidrs": [PODS]},
        "nomadClients": {"cidrs": [CLIENTS], "runtime": "podman" if ref.podman else "docker"},
        "externalVMs": {"cidrs": [VMS]},
        "loadBalancers": {"transparent": True},
    }
    tags = {"kubernetesNodes": NODE_TAG, "nomadClients": client_tag, "externalVMs": VM_TAG}
    if ref.external_servers:
        topology["nomadServers"] = {"cidrs": [SERVERS]}
        tags["nomadServers"] = server_tag
    return {
        "serverVersion": ref.version,
        "topology": topology,
        "access": {"adminSSH": {"enabled": True, "sources": [IAP]}},
        "gcp": {"project": PROJECT, "network": NETWORK, "endpoint": url, "targetTags": tags},
    }
