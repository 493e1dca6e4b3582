"""The guide catalogue: CircleCI's "hardening your cluster" rows as data, per server version.

Pure: no I/O here. Every rule the product writes cites the ``id`` of a row below. IDs are the
ones ``docs/guide.md`` gives (its tables are this catalogue's test); rows that the guide leaves
to the implementer (NetworkPolicy shapes, the v4 table's unnamed row, GCP health checks) carry
IDs of the form ``CHOICE-*`` or ``V4-*`` and say what was chosen and why.

Three profiles: ``v3`` (3.x), ``v4.0`` (4.0 to 4.2) and ``v4.3`` (4.3 and later).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from server_hardening.rules import Action, Direction, PeerKind, PortRange, Protocol, Role


class Requires(enum.StrEnum):
    """When a row applies; rows without a requirement always do."""

    ADMIN_SSH = "adminSSH enabled"
    SSH_RERUN = "sshRerun enabled"
    EXTERNAL_VMS = "externalVMs enabled"
    DNS = "topology.dns set"
    LB_LAYER = "load balancers are not transparent"
    IN_CLUSTER_NOMAD = "Nomad servers in the cluster"
    EXTERNAL_NOMAD = "topology.nomadServers set"


class Ports(enum.StrEnum):
    """Ports that come from the spec rather than the guide."""

    NODE_PORTS = "nodePortRange"
    SSH_RERUN = "the Nomad clients' SSH-rerun range (topology.nomadClients.runtime)"


class Component(enum.StrEnum):
    """The in-cluster services the LB-IN rows reach (spec.kubernetes.components keys)."""

    FRONTEND = "frontend"
    NOMAD_SERVER = "nomadServer"
    OUTPUT_PROCESSOR = "outputProcessor"
    VM_SERVICE = "vmService"


K8S = Role.KUBERNETES_NODES
NOMAD = Role.NOMAD_CLIENTS
VMS = Role.EXTERNAL_VMS
LB = Role.LOAD_BALANCERS
SERVERS = Role.NOMAD_SERVERS
COMPUTE = (K8S, NOMAD, VMS)  # "all compute instances (not the load balancers)"


@dataclass(frozen=True)
class GuideRow:
    """One row of the guide, for one subject role.

    A guide row that names several subjects ("all compute instances") appears once per subject
    with the same ``id``. ``ports`` is a fixed range, :attr:`Ports.NODE_PORTS`, or None (all).
    ``component`` is set on LB-IN rows: the in-cluster service behind the load balancer.
    """

    id: str
    subject: Role
    direction: Direction
    peer: PeerKind
    protocols: tuple[Protocol, ...]
    ports: PortRange | Ports | None
    purpose: str
    action: Action = Action.ALLOW
    requires: tuple[Requires, ...] = ()
    component: Component | None = None
    # The traffic passes the external Nomad servers' internal NLB, which keeps the sender's
    # address but not its security group: on AWS the peer is written by address
    # (CHOICE-AWS-NOMAD-NLB).
    through_nlb: bool = False


def _tcp(port: int, last: int | None = None) -> PortRange:
    return PortRange(port, last if last is not None else port)


def _row(
    row_id: str,
    subjects: Role | tuple[Role, ...],
    direction: Direction,
    peer: PeerKind,
    ports: PortRange | Ports | None,
    purpose: str,
    *,
    protocols: tuple[Protocol, ...] = (Protocol.TCP,),
    action: Action = Action.ALLOW,
    requires: tuple[Requires, ...] = (),
    component: Component | None = None,
    through_nlb: bool = False,
) -> list[GuideRow]:
    subject_list = subjects if isinstance(subjects, tuple) else (subjects,)
    return [
        GuideRow(
            row_id,
            s,
            direction,
            peer,
            protocols,
            ports,
            purpose,
            action,
            requires,
            component,
            through_nlb,
        )
        for s in subject_list
    ]


IN, OUT = Direction.INGRESS, Direction.EGRESS
P = PeerKind

# ------------------------------------------------------------------------------------------
# The v3.x rows, in the guide's order.

_LB_IN_FRONTEND = [
    *_row("LB-IN-1", LB, IN, P.EXTERNAL, _tcp(80), "web UI and frontend API",
          component=Component.FRONTEND),
    *_row("LB-IN-2", LB, IN, P.EXTERNAL, _tcp(443), "web UI and frontend API",
          component=Component.FRONTEND),
]  # fmt: skip
_LB_IN_VM_SERVICE = _row(
    "LB-IN-3", LB, IN, P.NOMAD_CLIENTS, _tcp(3000), "Nomad clients talk to the VM service",
    component=Component.VM_SERVICE,
)  # fmt: skip
_LB_IN_NOMAD = _row(
    "LB-IN-4", LB, IN, P.NOMAD_CLIENTS, _tcp(4647), "Nomad clients talk to the Nomad server",
    component=Component.NOMAD_SERVER, requires=(Requires.IN_CLUSTER_NOMAD,),
)  # fmt: skip
_LB_IN_OUTPUT = _row(
    "LB-IN-5", LB, IN, P.NOMAD_CLIENTS, _tcp(8585), "Nomad clients send job output",
    component=Component.OUTPUT_PROCESSOR,
)  # fmt: skip
_LB_OUT = _row(
    "LB-OUT-1", LB, OUT, P.KUBERNETES_NODES, Ports.NODE_PORTS,
    "reach the services behind the load balancer", requires=(Requires.LB_LAYER,),
)  # fmt: skip

_ALL = [
    *_row("ALL-IN-1", COMPUTE, IN, P.ADMIN_SSH, _tcp(22), "SSH to the instance (admin)",
          requires=(Requires.ADMIN_SSH,)),
    *_row("ALL-OUT-1", COMPUTE, OUT, P.DNS, _tcp(53), "name resolution",
          protocols=(Protocol.UDP, Protocol.TCP), requires=(Requires.DNS,)),
    *_row("ALL-OUT-2", COMPUTE, OUT, P.EXTERNAL, _tcp(80), "HTTP"),
    *_row("ALL-OUT-3", COMPUTE, OUT, P.EXTERNAL, _tcp(443), "HTTPS"),
    *_row("ALL-OUT-4", COMPUTE, OUT, P.VCS, _tcp(22), "pull code from the VCS over SSH"),
    # Not for the VMs themselves: VM-ISO-1 says VMs never talk to each other.
    *_row("ALL-OUT-4", (K8S, NOMAD), OUT, P.EXTERNAL_VMS, _tcp(22), "SSH drives the external VMs",
          requires=(Requires.EXTERNAL_VMS,)),
]  # fmt: skip

_K8S = [
    *_row("K8S-IN-1", K8S, IN, P.LOAD_BALANCERS, Ports.NODE_PORTS,
          "the NodePort range is all that inbound needs", requires=(Requires.LB_LAYER,)),
    *_row("K8S-OUT-1", K8S, OUT, P.EXTERNAL_VMS, _tcp(2376), "talk to the VMs (remote Docker)",
          requires=(Requires.EXTERNAL_VMS,)),
    *_row("K8S-OUT-2", K8S, OUT, P.NOMAD_CLIENTS, _tcp(4647), "talk to the Nomad clients",
          requires=(Requires.IN_CLUSTER_NOMAD,)),
    *_row("K8S-OUT-3", K8S, OUT, P.KUBERNETES_NODES, None, "traffic inside the cluster",
          protocols=(Protocol.ALL,)),
    *_row("K8S-IN-2", K8S, IN, P.KUBERNETES_NODES, None, "traffic inside the cluster",
          protocols=(Protocol.ALL,)),
]  # fmt: skip

_NOMAD_IN = [
    *_row("NOMAD-IN-1", NOMAD, IN, P.KUBERNETES_NODES, _tcp(4647),
          "the Nomad server talks to the client", requires=(Requires.IN_CLUSTER_NOMAD,)),
    *_row("NOMAD-IN-2", NOMAD, IN, P.SSH_RERUN, Ports.SSH_RERUN, "rerun job with SSH",
          requires=(Requires.SSH_RERUN,)),
]  # fmt: skip
_NOMAD_OUT_VM_DOCKER = _row(
    "NOMAD-OUT-1", NOMAD, OUT, P.EXTERNAL_VMS, _tcp(2376), "remote Docker on the VMs",
    requires=(Requires.EXTERNAL_VMS,),
)  # fmt: skip
_NOMAD_OUT_VM_SERVICE = _row(
    "NOMAD-OUT-2", NOMAD, OUT, P.LOAD_BALANCERS, _tcp(3000), "the VM-service load balancer"
)
_NOMAD_OUT_NOMAD = [
    *_row("NOMAD-OUT-3", NOMAD, OUT, P.LOAD_BALANCERS, _tcp(4647), "the Nomad load balancer",
          requires=(Requires.IN_CLUSTER_NOMAD,)),
]  # fmt: skip
_NOMAD_OUT_OUTPUT = _row(
    "NOMAD-OUT-4", NOMAD, OUT, P.LOAD_BALANCERS, _tcp(8585), "the output-processor load balancer"
)
_NOMAD_ISO = [
    row
    for direction in (IN, OUT)
    for row in _row("NOMAD-ISO-1", NOMAD, direction, P.NOMAD_CLIENTS, None,
                    "Nomad clients never talk to each other", protocols=(Protocol.ALL,),
                    action=Action.DENY)
]  # fmt: skip

_VM_IN_FROM_CLUSTER = [
    *_row("VM-IN-1", VMS, IN, P.KUBERNETES_NODES, _tcp(22), "internal",
          requires=(Requires.EXTERNAL_VMS,)),
    *_row("VM-IN-2", VMS, IN, P.NOMAD_CLIENTS, _tcp(22), "internal",
          requires=(Requires.EXTERNAL_VMS,)),
    *_row("VM-IN-3", VMS, IN, P.KUBERNETES_NODES, _tcp(2376), "internal",
          requires=(Requires.EXTERNAL_VMS,)),
    *_row("VM-IN-4", VMS, IN, P.NOMAD_CLIENTS, _tcp(2376), "internal",
          requires=(Requires.EXTERNAL_VMS,)),
]  # fmt: skip
_VM_REST = [
    *_row("VM-IN-5", VMS, IN, P.SSH_RERUN, _tcp(54782), "rerun job with SSH",
          requires=(Requires.EXTERNAL_VMS, Requires.SSH_RERUN)),
    *_row("VM-OUT-1", VMS, OUT, P.VCS, _tcp(22), "the only outbound the VMs need",
          requires=(Requires.EXTERNAL_VMS,)),
    *_row("VM-ISO-1", VMS, IN, P.EXTERNAL_VMS, None, "external VMs never talk to each other",
          protocols=(Protocol.ALL,), action=Action.DENY, requires=(Requires.EXTERNAL_VMS,)),
    *_row("VM-ISO-1", VMS, OUT, P.EXTERNAL_VMS, None, "external VMs never talk to each other",
          protocols=(Protocol.ALL,), action=Action.DENY, requires=(Requires.EXTERNAL_VMS,)),
]  # fmt: skip

# The v4 table's "Nomad clients: outbound 22 to VMs: added". The guide gives it no ID.
_V4_NOMAD_SSH_TO_VMS = _row(
    "V4-NOMAD-OUT-22", NOMAD, OUT, P.EXTERNAL_VMS, _tcp(22), "v4: Nomad clients SSH to the VMs",
    requires=(Requires.EXTERNAL_VMS,),
)  # fmt: skip


# ------------------------------------------------------------------------------------------
# 4.8+: Nomad servers outside the cluster (spec.topology.nomadServers). The guide's tables predate
# them; these rows follow the v4.8+ docs and CircleCI's server-terraform:
#   nomad-aws/modules/nomad-server-aws/server.tf: the servers' own security group, TCP 4646-4648
#     in (from the VPC CIDR there; narrowed here to who needs it), all egress;
#   nomad-aws/modules/nomad-server-aws/nlb.tf: an internal NLB with TCP listeners 4646, 4647 and
#     4648 in front of the servers;
#   nomad-gcp/modules/nomad-server-gcp/firewall.tf: TCP and UDP 4646-4648 to the servers'
#     network tags (from their subnet and Google's health-check ranges).
# Nomad's own ports: 4646 HTTP API, 4647 RPC, 4648 Serf (TCP and UDP, between servers).

_NOMAD_SERVERS_PORTS = _tcp(4646, 4648)
_EXTERNAL_NOMAD = (Requires.EXTERNAL_NOMAD,)
_NOMAD_SERVERS = [
    # The guide's rows that concern the servers, moved: NOMAD-IN-1's source is the servers, and
    # the Nomad load balancer of NOMAD-OUT-3 is theirs (server-terraform's internal NLB keeps the
    # clients' addresses; its addresses belong in topology.nomadServers). LB-IN-4 and K8S-OUT-2
    # require in-cluster servers; V48-SRV-OUT-1 is K8S-OUT-2 from the servers.
    *_row("NOMAD-IN-1", NOMAD, IN, P.NOMAD_SERVERS, _tcp(4647),
          "the Nomad server talks to the client", requires=_EXTERNAL_NOMAD),
    *_row("NOMAD-OUT-3", NOMAD, OUT, P.NOMAD_SERVERS, _tcp(4647), "the Nomad load balancer",
          requires=_EXTERNAL_NOMAD, through_nlb=True),
    *_row("V48-K8S-OUT-1", K8S, OUT, P.NOMAD_SERVERS, _NOMAD_SERVERS_PORTS,
          "the server's services drive Nomad (its NLB listens on 4646-4648)",
          requires=_EXTERNAL_NOMAD, through_nlb=True),
    *_row("V48-SRV-IN-1", SERVERS, IN, P.KUBERNETES_NODES, _NOMAD_SERVERS_PORTS,
          "the server's services drive Nomad", requires=_EXTERNAL_NOMAD, through_nlb=True),
    *_row("V48-SRV-IN-2", SERVERS, IN, P.NOMAD_CLIENTS, _tcp(4647),
          "Nomad clients reach the servers (RPC, through the NLB)", requires=_EXTERNAL_NOMAD,
          through_nlb=True),
    *_row("V48-SRV-OUT-1", SERVERS, OUT, P.NOMAD_CLIENTS, _tcp(4647),
          "the servers reach their clients (K8S-OUT-2, moved)", requires=_EXTERNAL_NOMAD),
    *[row for direction in (IN, OUT)
      for row in _row("V48-SRV-PEER-1", SERVERS, direction, P.NOMAD_SERVERS,
                      _NOMAD_SERVERS_PORTS, "the servers among themselves (HTTP, RPC, Serf)",
                      requires=_EXTERNAL_NOMAD)],
    *[row for direction in (IN, OUT)
      for row in _row("V48-SRV-PEER-1", SERVERS, direction, P.NOMAD_SERVERS, _tcp(4648),
                      "the servers among themselves (Serf)", protocols=(Protocol.UDP,),
                      requires=_EXTERNAL_NOMAD)],
    # The servers are compute instances too: the guide's rows for all of them.
    *_row("ALL-IN-1", SERVERS, IN, P.ADMIN_SSH, _tcp(22), "SSH to the instance (admin)",
          requires=(Requires.ADMIN_SSH, Requires.EXTERNAL_NOMAD)),
    *_row("ALL-OUT-1", SERVERS, OUT, P.DNS, _tcp(53), "name resolution",
          protocols=(Protocol.UDP, Protocol.TCP), requires=(Requires.DNS, Requires.EXTERNAL_NOMAD)),
    *_row("ALL-OUT-2", SERVERS, OUT, P.EXTERNAL, _tcp(80), "HTTP", requires=_EXTERNAL_NOMAD),
    *_row("ALL-OUT-3", SERVERS, OUT, P.EXTERNAL, _tcp(443), "HTTPS", requires=_EXTERNAL_NOMAD),
]  # fmt: skip


# ------------------------------------------------------------------------------------------
# Choices the guide leaves to the implementer (its last section). Each is cited like a row.


@dataclass(frozen=True)
class Choice:
    id: str
    summary: str


CHOICES: tuple[Choice, ...] = (
    Choice(
        "CHOICE-NP-DEFAULT-DENY",
        "Inside the cluster the guide defers to NetworkPolicies but lists none: the namespace "
        "gets a default deny of ingress (and of egress with restrictEgress), and explicit allows.",
    ),
    Choice(
        "CHOICE-NP-NAMESPACE",
        "Pods of the server's namespace reach each other freely (the guide: nothing needs to "
        "be restricted inside the cluster).",
    ),
    Choice(
        "CHOICE-NP-SNAT",
        "A load balancer that is not transparent reaches pods through a NodePort, so traffic "
        "arrives from node addresses: the component policies also admit the Kubernetes node "
        "CIDRs (and loadBalancers.cidrs). A transparent one keeps client addresses.",
    ),
    Choice(
        "CHOICE-NP-DNS",
        "With restrictEgress, pods may reach cluster DNS in kube-system on 53/UDP and 53/TCP.",
    ),
    Choice(
        "CHOICE-NP-APISERVER",
        "With restrictEgress, pods may reach the API server (spec.kubernetes.apiServer).",
    ),
    Choice(
        "CHOICE-NP-PORTS",
        "Component policies use the pod ports behind the guide's Services (their targetPort, "
        "resolved in the cluster), not the Service ports.",
    ),
    Choice(
        "CHOICE-GCP-HEALTH-CHECKS",
        "GCP load balancers are pass-through: Google's health-check ranges (130.211.0.0/22, "
        "35.191.0.0/16) must reach the NodePort range, with K8S-IN-1's purpose (the Nomad "
        "agents' checks are CHOICE-NOMAD-HEALTH-CHECKS).",
    ),
    Choice(
        "CHOICE-NOMAD-HEALTH-CHECKS",
        "Health checks are flows: the Nomad agents' HTTP port 4646 answers their health checks "
        "(/v1/agent/health). On GCP, Google's health-check ranges reach the Nomad clients' 4646 "
        "(server-terraform's client managed instance group autoheals on it) and the external "
        "Nomad servers' 4646-4648 (their pass-through load balancer). On AWS the external "
        "servers' internal NLB checks HTTPS :4646 from its own addresses in the servers' "
        "subnet (topology.nomadServers.cidrs): the servers admit that subnet on 4646, by "
        "address. Written as rules, so unmanagedRules: Remove never cuts them.",
    ),
    Choice(
        "CHOICE-AWS-NOMAD-NLB",
        "On AWS, the rows whose traffic passes the external Nomad servers' internal NLB "
        "(the clients' 4647, the cluster's 4646-4648, both directions) name their peer by "
        "address, not by security group: the NLB keeps the sender's address but not its "
        "group, and server-terraform 4.8's NLB has no security group at all, so a group "
        "reference would match nothing once the VPC-wide rule is removed.",
    ),
    Choice(
        "CHOICE-NOMAD-PODMAN",
        "NOMAD-IN-2's SSH-rerun range follows the Nomad clients' runtime: 64535-65535 with "
        "docker, 32768-65535 with podman (server-terraform's use_podman opens that range; "
        "podman's rootless port mapping hands out ports from 32768).",
    ),
    Choice(
        "CHOICE-K8S-PODS",
        "Pods whose addresses are not in the node subnets (VPC-native GKE's alias IPs) are a "
        "peer of their own: every guide row whose peer is the Kubernetes nodes also admits "
        "topology.kubernetesPods. On GCP with restrictEgress it is required: the egress floor "
        "would otherwise block pod traffic between nodes; the operator refuses the spec "
        "rather than guess the range.",
    ),
    Choice(
        "CHOICE-NP-MONITORING",
        "Opt-in (spec.kubernetes.monitoring): a metrics scraper in another namespace "
        "(CircleCI's monitoring reference: a Prometheus Operator scraping telegraf's "
        "prometheus-client port 9273) reaches the listed pod ports; with nomadClients, the "
        "cluster reaches the Nomad clients' metrics on 4646. Absent: nothing extra is opened.",
    ),
    Choice(
        "CHOICE-GCP-INGRESS-FLOOR",
        "On GCP every managed tag gets an INGRESS deny-all at priority 65000: below every "
        "explicit rule, above the default network's 65534 rules, so what the guide does not "
        "list is blocked even on a default network.",
    ),
    Choice(
        "CHOICE-GCP-EGRESS-FLOOR",
        "With gcp.restrictEgress every managed tag gets an EGRESS deny-all at priority 65000 "
        "(GCP allows all egress by default).",
    ),
    Choice(
        "CHOICE-V43-NO-SSH-TO-VMS",
        "v4.3+: no SSH to the VMs from the cluster or the Nomad clients, in either direction. "
        "The v4.3 guide drops the VMs' inbound 22 (VM-IN-1/2: its AWS VM table keeps only "
        "54782) yet keeps ALL-OUT-4's 22 to the VM subnet and the v4 Nomad clients' 22 to the "
        "VMs (V4-NOMAD-OUT-22): an egress no ingress accepts can never carry traffic. Since 4.3 "
        "machine jobs run entirely on the VM and no longer flow through Nomad, so nothing needs "
        "that path: both sides go (ALL-OUT-4 keeps 22 to the VCS), rather than reopening SSH "
        "into every VM from the hosts that run users' jobs.",
    ),
    Choice(
        "CHOICE-V43-OBSOLETE-PORTS",
        "v4.3+: the overview exposes only 80/443 and 4647, so LB-IN-3 (3000) and LB-IN-5 (8585) "
        "are not written; the table still lists them.",
    ),
)

# ------------------------------------------------------------------------------------------
# Profiles


@dataclass(frozen=True)
class ComponentDefault:
    """Where the guide says a component's Service is, with the Service port numbers."""

    services: tuple[str, ...]
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    rows: tuple[GuideRow, ...]
    components: dict[Component, ComponentDefault] = field(default_factory=dict)

    def row(self, row_id: str) -> GuideRow:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise KeyError(row_id)

    def row_ids(self) -> frozenset[str]:
        return frozenset(r.id for r in self.rows)


