"""Does the guide hold on this installation now? Pure: no I/O here.

Every row of the resource's profile implies checks: from a role or a set of addresses, to a role,
on a protocol and port, that must be allowed or must be blocked (isolation rows, and what the
guide never lists: a sensitive port from the whole internet). Each configured target answers
every check on its **effective** state (``policy.effective``: every layer on every machine), and
a row holds when every one of its checks comes out as expected.

This is the product's own question, asked the way the truth tables of its tests ask it of the
rendered rules, but of the live machines, managed or not.

The ``kubernetes`` target asks its own checks (:func:`cluster_checks`): the LB-IN rows on the
component pods behind their Services, the namespace's default deny (from the internet and from
other namespaces), the namespace's own traffic, and with ``restrictEgress`` the nodes' outbound
rows from every pod; each answered on every NetworkPolicy of the namespace and its real pods.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol as Interface

from server_hardening.compiler import CompiledIntent, ssh_rerun_ports
from server_hardening.guide import SENSITIVE_PORTS, Component, GuideRow, Ports, Requires
from server_hardening.rules import Action, Direction, Peer, PeerKind, PortRange, Protocol, Role

# TEST-NET-2: an address of "the whole internet" that is in no installation's ranges.
OUTSIDER = "198.51.100.7"


class Pods(enum.StrEnum):
    """Pods as one side of a Kubernetes check."""

    NAMESPACE = "namespace"  # every pod of the server's namespace
    OTHER_NAMESPACE = "other-namespace"  # a pod of another namespace, no labels of ours
    CLUSTER_DNS = "cluster-dns"  # the cluster's DNS pods in kube-system


@dataclass(frozen=True)
class Endpoint:
    """One side of a check: a role's machines, or addresses (``cidrs``) nobody's firewall here
    governs (the internet, the VCS, the admins); on Kubernetes also a component's pods
    (``component``) or a set of pods (``pods``)."""

    label: str
    role: Role | None = None
    cidrs: tuple[str, ...] = ()
    component: Component | None = None
    pods: Pods | None = None

    def address(self) -> str:
        """A representative address for an address endpoint."""
        if not self.cidrs:
            return OUTSIDER
        net = ipaddress.ip_network(self.cidrs[0], strict=False)
        if net.prefixlen == 0:
            return OUTSIDER if net.version == 4 else "2001:db8::7"
        return str(net.network_address + min(1, net.num_addresses - 1))


@dataclass(frozen=True)
class Check:
    row: str
    source: Endpoint
    destination: Endpoint
    protocol: str  # "tcp" | "udp"
    # The port; for a component the guide's Service port (its pods answer on the target port);
    # 0 for pods of the namespace: every port each pod declares.
    port: int
    expect: bool  # True: must be allowed; False: must be blocked
    # Component Service ports the guide opens to this source: a default-deny check on the
    # namespace's pods leaves them out (LB-IN-1/2 admit the internet on the frontend's ports).
    guide_opens: tuple[tuple[Component, int], ...] = ()

    @property
    def port_label(self) -> str:
        return str(self.port) if self.port else "(every declared port)"

    def describe(self) -> str:
        verdict = "allowed" if self.expect else "blocked"
        return (
            f"{self.source.label} -> {self.destination.label} {self.protocol}/{self.port_label} "
            f"must be {verdict}"
        )


class Verdict(enum.StrEnum):
    HOLDS = "holds"
    VIOLATED = "violated"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class CheckResult:
    check: Check
    allowed: bool | None  # None: this target cannot tell (no machine, not its layer)
    machines: tuple[str, ...] = ()
    decided_by: tuple[str, ...] = ()

    @property
    def verdict(self) -> Verdict:
        if self.allowed is None:
            return Verdict.UNKNOWN
        return Verdict.HOLDS if self.allowed == self.check.expect else Verdict.VIOLATED


class Evaluator(Interface):
    """A target's effective state, asked one check at a time."""

    target: str

    def evaluate(self, check: Check) -> CheckResult: ...


