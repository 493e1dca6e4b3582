"""Intent + catalogue -> provider-neutral rules. Pure: no I/O here.

:func:`compile_intent` resolves every guide row of the spec's profile against the spec's
topology and access settings: which rows apply, who the peers are (as addresses, keeping the
role so renderers can reference it more tightly), and which ports. It merges rules with the
same effect and returns them with the findings a person should read before applying.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from server_hardening.addresses import parse
from server_hardening.guide import (
    GCP_HEALTH_CHECK_RANGES,
    Component,
    ComponentDefault,
    GuideRow,
    Ports,
    Profile,
    Requires,
    match_version,
)
from server_hardening.model import (
    WORLD,
    LoadBalancerTargets,
    NomadRuntime,
    ServerHardeningSpec,
)
from server_hardening.rules import (
    Action,
    Direction,
    Finding,
    FindingCode,
    Peer,
    PeerKind,
    PortRange,
    Protocol,
    Role,
    Rule,
)

CloudTarget = Literal["aws", "gcp"]


@dataclass(frozen=True)
class ComponentAccess:
    """What one in-cluster component must accept, from the LB-IN rows (for NetworkPolicies).

    ``service_ports`` are the guide's Service ports; the NetworkPolicy renderer maps them to pod
    ports through the component's resolution.
    """

    component: Component
    peers: tuple[Peer, ...]
    service_ports: tuple[int, ...]
    rows: tuple[str, ...]


@dataclass(frozen=True)
class CompiledIntent:
    spec: ServerHardeningSpec
    profile: Profile
    rules: tuple[Rule, ...]
    cluster: tuple[ComponentAccess, ...]
    findings: tuple[Finding, ...]
    _gcp_rules: tuple[Rule, ...] = ()
    _aws_rules: tuple[Rule, ...] | None = None

    def cloud_rules(self, target: CloudTarget) -> tuple[Rule, ...]:
        """The rules a cloud target renders. GCP load balancers are always pass-through, so
        GCP gets rules compiled as transparent plus the health-check ranges; AWS gets ``rules``
        plus what only the instances need (the servers' NLB health check, the Nomad clients'
        metrics), which the namespace's egress policy must not open to every pod."""
        if target == "gcp":
            return self._gcp_rules
        return self.rules if self._aws_rules is None else self._aws_rules

    def component_default(self, component: Component) -> ComponentDefault | None:
        return self.profile.components.get(component)

    def node_egress_allows(self) -> tuple[Rule, ...]:
        """The Kubernetes nodes' outbound allows: what the namespace's pods may reach with
        ``restrictEgress`` (the egress policy writes them, ``verify`` checks them)."""
        return tuple(
            rule
            for rule in self.rules
            if rule.subject is Role.KUBERNETES_NODES
            and rule.direction is Direction.EGRESS
            and rule.action is Action.ALLOW
        )


def _sorted_cidrs(cidrs: Iterable[str]) -> tuple[str, ...]:
    unique = {parse(c) for c in cidrs}
    return tuple(str(n) for n in sorted(unique, key=lambda n: (n.version, n)))