V3 = Profile(
    name="v3",
    summary="CircleCI Server 3.x: separate internal load balancers for the VM service, Nomad "
    "and the output processor; frontend on circleci-server-traefik.",
    rows=(
        *_LB_IN_FRONTEND,
        *_LB_IN_VM_SERVICE,
        *_LB_IN_NOMAD,
        *_LB_IN_OUTPUT,
        *_LB_OUT,
        *_ALL,
        *_K8S,
        *_NOMAD_IN,
        *_NOMAD_OUT_VM_DOCKER,
        *_NOMAD_OUT_VM_SERVICE,
        *_NOMAD_OUT_NOMAD,
        *_NOMAD_OUT_OUTPUT,
        *_NOMAD_ISO,
        *_VM_IN_FROM_CLUSTER,
        *_VM_REST,
    ),
    components={
        Component.FRONTEND: ComponentDefault(("circleci-server-traefik",), (80, 443)),
        Component.VM_SERVICE: ComponentDefault(("vm-service",), (3000,)),
        Component.NOMAD_SERVER: ComponentDefault(("nomad-server-external",), (4647,)),
        Component.OUTPUT_PROCESSOR: ComponentDefault(("output-processor",), (8585,)),
    },
)

_PROXY = ("circleci-proxy", "circleci-proxy-acm")

