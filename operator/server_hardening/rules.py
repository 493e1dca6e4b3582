"""The provider-neutral vocabulary every stage shares. Pure: no I/O here.

A :class:`Rule` says "this role's firewall allows (or denies) traffic in this direction, to or
from this peer, on this protocol and these ports, because of these guide rows". Renderers turn
rules into NetworkPolicies, EC2 IpPermissions and GCP Firewall resources; the truth-table
evaluators in the tests read those back and check the meaning survived.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Role(enum.StrEnum):
    """The compute the guide names, spelled as the spec's topology keys."""

    KUBERNETES_NODES = "kubernetesNodes"
    NOMAD_CLIENTS = "nomadClients"
    EXTERNAL_VMS = "externalVMs"
    LOAD_BALANCERS = "loadBalancers"
    NOMAD_SERVERS = "nomadServers"  # only when they run outside the cluster (4.8+)


class PeerKind(enum.StrEnum):
    """Where traffic comes from or goes to: one of the roles, or a named set of addresses."""

    KUBERNETES_NODES = "kubernetesNodes"
    KUBERNETES_PODS = "kubernetesPods"  # pods with addresses of their own (alias IPs)
    NOMAD_CLIENTS = "nomadClients"
    EXTERNAL_VMS = "externalVMs"
    LOAD_BALANCERS = "loadBalancers"
    NOMAD_SERVERS = "nomadServers"
    EXTERNAL = "external"
    VCS = "vcs"
    DNS = "dns"
    ADMIN_SSH = "adminSSH"
    SSH_RERUN = "sshRerun"
    HEALTH_CHECKS = "healthChecks"
    CIDRS = "cidrs"

    @property
    def role(self) -> Role | None:
        try:
            return Role(self.value)
        except ValueError:
            return None