class _Resolver:
    """Turns a row's symbolic peer and ports into concrete ones for one spec."""

    def __init__(
        self,
        spec: ServerHardeningSpec,
        *,
        transparent: bool,
        peers: Mapping[PeerKind, Peer] | None = None,
        nlb_by_address: bool = False,
    ) -> None:
        """``peers``: another resolver's for the same spec (they do not depend on
        ``transparent``), so the second resolver of a compile does not sort them again."""
        self.spec = spec
        self.transparent = transparent
        self.nlb_by_address = nlb_by_address
        topo = spec.topology
        external = tuple(topo.external.cidrs)
        rerun = tuple(spec.access.ssh_rerun.sources) or external
        lb_cidrs = tuple(topo.load_balancers.cidrs) or tuple(topo.kubernetes_nodes.cidrs)
        self.addresses: dict[PeerKind, tuple[str, ...]] = {
            PeerKind.KUBERNETES_NODES: tuple(topo.kubernetes_nodes.cidrs),
            PeerKind.KUBERNETES_PODS: (
                tuple(topo.kubernetes_pods.cidrs) if topo.kubernetes_pods else ()
            ),
            PeerKind.NOMAD_CLIENTS: tuple(topo.nomad_clients.cidrs),
            PeerKind.EXTERNAL_VMS: tuple(topo.external_vms.cidrs),
            PeerKind.LOAD_BALANCERS: lb_cidrs,
            PeerKind.NOMAD_SERVERS: tuple(topo.nomad_servers.cidrs) if topo.nomad_servers else (),
            PeerKind.EXTERNAL: external,
            PeerKind.VCS: tuple(topo.vcs.cidrs) if topo.vcs else external,
            PeerKind.DNS: tuple(topo.dns.cidrs) if topo.dns else (),
            PeerKind.ADMIN_SSH: tuple(spec.access.admin_ssh.sources),
            PeerKind.SSH_RERUN: rerun,
            PeerKind.HEALTH_CHECKS: GCP_HEALTH_CHECK_RANGES,
        }
        # Every row asks for its peers: each kind's addresses are sorted once per spec.
        self.peers: Mapping[PeerKind, Peer] = (
            {kind: Peer(kind, _sorted_cidrs(c)) for kind, c in self.addresses.items()}
            if peers is None
            else peers
        )
        # What each requirement needs is the same for every row: decided once, not per row.
        self._met = {
            Requires.ADMIN_SSH: spec.access.admin_ssh.enabled,
            Requires.SSH_RERUN: spec.access.ssh_rerun.enabled,
            Requires.EXTERNAL_VMS: topo.external_vms.enabled,
            Requires.DNS: topo.dns is not None,
            Requires.LB_LAYER: not transparent,
            Requires.IN_CLUSTER_NOMAD: topo.nomad_servers is None,
            Requires.EXTERNAL_NOMAD: topo.nomad_servers is not None,
        }

    def peer(self, kind: PeerKind) -> Peer:
        # A transparent load balancer is no layer of its own: what the guide sends to it goes
        # to the nodes behind it.
        if kind is PeerKind.LOAD_BALANCERS and self.transparent:
            kind = PeerKind.KUBERNETES_NODES
        return self.peers[kind]

    def ports(self, ports: PortRange | Ports | None) -> PortRange | None:
        if ports is Ports.SSH_RERUN:
            return ssh_rerun_ports(self.spec)
        if isinstance(ports, Ports):
            node_ports = self.spec.topology.load_balancers.node_port_range
            return PortRange(node_ports.from_, node_ports.to)
        return ports

    def row_peer(self, row: GuideRow) -> Peer:
        """The row's peer; through the Nomad servers' NLB on AWS, by address
        (CHOICE-AWS-NOMAD-NLB)."""
        peer = self.peer(row.peer)
        if row.through_nlb and self.nlb_by_address:
            return Peer(PeerKind.CIDRS, peer.cidrs)
        return peer

    def choices(self, row: GuideRow) -> frozenset[str]:
        """The CHOICE rows that shaped how ``row`` was resolved, for its provenance."""
        out = set()
        if row.ports is Ports.SSH_RERUN and self.podman:
            out.add("CHOICE-NOMAD-PODMAN")
        if row.through_nlb and self.nlb_by_address:
            out.add("CHOICE-AWS-NOMAD-NLB")
        return frozenset(out)

    @property
    def podman(self) -> bool:
        return self.spec.topology.nomad_clients.runtime is NomadRuntime.PODMAN

    def applies(self, row: GuideRow) -> bool:
        if not all(self._met[r] for r in row.requires):
            return False
        vms_off = not self._met[Requires.EXTERNAL_VMS]
        return not (
            vms_off and (row.subject is Role.EXTERNAL_VMS or row.peer is PeerKind.EXTERNAL_VMS)
        )

    def subject(self, row: GuideRow) -> Role:
        if row.subject is Role.LOAD_BALANCERS and self.transparent:
            return Role.KUBERNETES_NODES
        return row.subject


DOCKER_SSH_RERUN = PortRange(64535, 65535)
PODMAN_SSH_RERUN = PortRange(32768, 65535)  # server-terraform use_podman


def ssh_rerun_ports(spec: ServerHardeningSpec) -> PortRange:
    """NOMAD-IN-2's range for the Nomad clients' runtime (CHOICE-NOMAD-PODMAN)."""
    if spec.topology.nomad_clients.runtime is NomadRuntime.PODMAN:
        return PODMAN_SSH_RERUN
    return DOCKER_SSH_RERUN