V4_0 = Profile(
    name="v4.0",
    summary="CircleCI Server 4.0 to 4.2: one public load balancer (circleci-proxy, nginx in "
    "front of Kong) carries 80/443 and the Nomad-client ports 3000, 4647 and 8585.",
    rows=(*V3.rows, *_V4_NOMAD_SSH_TO_VMS),
    components={
        Component.FRONTEND: ComponentDefault(_PROXY, (80, 443)),
        Component.VM_SERVICE: ComponentDefault(_PROXY, (3000,)),
        Component.NOMAD_SERVER: ComponentDefault(_PROXY, (4647,)),
        Component.OUTPUT_PROCESSOR: ComponentDefault(_PROXY, (8585,)),
    },
)

_REMOVED_IN_V43 = {
    "K8S-OUT-1",
    "NOMAD-OUT-1",
    "NOMAD-OUT-2",
    "NOMAD-OUT-4",
    "VM-IN-1",
    "VM-IN-2",
    "VM-IN-3",
    "VM-IN-4",
    "LB-IN-3",
    "LB-IN-5",
}


def _ssh_to_the_vms(row: GuideRow) -> bool:
    """SSH from the cluster or the Nomad clients to the VMs: gone in v4.3 with its inbound side
    (CHOICE-V43-NO-SSH-TO-VMS)."""
    return row.peer is P.EXTERNAL_VMS and row.direction is OUT and row.ports == _tcp(22)