class AnswersOnce:
    """An evaluator that answers each check once per examination: ``verify`` and the
    evaluator's own ``findings`` ask the same checks. Subclasses say how (:meth:`_evaluate`)."""

    def __init__(self) -> None:
        self._answers: dict[Check, CheckResult] = {}

    def evaluate(self, check: Check) -> CheckResult:
        answer = self._answers.get(check)
        if answer is None:
            answer = self._answers[check] = self._evaluate(check)
        return answer

    def _evaluate(self, check: Check) -> CheckResult:
        raise NotImplementedError

    def blocked_allows(self, checks: Sequence[Check]) -> list[tuple[Check, CheckResult]]:
        """The checks that must be allowed and came out blocked (with their answers)."""
        answers = [(check, self.evaluate(check)) for check in checks if check.expect]
        return [(check, answer) for check, answer in answers if answer.allowed is False]


@dataclass(frozen=True)
class RowResult:
    row: str
    target: str
    checks: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def verdict(self) -> Verdict:
        verdicts = {c.verdict for c in self.checks}
        if Verdict.VIOLATED in verdicts:
            return Verdict.VIOLATED
        if not verdicts or verdicts == {Verdict.UNKNOWN}:
            return Verdict.UNKNOWN
        return Verdict.HOLDS if Verdict.UNKNOWN not in verdicts else Verdict.UNKNOWN


_GOVERNED = (Role.KUBERNETES_NODES, Role.NOMAD_CLIENTS, Role.EXTERNAL_VMS, Role.NOMAD_SERVERS)


def _met(intent: CompiledIntent) -> dict[Requires, bool]:
    spec = intent.spec
    topo = spec.topology
    return {
        Requires.ADMIN_SSH: spec.access.admin_ssh.enabled,
        Requires.SSH_RERUN: spec.access.ssh_rerun.enabled,
        Requires.EXTERNAL_VMS: topo.external_vms.enabled,
        Requires.DNS: topo.dns is not None,
        Requires.LB_LAYER: not topo.load_balancers.transparent,
        Requires.IN_CLUSTER_NOMAD: topo.nomad_servers is None,
        Requires.EXTERNAL_NOMAD: topo.nomad_servers is not None,
    }


def _addresses(intent: CompiledIntent, kind: PeerKind) -> tuple[str, ...]:
    spec = intent.spec
    topo = spec.topology
    external = tuple(topo.external.cidrs)
    table: dict[PeerKind, tuple[str, ...]] = {
        PeerKind.EXTERNAL: external,
        PeerKind.VCS: tuple(topo.vcs.cidrs) if topo.vcs else external,
        PeerKind.DNS: tuple(topo.dns.cidrs) if topo.dns else (),
        PeerKind.ADMIN_SSH: tuple(spec.access.admin_ssh.sources),
        PeerKind.SSH_RERUN: tuple(spec.access.ssh_rerun.sources) or external,
    }
    return table.get(kind, ())


def _paired(rows: Sequence[GuideRow]) -> set[str]:
    """Rows between two governed roles whose mirror row (other side, same ports) exists: between
    two firewalls a flow needs both sides' rows, and the guide pairs them."""
    allows = [r for r in rows if r.action is Action.ALLOW]
    out = set()
    for row in allows:
        for other in allows:
            if (
                row.peer.role is not None
                and other.subject == row.peer.role
                and other.peer.role == row.subject
                and other.direction is not row.direction
                and (other.ports == row.ports or other.ports is None)
            ):
                out.add(row.id)
    return out


def _role_endpoint(role: Role) -> Endpoint:
    return Endpoint(role.value, role)