def _rules_from_rows(rows: Sequence[GuideRow], resolver: _Resolver) -> list[Rule]:
    rules: list[Rule] = []
    pods = resolver.peers[PeerKind.KUBERNETES_PODS]
    for row in rows:
        if not resolver.applies(row):
            continue
        peer = resolver.row_peer(row)
        peers = [(peer, frozenset({row.id}) | resolver.choices(row))]
        if row.peer is PeerKind.KUBERNETES_NODES and pods.cidrs:
            # Pods that send from addresses of their own are the nodes' traffic too.
            peers.append((pods, frozenset({row.id, "CHOICE-K8S-PODS"})))
        ports = resolver.ports(row.ports)
        for each_peer, row_ids in peers:
            if not each_peer.cidrs:
                continue
            for protocol in row.protocols:
                rules.append(
                    Rule(
                        subject=resolver.subject(row),
                        direction=row.direction,
                        action=row.action,
                        peer=each_peer,
                        protocol=protocol,
                        ports=None if protocol is Protocol.ALL else ports,
                        rows=row_ids,
                    )
                )
    return rules


_Lane = tuple[Role, Direction, Action, Peer, Protocol]


def merge_rules(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """Merge rules that do the same thing, and coalesce touching or overlapping port ranges of
    rules that differ only in ports. Rows are unioned, so provenance is kept. What is allowed
    (or denied) does not change: a property test checks it."""
    by_effect: dict[tuple[Role, Direction, Action, Peer, Protocol, PortRange | None], set[str]]
    by_effect = defaultdict(set)
    for rule in rules:
        by_effect[rule.effect_key()].update(rule.rows)

    by_lane: dict[_Lane, list[tuple[PortRange | None, set[str]]]] = defaultdict(list)
    for (subject, direction, action, peer, protocol, ports), rows in by_effect.items():
        by_lane[(subject, direction, action, peer, protocol)].append((ports, rows))

    merged: list[Rule] = []
    for (subject, direction, action, peer, protocol), entries in by_lane.items():
        all_ports = [rows for ports, rows in entries if ports is None]
        if all_ports:
            # Every port is allowed already: the narrower ranges add nothing but provenance.
            rows = set().union(*(r for _, r in entries))
            merged.append(Rule(subject, direction, action, peer, protocol, None, frozenset(rows)))
            continue
        ranges = sorted(
            ((p, r) for p, r in entries if p is not None), key=lambda e: (e[0].first, e[0].last)
        )
        current, current_rows = ranges[0][0], set(ranges[0][1])
        for ports, rows in ranges[1:]:
            if ports.first <= current.last + 1:
                current = PortRange(current.first, max(current.last, ports.last))
                current_rows |= rows
            else:
                merged.append(
                    Rule(
                        subject, direction, action, peer, protocol, current, frozenset(current_rows)
                    )
                )
                current, current_rows = ports, set(rows)
        merged.append(
            Rule(subject, direction, action, peer, protocol, current, frozenset(current_rows))
        )
    return tuple(sorted(merged, key=Rule.sort_key))


def _cluster_access(
    profile: Profile, spec: ServerHardeningSpec, resolver: _Resolver
) -> tuple[ComponentAccess, ...]:
    """The LB-IN rows seen from inside the cluster: who must reach which component."""
    by_component: dict[Component, list[GuideRow]] = defaultdict(list)
    for row in profile.rows:
        if row.component is not None and resolver.applies(row):
            by_component[row.component].append(row)
    snat_sources: list[Peer] = []
    if not spec.topology.load_balancers.transparent:
        snat_sources.append(resolver.peer(PeerKind.KUBERNETES_NODES))
        if spec.topology.load_balancers.cidrs:
            snat_sources.append(resolver.peer(PeerKind.LOAD_BALANCERS))
    out: list[ComponentAccess] = []
    for component in Component:
        rows = by_component.get(component)
        if not rows:
            continue
        peers = {resolver.peer(r.peer) for r in rows} | set(snat_sources)
        ports = sorted({r.ports.first for r in rows if isinstance(r.ports, PortRange)})
        row_ids = sorted({r.id for r in rows})
        if snat_sources:
            row_ids.append("CHOICE-NP-SNAT")
        out.append(
            ComponentAccess(
                component=component,
                peers=tuple(sorted(peers)),
                service_ports=tuple(ports),
                rows=tuple(row_ids),
            )
        )
    return tuple(out)


def _findings(spec: ServerHardeningSpec, profile: Profile) -> list[Finding]:
    findings: list[Finding] = []
    rerun = spec.access.ssh_rerun
    rerun_sources = rerun.sources or spec.topology.external.cidrs
    if rerun.enabled and any(parse(c).prefixlen == 0 for c in rerun_sources):
        for row, ports in (("NOMAD-IN-2", str(ssh_rerun_ports(spec))), ("VM-IN-5", "54782")):
            if row == "VM-IN-5" and not spec.topology.external_vms.enabled:
                continue
            findings.append(
                Finding.of(
                    FindingCode.WORLD_OPEN_SSH_RERUN,
                    f"SSH-rerun ports {ports} are open to the world, as the guide allows; "
                    "narrow spec.access.sshRerun.sources to your users' addresses (VPN/office) "
                    "if you can",
                    row=row,
                )
            )
    if not spec.topology.dns:
        findings.append(
            Finding.of(
                FindingCode.DNS_NOT_CONFIGURED,
                "spec.topology.dns is not set: ALL-OUT-1 is not rendered (AWS never filters its "
                "own resolver; elsewhere set the VPC resolver's address)",
                row="ALL-OUT-1",
            )
        )
    in_cluster_nomad = spec.topology.nomad_servers is None  # else 4647 is not on the proxy
    if (
        profile.name.startswith("v4")
        and in_cluster_nomad
        and spec.aws
        and not spec.aws.security_groups.load_balancers
    ):
        findings.append(
            Finding.of(
                FindingCode.PUBLIC_NOMAD_PORT,
                "v4 serves 4647 on the public circleci-proxy load balancer; without "
                "spec.aws.securityGroups.loadBalancers it is not narrowed here: set "
                "nginx.loadBalancerSourceRanges to the Nomad client CIDRs",
                row="LB-IN-4",
            )
        )
    if spec.access.admin_ssh.enabled:
        findings.append(
            Finding.of(
                FindingCode.ADMIN_SSH_ENABLED,
                "admin SSH (ALL-IN-1) is open from "
                + ", ".join(spec.access.admin_ssh.sources)
                + "; the guide suggests adding it only when needed",
                row="ALL-IN-1",
            )
        )
    findings.extend(_load_balancer_findings(spec))
    if set(spec.topology.external.cidrs) - set(WORLD):
        findings.append(
            Finding.of(
                FindingCode.EXTERNAL_NARROWED,
                "external is narrowed to " + ", ".join(spec.topology.external.cidrs),
            )
        )
    return findings


def _load_balancer_findings(spec: ServerHardeningSpec) -> list[Finding]:
    """Combinations of loadBalancers.transparent, cidrs and targetType that cannot be right
    (docs/aws.md, "Network load balancers")."""
    lbs = spec.topology.load_balancers
    out: list[str] = []
    if lbs.transparent and lbs.cidrs:
        out.append(
            "loadBalancers.cidrs is ignored with transparent: true (a transparent load balancer "
            "is no layer of its own, so nothing admits its addresses): drop one of them"
        )
    if lbs.target_type is LoadBalancerTargets.INSTANCE and lbs.transparent:
        out.append(
            "an NLB with instance targets reaches the NodePorts, and kube-proxy hands the "
            "traffic on from node addresses: with transparent: true the LB-IN rows open 80/443 "
            "on the nodes, which carry nothing, and the component policies admit no node "
            "address (CHOICE-NP-SNAT), which cuts the Nomad clients' 4647 through the proxy; set "
            "transparent: false"
        )
    return [
        Finding.of(FindingCode.LOAD_BALANCER_MISMATCH, message, row="K8S-IN-1") for message in out
    ]


def _version_findings(spec: ServerHardeningSpec) -> list[Finding]:
    version = match_version(spec.server_version)
    if not version.note:
        return []
    code = (
        FindingCode.SERVER_VERSION_NEWER_THAN_CATALOGUE
        if version.newer_than_catalogue
        else FindingCode.SERVER_VERSION_UNPINNED
    )
    return [Finding.of(code, version.note)]


NOMAD_HTTP = PortRange.single(4646)  # the Nomad agents' HTTP API: health and metrics
NOMAD_PORTS = PortRange(4646, 4648)


def _allow(
    subject: Role, direction: Direction, peer: Peer, ports: PortRange | None, *rows: str
) -> Rule:
    return Rule(subject, direction, Action.ALLOW, peer, Protocol.TCP, ports, frozenset(rows))


def _nomad_metrics(resolver: _Resolver) -> list[Rule]:
    """CHOICE-NP-MONITORING's cloud half: the cluster (nodes and pods) scrapes the Nomad
    clients' 4646 (their telemetry's prometheus_metrics)."""
    out = []
    for kind in (PeerKind.KUBERNETES_NODES, PeerKind.KUBERNETES_PODS):
        peer = resolver.peers[kind]
        if peer.cidrs:
            out.append(_allow(Role.NOMAD_CLIENTS, Direction.INGRESS, peer, NOMAD_HTTP,
                              "CHOICE-NP-MONITORING"))  # fmt: skip
    out.append(
        _allow(Role.KUBERNETES_NODES, Direction.EGRESS, resolver.peers[PeerKind.NOMAD_CLIENTS],
               NOMAD_HTTP, "CHOICE-NP-MONITORING")
    )  # fmt: skip
    return out


def compile_intent(spec: ServerHardeningSpec) -> CompiledIntent:
    profile = match_version(spec.server_version).profile
    transparent = spec.topology.load_balancers.transparent
    resolver = _Resolver(spec, transparent=transparent, nlb_by_address=True)
    rules = merge_rules(_rules_from_rows(profile.rows, resolver))

    gcp_resolver = _Resolver(spec, transparent=True, peers=resolver.peers)
    gcp_rows = _rules_from_rows(profile.rows, gcp_resolver)
    node_ports = resolver.ports(Ports.NODE_PORTS)
    health_checks = gcp_resolver.peer(PeerKind.HEALTH_CHECKS)
    gcp_rows.append(
        _allow(Role.KUBERNETES_NODES, Direction.INGRESS, health_checks, node_ports,
               "K8S-IN-1", "CHOICE-GCP-HEALTH-CHECKS")
    )  # fmt: skip
    # The Nomad clients' managed instance group autoheals on 4646 (server-terraform
    # nomad-gcp): without this the ingress floor would fail every check and recycle healthy
    # clients (CHOICE-NOMAD-HEALTH-CHECKS).
    gcp_rows.append(
        _allow(Role.NOMAD_CLIENTS, Direction.INGRESS, health_checks, NOMAD_HTTP,
               "CHOICE-NOMAD-HEALTH-CHECKS")
    )  # fmt: skip
    aws_rows: list[Rule] = []
    if spec.topology.nomad_servers is not None:
        # The servers' load balancer is pass-through on GCP: without this, the ingress floor
        # (CHOICE-GCP-INGRESS-FLOOR) would fail its health checks and take the servers out.
        gcp_rows.append(
            _allow(Role.NOMAD_SERVERS, Direction.INGRESS, health_checks, NOMAD_PORTS,
                   "CHOICE-NOMAD-HEALTH-CHECKS")
        )  # fmt: skip
        # On AWS the internal NLB checks HTTPS :4646 from its own addresses in the servers'
        # subnet (server-terraform nomad-server-aws nlb.tf; 4.8's NLB has no security group,
        # so a group reference would not match): the servers admit that subnet on 4646.
        servers = resolver.peer(PeerKind.NOMAD_SERVERS)
        aws_rows.append(
            _allow(Role.NOMAD_SERVERS, Direction.INGRESS, Peer(PeerKind.CIDRS, servers.cidrs),
                   NOMAD_HTTP, "CHOICE-NOMAD-HEALTH-CHECKS")
        )  # fmt: skip
    monitoring = spec.kubernetes.monitoring
    if monitoring is not None and monitoring.nomad_clients:
        for target_resolver, out in ((resolver, aws_rows), (gcp_resolver, gcp_rows)):
            out.extend(_nomad_metrics(target_resolver))
    return CompiledIntent(
        spec=spec,
        profile=profile,
        rules=rules,
        _aws_rules=merge_rules((*rules, *aws_rows)) if aws_rows else None,
        cluster=_cluster_access(profile, spec, resolver),
        findings=tuple(_version_findings(spec) + _findings(spec, profile)),
        _gcp_rules=merge_rules(gcp_rows),
    )
