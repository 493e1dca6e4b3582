"""Rules -> EC2 security-group permissions. Pure: no boto3, no I/O here.

:func:`render_security_groups` turns the compiled, provider-neutral rules into the
``IpPermissions`` that ``AuthorizeSecurityGroupIngress``/``Egress`` take, one entry per security
group configured in ``spec.aws.securityGroups``. :func:`atomic_rules` breaks them into the unit
AWS itself manages and counts: one *security-group rule* (one group, one direction, one
protocol and port range, one peer). That unit is what the drift diff compares and what the
adapter authorises, modifies and revokes by ID.

Choices made here (see docs/aws.md):

- Security groups only allow. ``Action.DENY`` rules (NOMAD-ISO-1, VM-ISO-1) are not rendered:
  isolation holds because no rule allows it (the truth table in ``tests/truth/aws_eval.py``
  checks it). One info finding per skipped row says so.
- A role peer whose role has a security group is referenced by ``GroupId`` (tighter than its
  subnets: only instances in that group); otherwise by its CIDRs.
- A rule whose subject role has no security group is skipped, with one info finding per role.
- Every rule's ``Description`` is :func:`server_hardening.ownership.describe` (owner and guide
  rows). The rows live only there: tags carry ownership, not provenance.
- Quota: AWS counts each CIDR and each group reference as one rule, per group and direction,
  separately for IPv4 and IPv6; a group reference counts in both. Over
  ``spec.aws.ruleQuota`` is a finding, never an exception.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Required, TypedDict

from server_hardening.drift import DesiredItem, fingerprint
from server_hardening.model import AwsSpec, ResourceRef, configured_by_role
from server_hardening.ownership import describe, owner_key
from server_hardening.rules import (
    Action,
    Direction,
    Finding,
    FindingCode,
    Protocol,
    Role,
    Rule,
    most_important_first,
)

TARGET = "aws"

# ------------------------------------------------------------------------------------------
# The shapes boto3 takes (kept here so this module needs no SDK import).


class IpRange(TypedDict):
    CidrIp: str
    Description: str


class Ipv6Range(TypedDict):
    CidrIpv6: str
    Description: str


class UserIdGroupPair(TypedDict):
    GroupId: str
    Description: str


class PrefixListId(TypedDict):
    PrefixListId: str
    Description: str


class IpPermission(TypedDict, total=False):
    IpProtocol: Required[str]
    FromPort: int
    ToPort: int
    IpRanges: list[IpRange]
    Ipv6Ranges: list[Ipv6Range]
    UserIdGroupPairs: list[UserIdGroupPair]
    PrefixListIds: list[PrefixListId]


class RenderedGroup(TypedDict):
    groupId: str
    role: str
    ingress: list[IpPermission]
    egress: list[IpPermission]


# ------------------------------------------------------------------------------------------
# Normalisation: one spelling for every way AWS (or a person) writes the same rule.

_PROTOCOL_NAMES = {
    "-1": "-1",
    "all": "-1",
    "tcp": "tcp",
    "6": "tcp",
    "udp": "udp",
    "17": "udp",
    "icmp": "icmp",
    "1": "icmp",
    "icmpv6": "icmpv6",
    "58": "icmpv6",
}


def normalise_protocol(value: str | int) -> str:
    """``"6"``/``"TCP"`` -> ``"tcp"``, ``"all"``/``-1`` -> ``"-1"``; other numbers stay numbers."""
    text = str(value).strip().lower()
    return _PROTOCOL_NAMES.get(text, text)


def normalise_ports(protocol: str, from_port: int | None, to_port: int | None) -> str:
    """The port part of a key: ``all`` for protocol -1 (ports mean nothing there), ``22``,
    ``30000-32767``; TCP/UDP ``-1``/missing/0-65535 all mean every port."""
    if protocol == "-1":
        return "all"
    if protocol in ("tcp", "udp"):
        first = 0 if from_port is None or from_port < 0 else from_port
        last = 65535 if to_port is None or to_port < 0 else to_port
        if first <= 1 and last == 65535:
            return "all"
        return str(first) if first == last else f"{first}-{last}"
    # ICMP and others: type/code, -1 meaning "any".
    return f"{-1 if from_port is None else from_port}:{-1 if to_port is None else to_port}"


def normalise_cidr(value: str) -> str:
    """Host bits cleared, IPv6 compressed and lower-case (AWS canonicalises the same way)."""
    return str(ipaddress.ip_network(value.strip(), strict=False))


# ------------------------------------------------------------------------------------------
# One AWS security-group rule.


@dataclass(frozen=True, order=True)
class AtomicRule:
    """One security-group rule as AWS counts it: one group, direction, protocol/ports, peer.

    ``peer_type`` is ``cidr4``, ``cidr6``, ``group`` or ``prefix-list``; ``protocol`` is
    normalised (``tcp``, ``udp``, ``-1``, ...); ports are None for protocol ``-1``.
    """

    group_id: str
    direction: Direction
    protocol: str
    from_port: int | None
    to_port: int | None
    peer_type: str
    peer: str
    description: str = ""
    rows: tuple[str, ...] = ()

    def key(self) -> str:
        """Identity inside AWS (what ``InvalidPermission.Duplicate`` compares): no description."""
        proto = "all" if self.protocol == "-1" else self.protocol
        ports = normalise_ports(self.protocol, self.from_port, self.to_port)
        way = "from" if self.direction is Direction.INGRESS else "to"
        return f"{self.group_id} {self.direction.value} {proto}:{ports} {way} {self.peer}"

    @property
    def family(self) -> tuple[int, ...]:
        """Which quota lanes the rule uses: 4, 6, or both for group and prefix-list references."""
        if self.peer_type == "cidr4":
            return (4,)
        if self.peer_type == "cidr6":
            return (6,)
        return (4, 6)

    def permission(self) -> IpPermission:
        """This rule alone, as boto3 takes it (for authorize)."""
        perm: IpPermission = {"IpProtocol": self.protocol}
        if self.protocol != "-1":
            if self.from_port is not None:
                perm["FromPort"] = self.from_port
            if self.to_port is not None:
                perm["ToPort"] = self.to_port
        _add_peer(perm, self.peer_type, self.peer, self.description)
        return perm

    def modify_request(self) -> dict[str, Any]:
        """The ``SecurityGroupRule`` of a ``ModifySecurityGroupRules`` entry for this rule."""
        out: dict[str, Any] = {
            "IpProtocol": self.protocol,
            "FromPort": -1 if self.from_port is None else self.from_port,
            "ToPort": -1 if self.to_port is None else self.to_port,
            "Description": self.description,
        }
        field = {
            "cidr4": "CidrIpv4",
            "cidr6": "CidrIpv6",
            "group": "ReferencedGroupId",
            "prefix-list": "PrefixListId",
        }[self.peer_type]
        out[field] = self.peer
        return out


def _add_peer(perm: IpPermission, peer_type: str, peer: str, description: str) -> None:
    if peer_type == "cidr4":
        perm.setdefault("IpRanges", []).append({"CidrIp": peer, "Description": description})
    elif peer_type == "cidr6":
        perm.setdefault("Ipv6Ranges", []).append({"CidrIpv6": peer, "Description": description})
    elif peer_type == "group":
        perm.setdefault("UserIdGroupPairs", []).append(
            {"GroupId": peer, "Description": description}
        )
    else:
        perm.setdefault("PrefixListIds", []).append(
            {"PrefixListId": peer, "Description": description}
        )


def rule_fingerprint(description: str, owner: str) -> str:
    """What must match for an owned rule to be up to date (the key covers the rest)."""
    return fingerprint({"description": description, "owner": owner})


def permissions(atoms: Iterable[AtomicRule]) -> list[IpPermission]:
    """Merge atomic rules with the same protocol and ports into one ``IpPermission`` each."""
    lanes: dict[tuple[str, int | None, int | None], list[AtomicRule]] = defaultdict(list)
    for atom in sorted(atoms):
        lanes[(atom.protocol, atom.from_port, atom.to_port)].append(atom)
    out: list[IpPermission] = []
    for (protocol, first, last), members in sorted(lanes.items(), key=lambda kv: _lane_key(kv[0])):
        perm: IpPermission = {"IpProtocol": protocol}
        if protocol != "-1":
            if first is not None:
                perm["FromPort"] = first
            if last is not None:
                perm["ToPort"] = last
        for atom in members:
            _add_peer(perm, atom.peer_type, atom.peer, atom.description)
        out.append(perm)
    return out


def _lane_key(lane: tuple[str, int | None, int | None]) -> tuple[str, int, int]:
    protocol, first, last = lane
    return (protocol, -1 if first is None else first, -1 if last is None else last)


# ------------------------------------------------------------------------------------------
# Rendering


def groups_by_role(aws: AwsSpec) -> dict[Role, str]:
    """The configured security group of each role (roles without one are absent)."""
    return configured_by_role(aws.security_groups)


@dataclass(frozen=True)
class QuotaUse:
    """Rules one group needs in one direction, per address family, against the quota."""

    group_id: str
    direction: Direction
    ipv4: int
    ipv6: int
    quota: int

    @property
    def exceeded(self) -> bool:
        return self.ipv4 > self.quota or self.ipv6 > self.quota


@dataclass(frozen=True)
class RenderedSecurityGroups:
    """The desired state of every managed security group, plus what rendering taught.

    ``atoms`` is the source of truth (one per AWS rule); ``groups`` is the same thing merged
    into boto3's ``IpPermissions`` per group and direction. ``roles`` maps each managed group to
    the roles it serves (one group may serve two roles).
    """

    atoms: tuple[AtomicRule, ...]
    group_roles: tuple[tuple[str, tuple[Role, ...]], ...]
    owner: str
    findings: tuple[Finding, ...] = ()
    quota: tuple[QuotaUse, ...] = ()

    @property
    def group_ids(self) -> tuple[str, ...]:
        return tuple(g for g, _ in self.group_roles)

    def role_of(self, group_id: str) -> str:
        for group, roles in self.group_roles:
            if group == group_id:
                return ",".join(r.value for r in roles)
        return ""

    @property
    def groups(self) -> list[RenderedGroup]:
        by_group: dict[str, dict[Direction, list[AtomicRule]]] = {
            g: {Direction.INGRESS: [], Direction.EGRESS: []} for g in self.group_ids
        }
        for atom in self.atoms:
            by_group[atom.group_id][atom.direction].append(atom)
        return [
            {
                "groupId": group,
                "role": self.role_of(group),
                "ingress": permissions(lanes[Direction.INGRESS]),
                "egress": permissions(lanes[Direction.EGRESS]),
            }
            for group, lanes in by_group.items()
        ]

    def over_quota(self) -> tuple[QuotaUse, ...]:
        return tuple(q for q in self.quota if q.exceeded)


def _protocol(rule: Rule) -> tuple[str, int | None, int | None]:
    if rule.protocol is Protocol.ALL:
        return "-1", None, None
    first, last = (rule.ports.first, rule.ports.last) if rule.ports else (0, 65535)
    return rule.protocol.value, first, last


def _peers(rule: Rule, groups: Mapping[Role, str]) -> list[tuple[str, str]]:
    role = rule.peer.role
    if role is not None and role in groups:
        return [("group", groups[role])]
    out: list[tuple[str, str]] = []
    for cidr in rule.peer.cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        out.append(("cidr4" if net.version == 4 else "cidr6", str(net)))
    return out


def render_security_groups(
    rules: Sequence[Rule], aws: AwsSpec, owner: ResourceRef
) -> RenderedSecurityGroups:
    """The desired rules of every configured security group, with findings (never raises for
    a quota: an over-quota group is a finding, and the adapter refuses to half-write it)."""
    groups = groups_by_role(aws)
    group_roles: dict[str, list[Role]] = defaultdict(list)
    for role, group in groups.items():
        group_roles[group].append(role)

    findings: list[Finding] = []
    atoms_rows: dict[AtomicRule, set[str]] = defaultdict(set)
    skipped_roles: dict[Role, set[str]] = defaultdict(set)
    skipped_denies: dict[str, set[str]] = defaultdict(set)
    for rule in sorted(rules, key=Rule.sort_key):
        if rule.action is Action.DENY:
            for row in rule.rows:
                skipped_denies[row].add(f"{rule.subject.value} {rule.direction.value}")
            continue
        subject_group = groups.get(rule.subject)
        if subject_group is None:
            skipped_roles[rule.subject].update(rule.rows)
            continue
        protocol, first, last = _protocol(rule)
        for peer_type, peer in _peers(rule, groups):
            atom = AtomicRule(subject_group, rule.direction, protocol, first, last, peer_type, peer)
            atoms_rows[atom].update(rule.rows)

    owner_text = owner_key(owner)
    atoms = tuple(
        sorted(
            AtomicRule(
                a.group_id,
                a.direction,
                a.protocol,
                a.from_port,
                a.to_port,
                a.peer_type,
                a.peer,
                description=describe(sorted(rows), owner),
                rows=tuple(sorted(rows)),
            )
            for a, rows in atoms_rows.items()
        )
    )

    for role, rows in sorted(skipped_roles.items()):
        findings.append(
            Finding.of(
                FindingCode.NO_SECURITY_GROUP,
                f"spec.aws.securityGroups.{role.value} is not set: rows "
                f"{', '.join(sorted(rows))} are not written to any security group",
                row=min(rows),
                target=TARGET,
            )
        )
    for row, where in sorted(skipped_denies.items()):
        findings.append(
            Finding.of(
                FindingCode.ISOLATION_BY_OMISSION,
                f"{row}: security groups only allow, so this block is not written as a rule; "
                "it holds because no managed rule allows it (" + ", ".join(sorted(where)) + ")",
                row=row,
                target=TARGET,
            )
        )

    quota: list[QuotaUse] = []
    for group, served in group_roles.items():
        for direction in (Direction.INGRESS, Direction.EGRESS):
            lane = [a for a in atoms if a.group_id == group and a.direction is direction]
            limit = (
                aws.rule_quota.inbound
                if direction is Direction.INGRESS
                else aws.rule_quota.outbound
            )
            use = QuotaUse(
                group,
                direction,
                ipv4=sum(1 for a in lane if 4 in a.family),
                ipv6=sum(1 for a in lane if 6 in a.family),
                quota=limit,
            )
            quota.append(use)
            if use.exceeded:
                findings.append(quota_finding(use, role=",".join(r.value for r in served)))

    return RenderedSecurityGroups(
        atoms=atoms,
        group_roles=tuple((g, tuple(r)) for g, r in group_roles.items()),
        owner=owner_text,
        findings=tuple(most_important_first(findings)),
        quota=tuple(quota),
    )


def quota_finding(use: QuotaUse, *, role: str, existing: str = "") -> Finding:
    """``QuotaExceeded`` with the numbers (shared by the renderer and the adapter)."""
    field = "inbound" if use.direction is Direction.INGRESS else "outbound"
    counts = []
    if use.ipv4 > use.quota:
        counts.append(f"{use.ipv4} IPv4 rules")
    if use.ipv6 > use.quota:
        counts.append(f"{use.ipv6} IPv6 rules")
    return Finding.of(
        FindingCode.QUOTA_EXCEEDED,
        f"{use.group_id} ({role}) {use.direction.value} needs {' and '.join(counts)}"
        f"{existing}; the quota is {use.quota} per address family "
        f"(spec.aws.ruleQuota.{field}): nothing is written to this group until it fits",
        target=TARGET,
    )


def atomic_rules(rendered: RenderedSecurityGroups) -> list[DesiredItem[AtomicRule]]:
    """One :class:`DesiredItem` per AWS rule: normalised key, fingerprint over the description
    and the owner; the payload is the rule itself."""
    return [
        DesiredItem(
            key=atom.key(),
            fingerprint=rule_fingerprint(atom.description, rendered.owner),
            payload=atom,
            rows=atom.rows,
        )
        for atom in rendered.atoms
    ]


def parse_rule(rule: Mapping[str, Any]) -> AtomicRule:
    """A ``SecurityGroupRule`` from DescribeSecurityGroupRules as a normalised AtomicRule (the
    form every comparison and judgement uses; pure, so it is tested without boto3)."""
    protocol = normalise_protocol(rule.get("IpProtocol", "-1"))
    first = rule.get("FromPort")
    last = rule.get("ToPort")
    if protocol == "-1":
        first = last = None
    if rule.get("CidrIpv4"):
        peer_type, peer = "cidr4", normalise_cidr(str(rule["CidrIpv4"]))
    elif rule.get("CidrIpv6"):
        peer_type, peer = "cidr6", normalise_cidr(str(rule["CidrIpv6"]))
    elif rule.get("ReferencedGroupInfo"):
        peer_type, peer = "group", str(rule["ReferencedGroupInfo"].get("GroupId", ""))
    else:
        peer_type, peer = "prefix-list", str(rule.get("PrefixListId", ""))
    return AtomicRule(
        group_id=str(rule.get("GroupId", "")),
        direction=Direction.EGRESS if rule.get("IsEgress") else Direction.INGRESS,
        protocol=protocol,
        from_port=None if first is None else int(first),
        to_port=None if last is None else int(last),
        peer_type=peer_type,
        peer=peer,
        description=str(rule.get("Description") or ""),
    )