class Direction(enum.StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


class Action(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class Protocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"
    ALL = "all"


@dataclass(frozen=True, order=True)
class PortRange:
    """An inclusive port range; ``PortRange(22, 22)`` is one port."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not (1 <= self.first <= self.last <= 65535):
            raise ValueError(f"invalid port range {self.first}-{self.last}")

    @classmethod
    def single(cls, port: int) -> PortRange:
        return cls(port, port)

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True, order=True)
class Peer:
    """The other end of a rule.

    ``kind`` says what it is (a role, ``external``, ``vcs``, ...); ``cidrs`` are its addresses,
    normalised and sorted. A role peer keeps its kind so a renderer can use a tighter reference
    than the addresses (an AWS security-group ID, a GCP network tag).
    """

    kind: PeerKind
    cidrs: tuple[str, ...]

    @property
    def role(self) -> Role | None:
        return self.kind.role

    def label(self) -> str:
        return self.kind.value if self.kind is not PeerKind.CIDRS else ",".join(self.cidrs)


@dataclass(frozen=True, order=True)
class Rule:
    """One provider-neutral firewall rule, held by ``subject``'s firewall.

    ``ports`` is None for every port (only with :attr:`Protocol.ALL`). ``rows`` are the guide row
    IDs the rule implements; merging two rules with the same effect unions their rows.
    """

    subject: Role
    direction: Direction
    action: Action
    peer: Peer
    protocol: Protocol
    ports: PortRange | None
    rows: frozenset[str] = field(compare=False)

    def effect_key(self) -> tuple[Role, Direction, Action, Peer, Protocol, PortRange | None]:
        """Everything but the provenance: two rules with the same key do the same thing."""
        return (self.subject, self.direction, self.action, self.peer, self.protocol, self.ports)

    def sort_key(self) -> tuple[str, str, str, str, str, int, int, str]:
        first, last = (self.ports.first, self.ports.last) if self.ports else (0, 65535)
        return (
            self.subject.value,
            self.direction.value,
            self.action.value,
            self.protocol.value,
            self.peer.label(),
            first,
            last,
            ",".join(sorted(self.rows)),
        )


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return {"error": 0, "warning": 1, "info": 2}[self.value]


class FindingCode(enum.StrEnum):
    """Every finding the product produces, on every target: one vocabulary for status, events,
    metrics, alerts and docs (docs/architecture.md lists where each is produced and shown).

    The value is the stable CamelCase identifier alerts and dashboards key on; the default
    severity is :attr:`severity`. A code means the same situation on every target: a world-open
    SSH rule is ``WorldOpenSensitivePort`` on AWS, GCP and in a NetworkPolicy alike.
    """

    # What the plan or the spec says (the compiler and the renderers).
    ADMIN_SSH_ENABLED = "AdminSSHEnabled"
    COMPONENT_ASSUMED = "ComponentAssumed"
    DNS_NOT_CONFIGURED = "DNSNotConfigured"
    EXTERNAL_NARROWED = "ExternalNarrowed"
    WORLD_OPEN_SSH_RERUN = "WorldOpenSSHRerun"
    PUBLIC_NOMAD_PORT = "PublicNomadPort"
    ISOLATION_BY_OMISSION = "IsolationByOmission"
    NO_SECURITY_GROUP = "NoSecurityGroup"
    GCP_ROLE_UNTAGGED = "GcpRoleUntagged"
    GCP_EGRESS_UNRESTRICTED = "GcpEgressUnrestricted"
    GCP_LOAD_BALANCER_RULE_SKIPPED = "GcpLoadBalancerRuleSkipped"
    QUOTA_EXCEEDED = "QuotaExceeded"
    # A cloud refused one call for lack of permission (the others of the pass went on).
    PERMISSION_REFUSED = "PermissionRefused"
    INVALID_SPEC = "InvalidSpec"
    SERVER_VERSION_UNPINNED = "ServerVersionUnpinned"
    SERVER_VERSION_NEWER_THAN_CATALOGUE = "ServerVersionNewerThanCatalogue"
    LOAD_BALANCER_MISMATCH = "LoadBalancerMismatch"
    # What resolving the cluster's Services found.
    SERVICE_NOT_FOUND = "ServiceNotFound"
    SERVICE_PORT_MISSING = "ServicePortMissing"
    SERVICE_WITHOUT_SELECTOR = "ServiceWithoutSelector"
    # Drift of what this resource manages (drift.compute_plan).
    MISSING = "Missing"
    MODIFIED = "Modified"
    UNEXPECTED = "Unexpected"
    # Judgement of what this resource does not manage (the policy layer).
    WORLD_OPEN_SENSITIVE_PORT = "WorldOpenSensitivePort"
    UNMANAGED_WIDENING = "UnmanagedWidening"
    UNMANAGED_RULE_SHADOWED = "UnmanagedRuleShadowed"
    # Ownership (the pipeline and the adapters).
    CONFLICT = "Conflict"
    # A desired rule whose exact access a rule this resource does not own already grants:
    # another controller's (by its documented marks), or an identical unmarked one left so by
    # ``adoption: Never``, or one that appeared while a pass ran. Satisfied: not Missing, not
    # drift, nothing written beside it.
    HELD_BY_OTHER = "HeldByOther"
    # An unmarked rule this resource would adopt or take back, whose marks were stripped again
    # and again (a Terraform apply): left to whatever strips them, its access satisfied.
    MANAGED_ELSEWHERE = "ManagedElsewhere"
    FIREWALL_ADOPTED = "FirewallAdopted"
    ADOPTABLE = "Adoptable"
    INSTALLATION_CLASH = "InstallationClash"
    # Declared exceptions (spec.exceptions).
    DECLARED_EXCEPTION = "DeclaredException"
    EXCEPTION_EXPIRED = "ExceptionExpired"
    # Components whose Service vanished (the last resolved allow is kept).
    COMPONENT_SERVICE_MISSING = "ComponentServiceMissing"
    # Cloud firewall policies evaluated before the VPC rules (GCP).
    FIREWALL_POLICY_OVERRIDES = "FirewallPolicyOverrides"
    # Each machine as it is really exposed (policy.effective) and the guide verified row by row.
    GUIDE_ROW_BLOCKED = "GuideRowBlocked"
    MACHINE_SELECTOR_UNMATCHED = "MachineSelectorUnmatched"
    MACHINES_UNREADABLE = "MachinesUnreadable"

    @property
    def severity(self) -> Severity:
        return _SEVERITY.get(self, Severity.WARNING)


_SEVERITY: dict[FindingCode, Severity] = {
    FindingCode.ADMIN_SSH_ENABLED: Severity.INFO,
    FindingCode.SERVER_VERSION_UNPINNED: Severity.INFO,
    FindingCode.COMPONENT_ASSUMED: Severity.INFO,
    FindingCode.DNS_NOT_CONFIGURED: Severity.INFO,
    FindingCode.EXTERNAL_NARROWED: Severity.INFO,
    FindingCode.ISOLATION_BY_OMISSION: Severity.INFO,
    FindingCode.NO_SECURITY_GROUP: Severity.INFO,
    FindingCode.GCP_ROLE_UNTAGGED: Severity.INFO,
    FindingCode.GCP_EGRESS_UNRESTRICTED: Severity.INFO,
    FindingCode.GCP_LOAD_BALANCER_RULE_SKIPPED: Severity.INFO,
    FindingCode.UNMANAGED_RULE_SHADOWED: Severity.INFO,
    FindingCode.FIREWALL_ADOPTED: Severity.INFO,
    FindingCode.ADOPTABLE: Severity.INFO,
    FindingCode.HELD_BY_OTHER: Severity.INFO,
    FindingCode.DECLARED_EXCEPTION: Severity.INFO,
    FindingCode.INSTALLATION_CLASH: Severity.ERROR,
    FindingCode.INVALID_SPEC: Severity.ERROR,
    FindingCode.WORLD_OPEN_SENSITIVE_PORT: Severity.ERROR,
    FindingCode.CONFLICT: Severity.ERROR,
    FindingCode.QUOTA_EXCEEDED: Severity.ERROR,
    FindingCode.GUIDE_ROW_BLOCKED: Severity.ERROR,
}


@dataclass(frozen=True)
class Finding:
    """Something a person should know: wider than the guide, over a quota, drifted, unmanaged.

    Findings are data, never exceptions. ``code`` is one of :class:`FindingCode` (metrics and
    alerts key on it); ``row`` is the guide row it concerns, when there is one; ``target`` is the
    target it was found on ("kubernetes", "aws", "gcp"), or "" for the spec itself; ``objects``
    names what it is about, by native ID (a NetworkPolicy name, ``sg-...``/``sgr-...``, a
    firewall name), for the OpenReports results.
    """

    severity: Severity
    code: FindingCode
    message: str
    row: str = ""
    target: str = ""
    objects: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        code: FindingCode,
        message: str,
        *,
        row: str = "",
        target: str = "",
        objects: tuple[str, ...] = (),
    ) -> Finding:
        """A finding at its code's default severity."""
        return cls(code.severity, code, message, row=row, target=target, objects=objects)

    def as_dict(self) -> dict[str, str]:
        out = {"severity": self.severity.value, "code": self.code.value, "message": self.message}
        if self.row:
            out["row"] = self.row
        if self.target:
            out["target"] = self.target
        return out


def most_important_first(findings: list[Finding] | tuple[Finding, ...]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.severity.rank, f.target, f.code, f.row, f.message))