def guide_checks(intent: CompiledIntent) -> list[Check]:
    """Every check the profile's rows imply for the roles the clouds govern (instance to
    instance; load balancers are a hop, checked at their ends by the Kubernetes target)."""
    met = _met(intent)
    rows = intent.profile.rows
    paired = _paired(rows)
    checks: list[Check] = []
    for row in rows:
        if row.action is not Action.ALLOW or not all(met[r] for r in row.requires):
            continue
        if row.subject not in _GOVERNED or row.ports is Ports.NODE_PORTS:
            continue
        if Role.EXTERNAL_VMS in (row.subject, row.peer.role) and not met[Requires.EXTERNAL_VMS]:
            continue
        if row.peer.role is not None:
            if row.peer.role not in _GOVERNED or row.id not in paired:
                continue
            other = _role_endpoint(row.peer.role)
        else:
            cidrs = _addresses(intent, row.peer)
            if not cidrs:
                continue
            other = Endpoint(row.peer.value, None, cidrs)
        subject = _role_endpoint(row.subject)
        src, dst = (other, subject) if row.direction is Direction.INGRESS else (subject, other)
        # The SSH-rerun range is the Nomad clients' runtime's (NOMAD-IN-2).
        ports = ssh_rerun_ports(intent.spec) if row.ports is Ports.SSH_RERUN else row.ports
        port = ports.first if isinstance(ports, PortRange) else 443
        for proto in row.protocols:
            name = proto.value if proto.value != "all" else "tcp"
            checks.append(Check(row.id, src, dst, name, port, True))
    checks += _blocks(intent, met)
    return _unique(checks)


def _blocks(intent: CompiledIntent, met: Mapping[Requires, bool]) -> list[Check]:
    """What the guide never allows: isolation between machines of one role, and a sensitive
    port from the whole internet (unless a row opens it to the world on purpose)."""
    world = Endpoint("the internet", None, ("0.0.0.0/0",))
    nomad = _role_endpoint(Role.NOMAD_CLIENTS)
    out = [Check("NOMAD-ISO-1", nomad, nomad, "tcp", port, False) for port in (22, 2376, 4647)]
    roles = [Role.KUBERNETES_NODES, Role.NOMAD_CLIENTS]
    if met[Requires.EXTERNAL_VMS]:
        vms = _role_endpoint(Role.EXTERNAL_VMS)
        out += [Check("VM-ISO-1", vms, vms, "tcp", port, False) for port in (22, 2376)]
        roles.append(Role.EXTERNAL_VMS)
    if met[Requires.EXTERNAL_NOMAD]:
        roles.append(Role.NOMAD_SERVERS)
    world_open = {
        (row.subject, port)
        for row in intent.profile.rows
        for port in SENSITIVE_PORTS
        if row.action is Action.ALLOW
        and row.direction is Direction.INGRESS
        and all(met[r] for r in row.requires)
        and row.ports is not None
        and not isinstance(row.ports, Ports)
        and row.ports.first <= port <= row.ports.last
        and any(
            ipaddress.ip_network(c, strict=False).prefixlen == 0
            for c in _addresses(intent, row.peer)
        )
    }
    for role in roles:
        for port, (row_id, _what) in SENSITIVE_PORTS.items():
            if (role, port) not in world_open:
                out.append(Check(row_id, world, _role_endpoint(role), "tcp", port, False))
    return out


def _unique(checks: Iterable[Check]) -> list[Check]:
    seen: dict[Check, None] = {}
    for check in checks:
        seen.setdefault(check, None)
    return list(seen)


DEFAULT_DENY = "CHOICE-NP-DEFAULT-DENY"
# A port no outbound row lists (SMTP): with restrictEgress it must not leave the namespace.
UNLISTED_EGRESS_PORT = 25


def _peer_endpoint(peer: Peer) -> Endpoint:
    return Endpoint(peer.label(), peer.role, peer.cidrs)


def _reaches(peer: Peer, address: str) -> bool:
    return any(
        ipaddress.ip_address(address) in ipaddress.ip_network(c, strict=False)
        for c in peer.cidrs
        if ipaddress.ip_network(c, strict=False).version == ipaddress.ip_address(address).version
    )