V4_3 = Profile(
    name="v4.3",
    summary="CircleCI Server 4.3 and later: circleci-proxy exposes 80/443 and 4647 only; "
    "machine jobs run entirely on the VM (VMs keep only 54782 inbound, and nothing SSHes to "
    "them: CHOICE-V43-NO-SSH-TO-VMS).",
    rows=(
        *(r for r in V4_0.rows if r.id not in _REMOVED_IN_V43 and not _ssh_to_the_vms(r)),
        *_NOMAD_SERVERS,
    ),
    components={
        Component.FRONTEND: ComponentDefault(_PROXY, (80, 443)),
        Component.NOMAD_SERVER: ComponentDefault(_PROXY, (4647,)),
    },
)

PROFILES: dict[str, Profile] = {p.name: p for p in (V3, V4_0, V4_3)}


# The newest release this catalogue was checked against. A newer 4.N maps to the newest profile
# with a finding that says so, instead of refusing every resource on the day a release ships.
NEWEST_KNOWN = (4, 10)


@dataclass(frozen=True)
class VersionMatch:
    """The profile for a ``serverVersion``, and what a person should know about the mapping."""

    profile: Profile
    note: str = ""  # empty: an exact, known version
    newer_than_catalogue: bool = False


def match_version(server_version: str) -> VersionMatch:
    """``"3"``, ``"3.x"``, ``"3.N"`` -> v3; ``"4.0"``..``"4.2"`` -> v4.0; ``"4.3"`` and later
    (``"4.N.P"`` too) -> v4.3; ``"4"`` and ``"4.x"`` -> the newest profile, with a note (a 4.0-4.2
    installation needs its minor version)."""
    match = re.fullmatch(r"(\d+)(?:\.(x|\d+)(?:\.\d+)?)?", server_version)
    if not match:
        raise ValueError(f"{server_version!r} is not a server version")
    major, minor_text = int(match.group(1)), match.group(2)
    if major == 3:
        return VersionMatch(V3)
    if major != 4:
        raise ValueError(f"server version {server_version!r} has no guide profile (3.x or 4.x)")
    if minor_text in {None, "x"}:
        return VersionMatch(
            V4_3,
            f"serverVersion {server_version!r} is read as the newest 4.x release (profile "
            f"{V4_3.name}, 4.3 and later); a 4.0-4.2 installation must name its minor version "
            f"(profile {V4_0.name} keeps 2376, 3000 and 8585)",
        )
    minor = int(minor_text)
    if minor <= 2:
        return VersionMatch(V4_0)
    if (major, minor) > NEWEST_KNOWN:
        newest = ".".join(str(n) for n in NEWEST_KNOWN)
        return VersionMatch(
            V4_3,
            f"serverVersion {server_version!r} is newer than the catalogue (checked against "
            f"{newest}): the newest profile, {V4_3.name}, is applied; check the release notes "
            "for network changes",
            newer_than_catalogue=True,
        )
    return VersionMatch(V4_3)


def profile_for(server_version: str) -> Profile:
    """The guide profile of a ``serverVersion`` (see :func:`match_version`)."""
    return match_version(server_version).profile


GCP_HEALTH_CHECK_RANGES = ("130.211.0.0/22", "35.191.0.0/16")
# Ports the guide always scopes to named peers and never opens to the internet, with the row
# that says so: the policy layer reports any rule that opens one to the world, on every target.
SENSITIVE_PORTS: dict[int, tuple[str, str]] = {
    22: ("ALL-IN-1", "SSH"),
    2376: ("VM-IN-3", "the VMs' Docker daemon"),
    4647: ("NOMAD-IN-1", "Nomad's RPC"),
}
