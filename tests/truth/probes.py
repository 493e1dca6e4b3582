"""A probe matrix built from the guide: flows that must be allowed and flows that must be blocked.

Each target's evaluator (NetworkPolicy, security groups, GCP firewalls) answers "can this source
reach that destination on this port?" over its own rendered output; the tests compare the
answers with ``expected``. Meaning survives refactors; golden files alone do not.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from server_hardening.compiler import compile_intent
from server_hardening.guide import Ports, Requires
from server_hardening.model import ServerHardeningSpec
from server_hardening.rules import Action, Direction, PeerKind, Role

OUTSIDER = "198.51.100.7"  # TEST-NET-2: in "external", in no role's subnet


@dataclass(frozen=True)
class Endpoint:
    """An address, and the role whose firewall governs it (None: nobody's)."""

    ip: str
    role: Role | None
    label: str


@dataclass(frozen=True)
class Probe:
    source: Endpoint
    destination: Endpoint
    protocol: str  # "tcp" | "udp"
    port: int
    expected: bool
    why: str

    def __str__(self) -> str:
        verdict = "allowed" if self.expected else "blocked"
        return (
            f"{self.source.label}({self.source.ip}) -> {self.destination.label}"
            f"({self.destination.ip}) {self.protocol}/{self.port} must be {verdict} [{self.why}]"
        )


def host(cidr: str, index: int = 1) -> str:
    net = ipaddress.ip_network(cidr)
    return str(net.network_address + min(index, net.num_addresses - 1))


def endpoints(spec: ServerHardeningSpec) -> dict[str, Endpoint]:
    topo = spec.topology
    out = {
        "k8s": Endpoint(host(topo.kubernetes_nodes.cidrs[0], 10), Role.KUBERNETES_NODES, "k8s"),
        "k8s2": Endpoint(host(topo.kubernetes_nodes.cidrs[0], 11), Role.KUBERNETES_NODES, "k8s"),
        "nomad": Endpoint(host(topo.nomad_clients.cidrs[0], 10), Role.NOMAD_CLIENTS, "nomad"),
        "nomad2": Endpoint(host(topo.nomad_clients.cidrs[0], 11), Role.NOMAD_CLIENTS, "nomad"),
        "outsider": Endpoint(OUTSIDER, None, "outsider"),
    }
    if topo.external_vms.enabled:
        out["vm"] = Endpoint(host(topo.external_vms.cidrs[0], 10), Role.EXTERNAL_VMS, "vm")
        out["vm2"] = Endpoint(host(topo.external_vms.cidrs[0], 11), Role.EXTERNAL_VMS, "vm")
    if topo.nomad_servers is not None:
        servers = topo.nomad_servers.cidrs[0]
        out["nsrv"] = Endpoint(host(servers, 10), Role.NOMAD_SERVERS, "nsrv")
        out["nsrv2"] = Endpoint(host(servers, 11), Role.NOMAD_SERVERS, "nsrv")
    return out


def _peer_endpoint(spec: ServerHardeningSpec, kind: PeerKind, eps: dict[str, Endpoint]) -> Endpoint:
    by_role = {
        PeerKind.KUBERNETES_NODES: "k8s",
        PeerKind.NOMAD_CLIENTS: "nomad",
        PeerKind.EXTERNAL_VMS: "vm",
        PeerKind.NOMAD_SERVERS: "nsrv",
    }
    if kind in by_role:
        return eps[by_role[kind]]
    cidrs = {
        PeerKind.EXTERNAL: spec.topology.external.cidrs,
        PeerKind.VCS: spec.topology.vcs.cidrs
        if spec.topology.vcs
        else spec.topology.external.cidrs,
        PeerKind.DNS: spec.topology.dns.cidrs if spec.topology.dns else [],
        PeerKind.ADMIN_SSH: spec.access.admin_ssh.sources,
        PeerKind.SSH_RERUN: spec.access.ssh_rerun.sources or spec.topology.external.cidrs,
    }[kind]
    first = cidrs[0]
    ip = OUTSIDER if ipaddress.ip_network(first).prefixlen == 0 else host(first, 1)
    return Endpoint(ip, None, kind.value)


def allowed_probes(spec: ServerHardeningSpec) -> list[Probe]:
    """One probe per applicable allow row between compute roles and outside peers.

    Rows that involve the load balancers are checked through their ends (the LB is a hop):
    e.g. LB-IN-4 + NOMAD-OUT-3 mean a Nomad client reaches the Nomad server's port, which the
    NetworkPolicy tests probe at the pod; here only instance-to-instance rows are probed.
    """
    intent = compile_intent(spec)
    eps = endpoints(spec)
    probes: list[Probe] = []
    checks = {
        Requires.ADMIN_SSH: spec.access.admin_ssh.enabled,
        Requires.SSH_RERUN: spec.access.ssh_rerun.enabled,
        Requires.EXTERNAL_VMS: spec.topology.external_vms.enabled,
        Requires.DNS: spec.topology.dns is not None,
        Requires.LB_LAYER: not spec.topology.load_balancers.transparent,
        Requires.IN_CLUSTER_NOMAD: spec.topology.nomad_servers is None,
        Requires.EXTERNAL_NOMAD: spec.topology.nomad_servers is not None,
    }
    paired = _paired_rows(intent.profile.rows)
    for row in intent.profile.rows:
        if row.action is not Action.ALLOW or not all(checks[r] for r in row.requires):
            continue
        if Role.LOAD_BALANCERS in (row.subject, row.peer.role) or isinstance(row.ports, Ports):
            continue
        if row.peer.role is not None and row.peer.role == Role.EXTERNAL_VMS and "vm" not in eps:
            continue
        if row.subject is Role.EXTERNAL_VMS and "vm" not in eps:
            continue
        if row.peer.role is not None and row.id not in paired:
            # Between two governed roles a flow needs both sides' rows; the guide pairs them
            # (K8S-OUT-2 with NOMAD-IN-1, ...). An unpaired one is half a flow: not probed.
            continue
        subject = eps[
            {
                "kubernetesNodes": "k8s",
                "nomadClients": "nomad",
                "externalVMs": "vm",
                "nomadServers": "nsrv",
            }[row.subject.value]
        ]
        other = _peer_endpoint(spec, row.peer, eps)
        if row.peer.role == row.subject:
            other = eps[
                {
                    "kubernetesNodes": "k8s2",
                    "nomadClients": "nomad2",
                    "externalVMs": "vm2",
                    "nomadServers": "nsrv2",
                }[row.subject.value]
            ]
        src, dst = (other, subject) if row.direction is Direction.INGRESS else (subject, other)
        for proto in row.protocols:
            name = proto.value if proto.value != "all" else "tcp"
            port = (
                row.ports.first
                if row.ports is not None and not isinstance(row.ports, Ports)
                else 5432
            )
            probes.append(Probe(src, dst, name, port, True, row.id))
    return probes


def _paired_rows(rows: tuple[object, ...]) -> set[str]:
    """Rows between two governed roles whose mirror row (other side, same ports) exists."""
    from server_hardening.guide import GuideRow

    typed = [r for r in rows if isinstance(r, GuideRow) and r.action is Action.ALLOW]
    out = set()
    for row in typed:
        if row.peer.role is None:
            continue
        for other in typed:
            if (
                other.subject == row.peer.role
                and other.peer.role == row.subject
                and other.direction is not row.direction
                and (other.ports == row.ports or other.ports is None)
            ):
                out.add(row.id)
    return out


def blocked_probes(spec: ServerHardeningSpec) -> list[Probe]:
    """Flows the guide never allows: isolation, and ports nobody lists."""
    eps = endpoints(spec)
    probes = [
        Probe(eps["nomad"], eps["nomad2"], "tcp", port, False, "NOMAD-ISO-1")
        for port in (22, 2376, 4647, 64535, 65535)
    ]
    if "vm" in eps:
        probes += [
            Probe(eps["vm"], eps["vm2"], "tcp", port, False, "VM-ISO-1")
            for port in (22, 2376, 54782)
        ]
        probes.append(Probe(eps["outsider"], eps["vm"], "tcp", 2376, False, "VM-IN-3/4 only"))
        probes.append(Probe(eps["vm"], eps["nomad"], "tcp", 4647, False, "unlisted"))
    probes += [
        Probe(eps["outsider"], eps["nomad"], "tcp", 4647, False, "NOMAD-IN-1 only"),
        Probe(eps["outsider"], eps["k8s"], "tcp", 5432, False, "unlisted (postgres)"),
        Probe(eps["nomad"], eps["k8s"], "tcp", 27017, False, "unlisted (mongodb)"),
        Probe(eps["outsider"], eps["k8s"], "tcp", 8200, False, "unlisted (vault)"),
    ]
    if not spec.access.admin_ssh.enabled:
        probes += [
            Probe(eps["outsider"], eps["nomad"], "tcp", 22, False, "ALL-IN-1 disabled"),
            Probe(eps["outsider"], eps["k8s"], "tcp", 22, False, "ALL-IN-1 disabled"),
        ]
    if not spec.access.ssh_rerun.enabled:
        probes.append(Probe(eps["outsider"], eps["nomad"], "tcp", 64535, False, "sshRerun off"))
    return probes


def guide_probes(spec: ServerHardeningSpec) -> list[Probe]:
    return allowed_probes(spec) + blocked_probes(spec)