def cluster_checks(intent: CompiledIntent) -> list[Check]:
    """Every check the profile's rows and the documented choices imply inside the server's
    namespace (the ``kubernetes`` target): none when the resource writes no NetworkPolicies."""
    if not intent.spec.kubernetes.network_policies.enabled:
        return []
    namespace = Endpoint("pods of the namespace", pods=Pods.NAMESPACE)
    world = Endpoint("the internet", None, ("0.0.0.0/0",))
    # Another namespace's pod is matched by namespace and pod selectors only: ``ipBlock`` is
    # meant for addresses outside the cluster, and whether a plugin matches pod addresses in it
    # is left to the plugin (the Kubernetes documentation says so).
    others = Endpoint("a pod of another namespace", pods=Pods.OTHER_NAMESPACE)
    checks: list[Check] = []
    world_opens: list[tuple[Component, int]] = []
    for access in intent.cluster:
        pods = Endpoint(f"{access.component.value} pods", component=access.component)
        rows = [
            r
            for r in intent.profile.rows
            if r.component is access.component
            and r.id in access.rows
            and isinstance(r.ports, PortRange)
        ]
        for port in access.service_ports:
            port_rows = [
                r for r in rows if isinstance(r.ports, PortRange) and r.ports.first == port
            ]
            for peer in access.peers:
                row = next((r.id for r in port_rows if r.peer == peer.kind), "CHOICE-NP-SNAT")
                checks.append(Check(row, _peer_endpoint(peer), pods, "tcp", port, True))
            if any(_reaches(p, OUTSIDER) for p in access.peers):
                world_opens.append((access.component, port))
            else:
                row = port_rows[0].id if port_rows else DEFAULT_DENY
                checks.append(Check(row, world, pods, "tcp", port, False))
    opened = tuple(world_opens)
    checks += [
        Check(DEFAULT_DENY, world, namespace, "tcp", 0, False, opened),
        Check(DEFAULT_DENY, others, namespace, "tcp", 0, False, opened),
        Check("CHOICE-NP-NAMESPACE", namespace, namespace, "tcp", 0, True),
    ]
    if intent.spec.kubernetes.network_policies.restrict_egress:
        checks += _egress_checks(intent, namespace, world)
    return _unique(checks)


def _egress_checks(intent: CompiledIntent, pods: Endpoint, world: Endpoint) -> list[Check]:
    """With ``restrictEgress``: the nodes' outbound rows from every pod, cluster DNS, the API
    server, and nothing else (a port no row lists, to the internet)."""
    dns = Endpoint("cluster DNS", pods=Pods.CLUSTER_DNS)
    checks = [Check("CHOICE-NP-DNS", pods, dns, "udp", 53, True)]
    api = intent.spec.kubernetes.api_server
    if api.cidrs:
        server = Endpoint("the API server", None, tuple(api.cidrs))
        checks += [Check("CHOICE-NP-APISERVER", pods, server, "tcp", p, True) for p in api.ports]
    unlisted_open = False
    for rule in intent.node_egress_allows():
        rows = sorted(r for r in rule.rows if not r.startswith("CHOICE-AWS-"))
        port = rule.ports.first if rule.ports is not None else 443
        protocols = ("tcp",) if rule.protocol is Protocol.ALL else (rule.protocol.value,)
        checks += [
            Check(rows[0] if rows else DEFAULT_DENY, pods, _peer_endpoint(rule.peer), p, port, True)
            for p in protocols
        ]
        covers = rule.ports is None or rule.ports.first <= UNLISTED_EGRESS_PORT <= rule.ports.last
        if (
            covers
            and rule.protocol in (Protocol.TCP, Protocol.ALL)
            and _reaches(rule.peer, OUTSIDER)
        ):
            unlisted_open = True
    if not unlisted_open:
        checks.append(Check(DEFAULT_DENY, pods, world, "tcp", UNLISTED_EGRESS_PORT, False))
    return checks


def verify(checks: Sequence[Check], evaluators: Sequence[Evaluator]) -> list[RowResult]:
    """Every check on every target, grouped per row and target, in the profile's order."""
    out: list[RowResult] = []
    for evaluator in evaluators:
        by_row: dict[str, list[CheckResult]] = {}
        for check in checks:
            by_row.setdefault(check.row, []).append(evaluator.evaluate(check))
        out += [RowResult(row, evaluator.target, tuple(results)) for row, results in by_row.items()]
    return out
