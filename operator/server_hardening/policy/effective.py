"""Each machine as it is really exposed. Pure: no I/O here.

The rules a resource manages are one layer of what protects a machine. On AWS a packet to an
instance meets the union of **every** security group on its network interface (groups only
allow, so any one of them opening a port opens it), and, when it crosses a subnet boundary, the
network ACLs of both subnets: stateless, evaluated in rule-number order, first match wins, and
both directions (the reply crosses them too). On GCP every VPC rule that targets the instance by
any means applies, in priority order, under the firewall policies evaluated before them.

This module answers two questions on the machines the adapters read (``machines``):

- per check of the guide (``verification.Check``): allowed or blocked, on which machines, and
  decided by which layer (a group's rule, an ACL entry, a firewall): :class:`AwsEffective` and
  :class:`GcpEffective` are ``verification.Evaluator``s;
- per machine, what a security engineer must hear (:meth:`findings`): a sensitive port open to
  the whole internet through any layer (``WorldOpenSensitivePort``, the same question and the
  same code as :mod:`.exposure` asks of one rule), a layer the resource does not own that opens
  the machine beyond the guide (``UnmanagedWidening``), a layer that blocks what a guide row
  needs (``GuideRowBlocked``). Layers the resource does not own are never written: each
  finding says what to change, and where.

Machines whose layers are the same (same groups, same subnet; same tags and service accounts)
behave the same: they are evaluated once, as one signature, and named together, one address
standing for them all. A rule whose peer range holds some of them and not others (a /32 naming
one machine) splits them: machines are together only when every peer range of every rule
treats their addresses alike.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

from server_hardening.guide import SENSITIVE_PORTS
from server_hardening.machines import (
    AwsInterface,
    AwsMachines,
    GcpInstance,
    GcpMachines,
    NaclEntry,
    NetworkAcl,
)
from server_hardening.policy.exposure import world_families
from server_hardening.policy.owners import gcp_firewall_controller
from server_hardening.renderers.aws import AtomicRule
from server_hardening.rules import Direction, Finding, FindingCode, Role
from server_hardening.verification import (
    OUTSIDER,
    AnswersOnce,
    Check,
    CheckResult,
    Endpoint,
    Verdict,
)

# A reply leaves from an ephemeral port: Linux's default range starts at 32768 (and AWS's NAT
# and load balancers use 1024-65535). A NACL that lets no reply through blocks the flow too.
EPHEMERAL_PORT = 32768
NAMED = 5  # machines named in one finding; the rest are counted


@functools.lru_cache(maxsize=65536)
def _contains(cidr: str, ip: str) -> bool:
    """Cached: the same few addresses meet the same rules at every pair of machines."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return net.version == address.version and address in net


@dataclass(frozen=True)
class _Net:
    """A rule's peer range as integers, for telling many addresses apart at once."""

    text: str
    version: int
    first: int
    last: int


def _nets(cidrs: Iterable[str]) -> tuple[_Net, ...]:
    """The distinct ranges, the whole internet left out (it holds every address alike)."""
    out: dict[str, _Net] = {}
    for text in cidrs:
        if text in out:
            continue
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if net.prefixlen:
            last = int(net.broadcast_address)
            out[text] = _Net(text, net.version, int(net.network_address), last)
    return tuple(out.values())


def _held_by(addresses: Sequence[str], nets: Sequence[_Net]) -> list[tuple[str, ...]]:
    """For each address, the ranges among ``nets`` that hold it, counting only the ranges that
    hold some of ``addresses`` and not all: two addresses with the same answer meet every rule
    alike. Only ranges that cross the span of the addresses are tested one by one (a VPC's
    thousands of /32s elsewhere cost one comparison each)."""
    points: list[tuple[int, int]] = []
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text)
            points.append((ip.version, int(ip)))
        except ValueError:
            points.append((0, -1))
    if len(points) < 2:
        return [() for _ in points]
    spans: dict[int, tuple[int, int]] = {}
    for version, value in points:
        low, high = spans.get(version, (value, value))
        spans[version] = (min(low, value), max(high, value))
    deciding = []
    for net in nets:
        span = spans.get(net.version)
        if span is None or net.last < span[0] or net.first > span[1]:
            continue  # holds none of them
        if net.first <= span[0] and span[1] <= net.last:
            continue  # holds all of them
        deciding.append(net)
    return [
        tuple(n.text for n in deciding if n.version == version and n.first <= value <= n.last)
        for version, value in points
    ]


def _is_world(endpoint: Endpoint) -> bool:
    return any(ipaddress.ip_network(c, strict=False).prefixlen == 0 for c in endpoint.cidrs)


def _names(machines: Sequence[str]) -> str:
    shown = ", ".join(machines[:NAMED])
    more = len(machines) - NAMED
    return f"{shown} and {more} more" if more > 0 else shown


def _gathered(
    check: Check, outcomes: Iterable[tuple[tuple[str, ...], tuple[bool, list[str]]]]
) -> CheckResult:
    """One verdict from every pair's: all must allow a must-allow check, none a must-block one;
    the machines named are those that decide it, with what decided it."""
    failing: dict[str, None] = {}
    passing: dict[str, None] = {}
    why: dict[str, None] = {}
    for machines, (allowed, decided) in outcomes:
        (passing if allowed else failing).update(dict.fromkeys(machines))
        if allowed != check.expect:
            why.update(dict.fromkeys(decided))
    if check.expect:
        verdict, named = not failing, failing or passing
    else:
        verdict, named = bool(passing), passing or failing
    return CheckResult(check, verdict, tuple(named), tuple(why or ["as expected on every machine"]))


class _Signature(Protocol):
    """Machines whose layers are the same: one address stands for them all."""

    @property
    def address(self) -> str: ...
    @property
    def peer_address(self) -> str: ...
    @property
    def machines(self) -> tuple[str, ...]: ...


SigT = TypeVar("SigT", bound=_Signature)


class _Evaluator(AnswersOnce, Generic[SigT]):
    """What both clouds' evaluators share: checks asked once, machines found per role, and the
    shape of an answer (every sender to every receiver, or a role's machines to an address).
    Each cloud says how one pair is decided (:meth:`_pair`, :meth:`_outbound`) and which
    machines answer a check together (:meth:`_classes`)."""

    target = ""
    noun = "machine"

    def __init__(self) -> None:
        super().__init__()
        self.signatures: dict[Role, list[SigT]] = {}

    def _pair(
        self, src: SigT | Endpoint, dst: SigT, check: Check, same: bool
    ) -> tuple[bool, list[str]]:
        raise NotImplementedError

    def _outbound(self, src: SigT, dst: Endpoint, check: Check) -> tuple[bool, list[str]]:
        raise NotImplementedError

    def _classes(
        self, signatures: Sequence[SigT], direction: Direction, check: Check
    ) -> list[list[SigT]]:
        """The signatures that answer ``check`` together, the first standing for them all: here,
        each on its own."""
        return [[sig] for sig in signatures]

    def _evaluate(self, check: Check) -> CheckResult:
        source_role, dst_role = check.source.role, check.destination.role
        if dst_role is None:
            senders = self.signatures.get(source_role, []) if source_role is not None else []
            if not senders:
                return CheckResult(check, None, decided_by=("no machine on either side",))
            return _gathered(
                check,
                (
                    (_machines(members), self._outbound(members[0], check.destination, check))
                    for members in self._classes(senders, Direction.EGRESS, check)
                ),
            )
        targets = self.signatures.get(dst_role, [])
        if not targets:
            return CheckResult(check, None, decided_by=(f"no {self.noun} found for {dst_role}",))
        sources: list[list[SigT]] | None = None
        if source_role is not None:
            found = self.signatures.get(source_role, [])
            if not found:
                return CheckResult(
                    check, None, decided_by=(f"no {self.noun} found for {source_role}",)
                )
            sources = self._classes(found, Direction.EGRESS, check)
        if sources is None:
            return _gathered(
                check,
                (
                    (_machines(members), self._pair(check.source, members[0], check, False))
                    for members in self._classes(targets, Direction.INGRESS, check)
                ),
            )
        return _gathered(
            check,
            (
                (machines, self._pair(senders[0], members[0], check, senders[0] == members[0]))
                for members in self._classes(targets, Direction.INGRESS, check)
                for senders in sources
                if (machines := _machines(members, senders))
            ),
        )


def _machines(members: Sequence[_Signature], senders: Sequence[_Signature] = ()) -> tuple[str, ...]:
    """The machines of a class of receivers that ``senders`` (a class) send to: a lone machine
    is no peer of itself, so one whose signature is the only sender is left out."""
    return tuple(
        m
        for sig in members
        if len(sig.machines) > 1 or list(senders) != [sig]
        for m in sig.machines
    )


# ------------------------------------------------------------------------------------------------
# AWS


def _protocol_matches(rule_protocol: str, protocol: str) -> bool:
    names = {"6": "tcp", "17": "udp"}
    return rule_protocol in ("-1", "all") or names.get(rule_protocol, rule_protocol) == protocol


def _rule_port_matches(rule: AtomicRule, protocol: str, port: int) -> bool:
    if not _protocol_matches(rule.protocol, protocol):
        return False
    if rule.protocol == "-1" or rule.from_port is None or rule.to_port is None:
        return True
    first = 0 if rule.from_port < 0 else rule.from_port
    last = 65535 if rule.to_port < 0 else rule.to_port
    return first <= port <= last


def describe_rule(rule: AtomicRule, group_name: str = "") -> str:
    name = f" ({group_name})" if group_name else ""
    text = f": {rule.description!r}" if rule.description else ""
    return f"{rule.group_id}{name} {rule.key().split(' ', 1)[1]}{text}"


@dataclass(frozen=True)
class _AwsSignature:
    """Interfaces that meet exactly the same layers: same groups, same subnet."""

    role: Role
    groups: tuple[str, ...]
    subnet: str
    interfaces: tuple[AwsInterface, ...]
    held_by: tuple[str, ...] = ()  # the peer ranges that hold its addresses (see _held_by)

    @property
    def address(self) -> str:
        return self.interfaces[0].private_ips[0]

    @property
    def peer_address(self) -> str:
        """Another machine of the signature, for checks between machines of one role."""
        return (self.interfaces[1] if len(self.interfaces) > 1 else self.interfaces[0]).private_ips[
            0
        ]

    @property
    def machines(self) -> tuple[str, ...]:
        return tuple(i.instance_id or i.interface_id for i in self.interfaces)


def _nacl_decision(
    acl: NetworkAcl | None, *, egress: bool, protocol: str, port: int, ip: str
) -> tuple[bool, str]:
    """First matching entry in rule-number order; none: denied (the ``*`` entry)."""
    if acl is None:
        return True, ""
    entries: Iterable[NaclEntry] = sorted(
        (e for e in acl.entries if e.egress == egress), key=lambda e: e.rule_number
    )
    for entry in entries:
        if not _protocol_matches(entry.protocol, protocol):
            continue
        ported = entry.protocol not in ("-1", "all") and entry.from_port is not None
        if ported and not (entry.from_port or 0) <= port <= (entry.to_port or entry.from_port or 0):
            continue
        if not _contains(entry.cidr, ip):
            continue
        way = "outbound" if egress else "inbound"
        number = "*" if entry.rule_number >= 32767 else str(entry.rule_number)
        verb = "allow" if entry.allow else "deny"
        return (
            entry.allow,
            f"{acl.acl_id} {way} entry {number} ({verb} {entry.cidr})",
        )
    way = "outbound" if egress else "inbound"
    return False, f"{acl.acl_id} {way}: no entry matches (denied)"


class AwsEffective(_Evaluator[_AwsSignature]):
    """The effective access of every machine the AWS adapter read (see the module doc)."""

    target = "aws"

    def __init__(
        self,
        machines: AwsMachines,
        *,
        managed_groups: Iterable[str],
        covered: Callable[[AtomicRule], bool] = lambda rule: False,
    ) -> None:
        """``covered``: does the guide, as rendered for the role's own group, allow everything
        this rule allows (``policy.aws.covered_by_the_guide``)?"""
        super().__init__()
        self.machines = machines
        self.managed_groups = frozenset(managed_groups)
        self.covered = covered
        # Groups some rule names as its peer: membership in them changes an answer.
        self._referenced = frozenset(
            rule.peer
            for rules in machines.group_rules.values()
            for rule in rules
            if rule.peer_type == "group"
        )
        self._reach_cache: dict[
            tuple[tuple[str, ...], Direction, str, int], tuple[AtomicRule, ...]
        ] = {}
        held = self._held_by_subnet()
        for role_machines in machines.roles:
            grouped: dict[tuple[tuple[str, ...], str, tuple[str, ...]], list[AwsInterface]] = {}
            for interface in role_machines.interfaces:
                key = (
                    tuple(sorted(interface.group_ids)),
                    interface.subnet_id,
                    held[interface.interface_id],
                )
                grouped.setdefault(key, []).append(interface)
            self.signatures[role_machines.role] = [
                _AwsSignature(role_machines.role, groups, subnet, tuple(members), ranges)
                for (groups, subnet, ranges), members in sorted(grouped.items())
            ]

    def _held_by_subnet(self) -> dict[str, tuple[str, ...]]:
        """Per interface, the peer ranges (of every group rule and ACL entry) that hold its
        address, among those that tell the interfaces of its subnet apart: the same answer
        for the whole subnet's interfaces, so signatures of one subnet compare (``_classes``)."""
        machines = self.machines
        nets = _nets(
            [
                *(r.peer for rules in machines.group_rules.values() for r in rules
                  if r.peer_type in ("cidr4", "cidr6")),
                *(e.cidr for acl in machines.subnet_acls.values() for e in acl.entries),
            ]
        )  # fmt: skip
        by_subnet: dict[str, dict[str, AwsInterface]] = {}
        for role_machines in machines.roles:
            for interface in role_machines.interfaces:
                by_subnet.setdefault(interface.subnet_id, {})[interface.interface_id] = interface
        held: dict[str, tuple[str, ...]] = {}
        for interfaces in by_subnet.values():
            found = _held_by([i.private_ips[0] for i in interfaces.values()], nets)
            held.update(zip(interfaces, found, strict=True))
        return held

    # -- one side of a connection ------------------------------------------------------------------

    def _allowing(
        self,
        groups: Sequence[str],
        direction: Direction,
        protocol: str,
        port: int,
        peer_ip: str,
        peer_groups: Sequence[str],
    ) -> list[str]:
        out = []
        for rule in self._reaching(tuple(groups), direction, protocol, port):
            if (rule.peer_type in ("cidr4", "cidr6") and _contains(rule.peer, peer_ip)) or (
                rule.peer_type == "group" and rule.peer in peer_groups
            ):
                out.append(describe_rule(rule, self.machines.group_names.get(rule.group_id, "")))
        return out

    def _reaching(
        self, groups: tuple[str, ...], direction: Direction, protocol: str, port: int
    ) -> tuple[AtomicRule, ...]:
        """The rules of ``groups`` in ``direction`` that reach the port: asked once per
        signature and check, not once per pair of machines (500 instances in 100 signatures
        made 10,000 pairs a check)."""
        key = (groups, direction, protocol, port)
        found = self._reach_cache.get(key)
        if found is None:
            found = tuple(
                rule
                for group in groups
                for rule in self.machines.group_rules.get(group, ())
                if rule.direction is direction and _rule_port_matches(rule, protocol, port)
            )
            self._reach_cache[key] = found
        return found

    def _world_allowing(
        self, groups: Sequence[str], protocol: str, port: int
    ) -> tuple[tuple[int, ...], list[AtomicRule]]:
        """The IP families whose whole internet the union of the groups' ingress rules admits
        on the port, and the rules that make it up."""
        rules = [
            rule
            for group in groups
            for rule in self.machines.group_rules.get(group, ())
            if rule.direction is Direction.INGRESS
            and rule.peer_type in ("cidr4", "cidr6")
            and _rule_port_matches(rule, protocol, port)
        ]
        return world_families(r.peer for r in rules), rules

    def _pair(
        self, src: _AwsSignature | Endpoint, dst: _AwsSignature, check: Check, same: bool
    ) -> tuple[bool, list[str]]:
        """(allowed, what decided it) for one source signature (or address) and one target."""
        protocol, port = check.protocol, check.port
        dst_ip = dst.peer_address if same else dst.address
        acls = self.machines.subnet_acls
        if isinstance(src, Endpoint):
            if _is_world(src):
                families, rules = self._world_allowing(dst.groups, protocol, port)
                if not families:
                    return False, ["no rule of the groups admits the whole internet"]
                ok, entry = _nacl_decision(
                    acls.get(dst.subnet), egress=False, protocol=protocol, port=port, ip=OUTSIDER
                )
                names = self.machines.group_names
                said = [describe_rule(r, names.get(r.group_id, "")) for r in rules]
                return ok, ([entry] if entry else []) + said
            src_ip, src_subnet = src.address(), ""
            src_groups: tuple[str, ...] = ()
            egress: list[str] | None = None
        else:
            src_ip, src_groups, src_subnet = src.address, src.groups, src.subnet
            egress = self._allowing(
                src.groups, Direction.EGRESS, protocol, port, dst_ip, dst.groups
            )
            if not egress:
                return False, [f"no egress rule of {', '.join(src.groups)} allows it"]
        ingress = self._allowing(dst.groups, Direction.INGRESS, protocol, port, src_ip, src_groups)
        if not ingress:
            return False, [f"no ingress rule of {', '.join(dst.groups) or 'any group'} allows it"]
        said = list(ingress) + list(egress or [])
        if src_subnet != dst.subnet:
            # Crossing subnets: both ACLs, both ways (NACLs are stateless).
            steps = [
                (acls.get(dst.subnet), False, port, src_ip),
                (acls.get(dst.subnet), True, EPHEMERAL_PORT, src_ip),
            ]
            if src_subnet:
                steps += [
                    (acls.get(src_subnet), True, port, dst_ip),
                    (acls.get(src_subnet), False, EPHEMERAL_PORT, dst_ip),
                ]
            for acl, is_egress, at, ip in steps:
                ok, entry = _nacl_decision(acl, egress=is_egress, protocol=protocol, port=at, ip=ip)
                if not ok:
                    return False, [entry]
        return True, said

    def _outbound(self, src: _AwsSignature, dst: Endpoint, check: Check) -> tuple[bool, list[str]]:
        """A machine to an address outside every role (DNS, the VCS, the internet): its groups'
        egress, then its subnet's ACL out and the reply in."""
        protocol, port, ip = check.protocol, check.port, dst.address()
        egress = self._allowing(src.groups, Direction.EGRESS, protocol, port, ip, ())
        if not egress:
            return False, [f"no egress rule of {', '.join(src.groups)} allows it"]
        acl = self.machines.subnet_acls.get(src.subnet)
        for is_egress, at in ((True, port), (False, EPHEMERAL_PORT)):
            ok, entry = _nacl_decision(acl, egress=is_egress, protocol=protocol, port=at, ip=ip)
            if not ok:
                return False, [entry]
        return True, egress

    def _classes(
        self, signatures: Sequence[_AwsSignature], direction: Direction, check: Check
    ) -> list[list[_AwsSignature]]:
        """Signatures that meet the same rules for this check, in the same subnet and with the
        same groups that other rules name as peers, answer it the same: one representative
        each, named with every member's machines (500 instances in 100 signatures made 10,000
        pairs a check; a group that opens nothing on the port no longer splits them), and with
        the same peer ranges holding their addresses (as within one signature)."""
        classes: dict[Any, list[_AwsSignature]] = {}
        for sig in signatures:
            key = (
                self._reaching(sig.groups, direction, check.protocol, check.port),
                sig.subnet,
                tuple(g for g in sig.groups if g in self._referenced),
                sig.held_by,
            )
            classes.setdefault(key, []).append(sig)
        return list(classes.values())

    def findings(self, checks: Sequence[Check] = ()) -> list[Finding]:
        out: list[Finding] = list(self.machines.findings)
        out += self._world_open()
        out += self._beyond_the_guide()
        out += self._without_the_group()
        out += self._blocked(checks)
        return out

    def _world_open(self) -> list[Finding]:
        out = []
        for role, signatures in self.signatures.items():
            for sig in signatures:
                for port, (row, what) in SENSITIVE_PORTS.items():
                    families, rules = self._world_allowing(sig.groups, "tcp", port)
                    if not families or all(r.group_id in self.managed_groups for r in rules):
                        continue  # the managed groups' own rules are judged by policy.aws
                    ok, _ = _nacl_decision(
                        self.machines.subnet_acls.get(sig.subnet),
                        egress=False, protocol="tcp", port=port, ip=OUTSIDER,
                    )  # fmt: skip
                    if not ok:
                        continue
                    groups = sorted({r.group_id for r in rules})
                    layers = "; ".join(
                        f"{g} ({self.machines.group_names.get(g, '?')})" for g in groups
                    )
                    out.append(
                        Finding.of(
                            FindingCode.WORLD_OPEN_SENSITIVE_PORT,
                            f"{role.value} machines {_names(sig.machines)} are open on {port} "
                            f"({what}) to the whole internet through security group(s) {layers}; "
                            "a group this resource does not manage is never changed by it: remove "
                            "the rule or detach the group from these machines",
                            row=row,
                            target=self.target,
                            objects=sig.machines[:NAMED],
                        )
                    )
        return out

    def _configured(self, role: Role) -> str | None:
        for role_machines in self.machines.roles:
            if role_machines.role is role:
                return role_machines.configured_group
        return None

    def _beyond_the_guide(self) -> list[Finding]:
        out = []
        reported: set[tuple[Role, str]] = set()
        for role, signatures in self.signatures.items():
            configured = self._configured(role)
            for sig in signatures:
                for group in sig.groups:
                    if group in self.managed_groups or (role, group) in reported:
                        continue
                    widening = [
                        rule
                        for rule in self.machines.group_rules.get(group, ())
                        if not self._guided(rule, configured)
                    ]
                    if not widening:
                        continue
                    reported.add((role, group))
                    machines = [m for s in signatures if group in s.groups for m in s.machines]
                    name = self.machines.group_names.get(group, "?")
                    shown = "; ".join(describe_rule(r) for r in widening[:4])
                    more = f" and {len(widening) - 4} more" if len(widening) > 4 else ""
                    out.append(
                        Finding.of(
                            FindingCode.UNMANAGED_WIDENING,
                            f"{role.value} machines {_names(machines)} also carry security group "
                            f"{group} ({name}), which this resource does not manage and which "
                            f"allows beyond the guide: {shown}{more}; it is never written or "
                            "detached by the operator: narrow it, or detach it from the role's "
                            "machines",
                            target=self.target,
                            objects=(group, *machines[:NAMED]),
                        )
                    )
        return out

    def _guided(self, rule: AtomicRule, configured: str | None) -> bool:
        if configured is None:
            return True  # nothing rendered for this role here: nothing to compare with
        if (
            rule.direction is Direction.INGRESS
            and rule.peer_type in ("cidr4", "cidr6")
            and any(_rule_port_matches(rule, "tcp", port) for port in SENSITIVE_PORTS)
            and world_families([rule.peer])
        ):
            return True  # reported as WorldOpenSensitivePort already
        return self.covered(replace(rule, group_id=configured))

    def _without_the_group(self) -> list[Finding]:
        out = []
        for role_machines in self.machines.roles:
            group = role_machines.configured_group
            if group is None or not role_machines.selected_instances:
                continue
            lacking = sorted(
                {
                    i.instance_id
                    for i in role_machines.interfaces
                    if i.instance_id in role_machines.selected_instances
                    and group not in i.group_ids
                }
            )
            if lacking:
                out.append(
                    Finding.of(
                        FindingCode.GUIDE_ROW_BLOCKED,
                        f"{role_machines.role.value} machines {_names(lacking)} were selected "
                        f"(spec.aws.machines.{role_machines.role.value}) but do not carry the "
                        f"role's security group {group}: none of the guide's rows for the role "
                        "reach them; attach the group (launch template or instance)",
                        target=self.target,
                        objects=tuple(lacking[:NAMED]),
                    )
                )
        return out

    def _blocked(self, checks: Sequence[Check]) -> list[Finding]:
        out = []
        for check, result in self.blocked_allows(checks):
            acl = [d for d in result.decided_by if " entry " in d or "no entry matches" in d]
            if not acl:
                continue  # no rule allows it: the managed rules' drift says why
            out.append(
                Finding.of(
                    FindingCode.GUIDE_ROW_BLOCKED,
                    f"{check.describe()}, but the network ACL blocks it on "
                    f"{_names(result.machines)}: {'; '.join(acl)}; ACLs are not managed by the "
                    "operator: add an allow entry before that one",
                    row=check.row,
                    target=self.target,
                    objects=result.machines[:NAMED],
                )
            )
        return out


# ------------------------------------------------------------------------------------------------
# GCP


def _gcp_ports_match(entries: Sequence[Any], protocol: str, port: int) -> bool:
    for entry in entries:
        proto = str(entry.get("IPProtocol", entry.get("ipProtocol", ""))).lower()
        if proto not in ("all", protocol, {"tcp": "6", "udp": "17"}.get(protocol, "")):
            continue
        ports = entry.get("ports") or []
        if not ports:
            return True
        for text in ports:
            first, _, last = str(text).partition("-")
            if int(first) <= port <= int(last or first):
                return True
    return False


def _any_in(ip: str, ranges: Iterable[str]) -> bool:
    return any(_contains(r, ip) for r in ranges)


@dataclass(frozen=True)
class _GcpSignature:
    """Instances whose rules are the same: same tags, same service accounts."""

    role: Role
    tags: tuple[str, ...]
    accounts: tuple[str, ...]
    instances: tuple[GcpInstance, ...]
    # The rules' ranges (among those that tell the role's addresses apart) holding the
    # instances' addresses: what a rule's ranges see of any of them.
    held: tuple[str, ...] = ()

    @property
    def address(self) -> str:
        return self.instances[0].network_ips[0]

    @property
    def peer_address(self) -> str:
        return (self.instances[1] if len(self.instances) > 1 else self.instances[0]).network_ips[0]

    @property
    def machines(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.instances)


def _targets(rule: Mapping[str, Any], tags: Sequence[str], accounts: Sequence[str]) -> bool:
    """Does the rule apply to an instance: no target (every instance), a target tag it carries
    or a target service account it runs as."""
    by_tag = rule.get("targetTags") or []
    by_account = rule.get("targetServiceAccounts") or []
    if not by_tag and not by_account:
        return True
    return bool(set(by_tag) & set(tags)) or bool(set(by_account) & set(accounts))


def _applies_from(
    rule: Mapping[str, Any], ip: str, tags: Sequence[str], accounts: Sequence[str]
) -> bool:
    """Do an ingress rule's sources hold a sender: by address, tag or service account (none
    at all: every sender)?"""
    ranges = rule.get("sourceRanges") or []
    src_tags = rule.get("sourceTags") or []
    src_accounts = rule.get("sourceServiceAccounts") or []
    if not ranges and not src_tags and not src_accounts:
        return True
    by_peer = bool(set(src_tags) & set(tags)) or bool(set(src_accounts) & set(accounts))
    return by_peer or _any_in(ip, ranges)


def _named_source(rule: Mapping[str, Any], tags: set[str], accounts: set[str]) -> bool:
    """Does an ingress rule name an instance with these tags or accounts among its sources?"""
    return bool(
        tags & set(rule.get("sourceTags") or ())
        or accounts & set(rule.get("sourceServiceAccounts") or ())
    )


def _world_sourced(rule: Mapping[str, Any]) -> bool:
    """An ingress rule whose sources make up the whole internet (none at all: GCP's default)."""
    ranges = rule.get("sourceRanges") or []
    if not ranges and not rule.get("sourceTags") and not rule.get("sourceServiceAccounts"):
        return True
    return bool(world_families(ranges))


def _port_spans(entries: Sequence[Any], protocol: str) -> list[tuple[int, int]]:
    """The port ranges (1-65535 at most) a rule's entries give ``protocol``."""
    out = []
    for entry in entries:
        proto = str(entry.get("IPProtocol", entry.get("ipProtocol", ""))).lower()
        if proto not in ("all", protocol, {"tcp": "6", "udp": "17"}[protocol]):
            continue
        for text in entry.get("ports") or ["1-65535"]:
            first, _, last = str(text).partition("-")
            out.append((max(int(first), 1), int(last or first)))
    return out


def _spans_text(spans: Iterable[tuple[str, int, int]]) -> str:
    """``tcp 1-4646, 4648-65535; udp 53``: adjacent ranges joined."""
    merged: dict[str, list[list[int]]] = {}
    for protocol, first, last in sorted(spans):
        ranges = merged.setdefault(protocol, [])
        if ranges and first <= ranges[-1][1] + 1:
            ranges[-1][1] = max(ranges[-1][1], last)
        else:
            ranges.append([first, last])
    return "; ".join(
        f"{protocol} " + ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
        for protocol, ranges in merged.items()
    )


@dataclass
class _Between:
    """What one rule lets one role's instances reach on another's, beyond the guide."""

    rule: Mapping[str, Any]
    sources: dict[str, None]
    targets: dict[str, None]
    reachable: set[tuple[str, int, int]]
    stopped: set[tuple[str, int, int]]
    stopped_by: dict[str, None]
    sent_by: dict[str, None]  # rules this resource does not write that let the senders out
    added: set[int] = field(default_factory=set)  # answers (shared by pairs) counted in


class GcpEffective(_Evaluator[_GcpSignature]):
    """The effective access of every instance the GCP adapter read: the firewall policies first
    (in their order; ``goto_next`` defers), then every VPC rule that targets the instance, by
    priority (a deny wins a tie), then the implied rules (ingress denied, egress allowed)."""

    target = "gcp"
    noun = "instance"
    asks_once = True  # each side's decision remembered (a reference for tests turns it off)

    def __init__(
        self,
        machines: GcpMachines,
        *,
        managed: Iterable[str],
        guide: Iterable[Mapping[str, Any]] | None = None,
    ) -> None:
        """``managed``: the names of the firewalls this resource writes; ``guide``: the
        firewalls the guide renders for it (what it allows whether or not they exist now;
        without them, rules between the roles are not judged: nothing says what is listed)."""
        super().__init__()
        self.machines = machines
        self.managed = frozenset(managed)
        self.guided = guide is not None
        self.guide = [f for f in guide or () if not f.get("disabled")]
        self.firewalls = [f for f in machines.firewalls if not f.get("disabled")]
        self.foreign_names = frozenset(
            str(f.get("name")) for f in self.firewalls if str(f.get("name")) not in self.managed
        )
        nets = _nets(
            [
                *(r for f in self.firewalls for field in ("sourceRanges", "destinationRanges")
                  for r in f.get(field) or ()),
                *(r for rule in machines.policy_rules for r in rule.ranges),
            ]
        )  # fmt: skip
        for role_machines in machines.roles:
            addressed = [i for i in role_machines.instances if i.network_ips]
            held = _held_by([i.network_ips[0] for i in addressed], nets)
            grouped: dict[Any, list[GcpInstance]] = {}
            for instance, ranges in zip(addressed, held, strict=True):
                key = (
                    tuple(sorted(instance.network_tags)),
                    tuple(sorted(instance.service_accounts)),
                    ranges,
                )
                grouped.setdefault(key, []).append(instance)
            self.signatures[role_machines.role] = [
                _GcpSignature(role_machines.role, tags, accounts, tuple(members), held)
                for (tags, accounts, held), members in sorted(grouped.items())
            ]
        self._sides: dict[Any, tuple[bool, list[str]]] = {}
        self._rank = {
            role: {m: n for n, m in enumerate(m for sig in sigs for m in sig.machines)}
            for role, sigs in self.signatures.items()
        }

    def _evaluate(self, check: Check) -> CheckResult:
        """As for each signature on its own: the machines in the signatures' order."""
        result = super()._evaluate(check)
        rank = self._rank.get(check.destination.role or check.source.role)  # type: ignore[arg-type]
        if rank is None:
            return result
        return replace(result, machines=tuple(sorted(result.machines, key=rank.__getitem__)))

    def _classes(
        self, signatures: Sequence[_GcpSignature], direction: Direction, check: Check
    ) -> list[list[_GcpSignature]]:
        """Signatures that meet the same rules for this check answer it alike: a receiver
        (``INGRESS``) through the ingress rules that target it on the port, its service
        accounts (the policies' targets) and the ranges holding its address (the senders'
        egress and the policies see those); a sender through the egress rules that target it,
        the ingress rules that name its tags or accounts as sources, its accounts and ranges.
        500 instances in 100 signatures a role made 10,000 pairs a check."""
        protocol, port = check.protocol, check.port
        matching = [
            (n, f, str(f.get("direction", "INGRESS")))
            for n, f in enumerate(self.firewalls)
            if _gcp_ports_match(f.get("allowed") or f.get("denied") or [], protocol, port)
        ]
        classes: dict[Any, list[_GcpSignature]] = {}
        for sig in signatures:
            tags, accounts = set(sig.tags), set(sig.accounts)
            if direction is Direction.INGRESS:
                rules = frozenset(
                    n for n, f, way in matching
                    if way == "INGRESS" and _targets(f, sig.tags, sig.accounts)
                )  # fmt: skip
            else:
                rules = frozenset(
                    n for n, f, way in matching
                    if (way == "EGRESS" and _targets(f, sig.tags, sig.accounts))
                    or (way == "INGRESS" and _named_source(f, tags, accounts))
                )  # fmt: skip
            classes.setdefault((rules, sig.accounts, sig.held), []).append(sig)
        return list(classes.values())

    def _policy(
        self,
        direction: str,
        ip: str,
        protocol: str,
        port: int,
        accounts: Sequence[str],
        *,
        after_vpc_rules: bool,
    ) -> tuple[bool, str] | None:
        for rule in self.machines.policy_rules:
            if rule.after_vpc_rules != after_vpc_rules:
                continue
            if rule.disabled or rule.direction != direction:
                continue
            if rule.target_service_accounts and not set(rule.target_service_accounts) & set(
                accounts
            ):
                continue
            if rule.target_secure_tags:
                continue  # secure tags are not read here: such a rule is not judged
            if rule.ranges and not _any_in(ip, rule.ranges):
                continue
            if rule.layer4 and not _gcp_ports_match(
                [{"IPProtocol": p, "ports": list(ports)} for p, ports in rule.layer4],
                protocol,
                port,
            ):
                continue
            said = f"firewall policy {rule.policy} rule {rule.priority} ({rule.action})"
            if rule.action == "allow":
                return True, said
            if rule.action == "deny":
                return False, said
        return None

    def _vpc(
        self,
        direction: str,
        tags: Sequence[str],
        accounts: Sequence[str],
        peer_ip: str,
        peer: _GcpSignature | None,
        protocol: str,
        port: int,
        rules: Sequence[Mapping[str, Any]] | None = None,
    ) -> tuple[bool, list[Mapping[str, Any]]]:
        """The VPC rules' verdict and the rules of the deciding priority (deny wins a tie);
        ``rules``: other rules than the network's (the guide's alone)."""
        peer_tags, peer_accounts = (peer.tags, peer.accounts) if peer is not None else ((), ())
        matching = []
        for rule in self.firewalls if rules is None else rules:
            if str(rule.get("direction", "INGRESS")) != direction or not _targets(
                rule, tags, accounts
            ):
                continue
            entries = rule.get("allowed") or rule.get("denied") or []
            if not _gcp_ports_match(entries, protocol, port):
                continue
            if direction == "INGRESS":
                if not _applies_from(rule, peer_ip, peer_tags, peer_accounts):
                    continue
            elif not _any_in(peer_ip, rule.get("destinationRanges") or ["0.0.0.0/0", "::/0"]):
                continue
            matching.append(rule)
        if not matching:
            return direction == "EGRESS", []
        best = min(int(r.get("priority", 1000)) for r in matching)
        top = [r for r in matching if int(r.get("priority", 1000)) == best]
        denies = [r for r in top if r.get("denied")]
        return (False, denies) if denies else (True, top)

    def _side(
        self,
        direction: str,
        sig: _GcpSignature,
        peer_ip: str,
        peer: _GcpSignature | None,
        protocol: str,
        port: int,
        rules: Sequence[Mapping[str, Any]] | None = None,
    ) -> tuple[bool, list[str]]:
        """``rules``: the VPC rules to consider, when the caller knows which of the network's
        can match (every one that targets ``sig`` and matches ``peer``, any port); ``peer_ip``:
        ``peer``'s address when there is one.

        Asked once per what decides it: ``sig``'s tags and accounts, and the peer's ranges
        (its role's and the ranges holding it) and, for ingress, its tags and accounts."""
        if peer is None:
            seen: Any = peer_ip
        elif direction == "INGRESS":
            seen = (peer.role, peer.held, peer.tags, peer.accounts)
        else:
            seen = (peer.role, peer.held)
        key = (direction, sig.tags, sig.accounts, seen, protocol, port,
               None if rules is None else tuple(map(id, rules)))  # fmt: skip
        answer = self._sides.get(key) if self.asks_once else None
        if answer is not None:
            return answer[0], list(answer[1])
        # Hierarchical policies (and a network policy set BEFORE_CLASSIC_FIREWALL) first; then
        # the VPC rules; a network policy evaluated after them decides what no VPC rule matched;
        # then the implied rules.
        decided = self._policy(
            direction, peer_ip, protocol, port, sig.accounts, after_vpc_rules=False
        )
        if decided is None:
            allowed, deciding = self._vpc(
                direction, sig.tags, sig.accounts, peer_ip, peer, protocol, port, rules
            )
            decided = (
                None
                if deciding
                else self._policy(
                    direction, peer_ip, protocol, port, sig.accounts, after_vpc_rules=True
                )
            )
            if deciding:
                answer = allowed, [str(r.get("name", "?")) for r in deciding]
            elif decided is None:
                implied = "the implied rule" + (
                    " (ingress denied)" if direction == "INGRESS" else ""
                )
                answer = allowed, [implied]
        if answer is None:
            assert decided is not None
            answer = decided[0], [decided[1]]
        self._sides[key] = answer
        return answer[0], list(answer[1])

    def _pair(
        self, src: _GcpSignature | Endpoint, dst: _GcpSignature, check: Check, same: bool
    ) -> tuple[bool, list[str]]:
        protocol, port = check.protocol, check.port
        dst_ip = dst.peer_address if same else dst.address
        if isinstance(src, Endpoint):
            ok, why = self._side("INGRESS", dst, src.address(), None, protocol, port)
            if ok and _is_world(src):
                # "The whole internet" by meaning: the union of the admitting rules' sources.
                ranges = [
                    r
                    for rule in self.firewalls
                    if rule.get("allowed")
                    and str(rule.get("direction", "INGRESS")) == "INGRESS"
                    and _targets(rule, dst.tags, dst.accounts)
                    and _gcp_ports_match(rule.get("allowed") or [], protocol, port)
                    for r in (rule.get("sourceRanges") or ["0.0.0.0/0"])
                ]
                by_policy = any(w.startswith("firewall policy") for w in why)
                if not world_families(ranges) and not by_policy:
                    return False, ["no rule admits the whole internet"]
            return ok, why
        ok, out_why = self._side("EGRESS", src, dst_ip, dst, protocol, port)
        if not ok:
            return False, out_why
        ok, in_why = self._side("INGRESS", dst, src.address, src, protocol, port)
        return ok, in_why + out_why

    def _outbound(self, src: _GcpSignature, dst: Endpoint, check: Check) -> tuple[bool, list[str]]:
        return self._side("EGRESS", src, dst.address(), None, check.protocol, check.port)

    def findings(self, checks: Sequence[Check] = ()) -> list[Finding]:
        between = self._between_roles()
        out = [*self.machines.findings, *(self._between_finding(b) for b in between.items())]
        # The rules reported above, for the pairs of roles they were found between.
        found = {(name, src, dst) for (names, src, dst) in between for name in names}
        for check in checks:
            result = self.evaluate(check)
            if result.verdict is not Verdict.VIOLATED:
                continue
            foreign = [d for d in result.decided_by if d not in self.managed]
            if not foreign:
                continue  # only our own rules decide: the managed rules' drift says why
            pair = (check.source.role, check.destination.role)
            if not check.expect and any((name, *pair) in found for name in foreign):
                continue  # reported above, with every port it opens between the two roles
            if check.expect:
                out.append(
                    Finding.of(
                        FindingCode.GUIDE_ROW_BLOCKED,
                        f"{check.describe()}, but {'; '.join(foreign)} blocks it on "
                        f"{_names(result.machines)}; it is not managed by the operator: change it "
                        "there",
                        row=check.row,
                        target=self.target,
                        objects=result.machines[:NAMED],
                    )
                )
            elif _is_world(check.source) and check.port in SENSITIVE_PORTS:
                out.append(
                    Finding.of(
                        FindingCode.WORLD_OPEN_SENSITIVE_PORT,
                        f"{check.destination.label} instances {_names(result.machines)} are open "
                        f"on {check.port} ({SENSITIVE_PORTS[check.port][1]}) to the whole internet "
                        f"through {'; '.join(foreign)}: a rule this resource does not manage is "
                        "never changed by it: remove it or narrow its sources",
                        row=check.row,
                        target=self.target,
                        objects=result.machines[:NAMED],
                    )
                )
            else:
                out.append(
                    Finding.of(
                        FindingCode.UNMANAGED_WIDENING,
                        f"{check.describe()}, but {'; '.join(foreign)} allows it on "
                        f"{_names(result.machines)}; not managed by the operator: narrow it there",
                        row=check.row,
                        target=self.target,
                        objects=result.machines[:NAMED],
                    )
                )
        return out

    # -- between the roles, on every port ----------------------------------------------------------

    def _between_roles(self) -> dict[tuple[tuple[str, ...], Role, Role], _Between]:
        """Every rule this resource does not write that lets one role's instances reach
        another's (or their own neighbours) on a port no guide row lists, whether or not a
        check of the guide asks about that port: GKE's ``gke-<cluster>-<hash>-vms`` admitting
        10.128.0.0/9 (the Nomad and VM subnets of a default network) to the nodes on every
        port. Judged on the effective state: the ports where that rule decides the receivers'
        ingress (the firewall policies and every VPC rule above it considered), split into
        those the senders' egress lets out now and those it stops. A rule sourced from the
        whole internet is left to the world checks (``WorldOpenSensitivePort``) and the rule
        judges, which say it for every sender; the cluster's nodes among themselves are
        GKE's business.

        Cost: which rules target each signature and which rules' sources hold it are found
        once per signature; a pair of signatures is judged only when some such rule applies
        to it, and pairs that meet the same rules share one evaluation."""
        out: dict[tuple[tuple[str, ...], Role, Role], _Between] = {}
        if not self.guided:
            return out
        inbound = [f for f in self.firewalls if str(f.get("direction", "INGRESS")) == "INGRESS"]
        foreign = frozenset(
            n
            for n, f in enumerate(inbound)
            if f.get("allowed") and str(f.get("name", "")) not in self.managed
            and not _world_sourced(f)
        )  # fmt: skip
        if not foreign:
            return out
        outbound = [f for f in self.firewalls if str(f.get("direction", "INGRESS")) == "EGRESS"]
        guide = [f for f in self.guide if str(f.get("direction", "INGRESS")) == "INGRESS"]
        signatures = [sig for sigs in self.signatures.values() for sig in sigs]

        def targeting(rules: Sequence[Mapping[str, Any]], sig: _GcpSignature) -> frozenset[int]:
            return frozenset(n for n, f in enumerate(rules) if _targets(f, sig.tags, sig.accounts))

        def sourced(rules: Sequence[Mapping[str, Any]], sig: _GcpSignature) -> frozenset[int]:
            return frozenset(
                n for n, f in enumerate(rules)
                if _applies_from(f, sig.address, sig.tags, sig.accounts)
            )  # fmt: skip

        to = {id(sig): (targeting(inbound, sig), targeting(guide, sig)) for sig in signatures}
        by = {id(sig): (sourced(inbound, sig), sourced(guide, sig)) for sig in signatures}
        out_of = {id(sig): targeting(outbound, sig) for sig in signatures}
        bounds = self._port_edges()
        policies = self.machines.policy_rules

        @functools.cache
        def policies_holding(direction: str, ip: str) -> tuple[int, ...]:
            return tuple(
                n for n, rule in enumerate(policies)
                if rule.direction == direction and (not rule.ranges or _any_in(ip, rule.ranges))
            )  # fmt: skip

        judged: dict[Any, list[tuple[str, int, int, tuple[str, ...]]]] = {}
        spans_of: dict[Any, dict[tuple[str, ...], Any]] = {}
        for dst_role, targets in self.signatures.items():
            for src_role, senders in self.signatures.items():
                if src_role is Role.KUBERNETES_NODES and dst_role is Role.KUBERNETES_NODES:
                    continue
                for dst in targets:
                    for src in senders:
                        if src == dst and len(dst.machines) == 1:
                            continue  # a lone instance is no peer of itself
                        rules = to[id(dst)][0] & by[id(src)][0]
                        if not rules & foreign:
                            continue
                        guided = to[id(dst)][1] & by[id(src)][1]
                        # What else could tell two pairs apart: the policy rules whose
                        # ranges hold the sender (their targets are the receiver's accounts).
                        ingress = policies_holding("INGRESS", src.address)
                        key = (rules, guided, dst.accounts, ingress)
                        if key not in judged:
                            judged[key] = self._beyond(
                                src, dst, [inbound[n] for n in sorted(rules)],
                                [guide[n] for n in sorted(guided)],
                                {str(inbound[n].get("name")) for n in rules & foreign}, bounds,
                            )  # fmt: skip
                        dst_ip = dst.peer_address if src == dst else dst.address
                        reach = frozenset(
                            n for n in out_of[id(src)]
                            if _any_in(dst_ip, outbound[n].get("destinationRanges")
                                       or ["0.0.0.0/0", "::/0"])
                        )  # fmt: skip
                        context = (key, reach, src.accounts, policies_holding("EGRESS", dst_ip))
                        if context not in spans_of:
                            spans_of[context] = self._let_out(
                                judged[key], src, dst, dst_ip,
                                [outbound[n] for n in sorted(reach)],
                            )  # fmt: skip
                        for names, spans in spans_of[context].items():
                            self._record(out, names, src, dst, spans)
        return out

    def _port_edges(self) -> dict[str, list[int]]:
        """Per protocol, where any rule's ports begin or end: between two edges every rule
        answers alike, so one port stands for the span."""
        entries = [
            *(f.get("allowed") or f.get("denied") or [] for f in [*self.firewalls, *self.guide]),
            *(
                [{"IPProtocol": p, "ports": list(ports)} for p, ports in rule.layer4]
                or [{"IPProtocol": "all"}]
                for rule in self.machines.policy_rules
            ),
        ]
        return {
            protocol: sorted(
                {1, 65536}
                | {
                    edge
                    for listed in entries
                    for first, last in _port_spans(listed, protocol)
                    for edge in (first, last + 1)
                }
            )
            for protocol in ("tcp", "udp")
        }

    def _beyond(
        self,
        src: _GcpSignature,
        dst: _GcpSignature,
        rules: Sequence[Mapping[str, Any]],
        guide: Sequence[Mapping[str, Any]],
        foreign: set[str],
        bounds: Mapping[str, Sequence[int]],
    ) -> list[tuple[str, int, int, tuple[str, ...]]]:
        """The port spans on which a rule named in ``foreign`` decides ``dst``'s ingress from
        ``src`` (``rules``: every VPC rule that targets ``dst`` and whose sources hold ``src``)
        and the guide's own rules (``guide``, alone) would not admit it."""
        out = []
        for protocol, edges in bounds.items():
            spans = [
                span
                for f in rules
                if str(f.get("name")) in foreign
                for span in _port_spans(f["allowed"], protocol)
            ]
            for first, following in itertools.pairwise(edges):
                if not any(a <= first <= b for a, b in spans):
                    continue
                listed, by = self._vpc("INGRESS", dst.tags, dst.accounts, src.address, src,
                                       protocol, first, guide)  # fmt: skip
                if listed and by:
                    continue
                admitted, decided = self._side(
                    "INGRESS", dst, src.address, src, protocol, first, rules
                )
                names = tuple(d for d in decided if d in foreign)
                if admitted and names:
                    out.append((protocol, first, following - 1, names))
        return out

    def _let_out(
        self,
        judged: Sequence[tuple[str, int, int, tuple[str, ...]]],
        src: _GcpSignature,
        dst: _GcpSignature,
        dst_ip: str,
        rules: Sequence[Mapping[str, Any]],
    ) -> dict[tuple[str, ...], tuple[tuple[tuple[str, int, int], tuple[bool, list[str]]], ...]]:
        """Per rule (or rules tied at one priority), the spans it admits, each with whether
        the sender's egress (``rules``: the sender's egress rules towards ``dst_ip``) lets it
        out and what decided that."""
        found: dict[tuple[str, ...], list[Any]] = {}
        for protocol, first, last, names in judged:
            sent = self._side("EGRESS", src, dst_ip, dst, protocol, first, rules)
            found.setdefault(names, []).append(((protocol, first, last), sent))
        return {names: tuple(spans) for names, spans in found.items()}

    def _record(
        self,
        out: dict[tuple[tuple[str, ...], Role, Role], _Between],
        names: tuple[str, ...],
        src: _GcpSignature,
        dst: _GcpSignature,
        spans: Sequence[tuple[tuple[str, int, int], tuple[bool, list[str]]]],
    ) -> None:
        key = (names, src.role, dst.role)
        seen = out.get(key)
        if seen is None:
            rule = next(f for f in self.firewalls if str(f.get("name")) == names[0])
            seen = out[key] = _Between(rule, {}, {}, set(), set(), {}, {})
        seen.sources.update(dict.fromkeys(src.machines))
        seen.targets.update(dict.fromkeys(dst.machines))
        if id(spans) in seen.added:
            return  # the same answer, shared by another pair: its spans are in already
        seen.added.add(id(spans))
        for span, (sent, why) in spans:
            if sent:
                seen.reachable.add(span)
                seen.sent_by.update(dict.fromkeys(w for w in why if w in self.foreign_names))
            else:
                seen.stopped.add(span)
                seen.stopped_by.update(dict.fromkeys(why))

    def _between_finding(
        self, item: tuple[tuple[tuple[str, ...], Role, Role], _Between]
    ) -> Finding:
        (names, src_role, dst_role), seen = item
        rule = seen.rule
        owner = gcp_firewall_controller(str(rule.get("name", "")), str(rule.get("description", "")))
        priority = int(rule.get("priority", 1000))
        sources = ", ".join([*(rule.get("sourceRanges") or []), *(rule.get("sourceTags") or []),
                             *(rule.get("sourceServiceAccounts") or [])])  # fmt: skip
        tag = ", ".join(rule.get("targetTags") or []) or "the instances"
        if owner:
            remedy = (
                f"it is {owner}'s and {owner} restores it if it is changed or deleted, so it "
                f"cannot be narrowed: keep the {src_role.value} instances in ranges outside its "
                f"sources ({sources}), or add a deny above it (priority below {priority}) from "
                f"their ranges to {tag} on those ports"
            )
        else:
            remedy = (
                "it is not managed by the operator and never changed by it: narrow its sources "
                f"({sources}) or ports, or remove it"
            )
        said = f"firewall {' and '.join(names)}" + (f" ({owner})" if owner else "")
        who = (
            f"{src_role.value} instances ({_names(list(seen.sources))}) reach "
            f"{dst_role.value} instances {_names(list(seen.targets))}"
        )
        row = {Role.NOMAD_CLIENTS: "NOMAD-ISO-1", Role.EXTERNAL_VMS: "VM-ISO-1"}.get(src_role, "")
        row = row if src_role is dst_role else ""
        objects = (*names, *list(seen.targets)[:NAMED])
        if seen.reachable:
            out = f" (let out by {', '.join(seen.sent_by)})" if seen.sent_by else ""
            stopped = (
                f"; on {_spans_text(seen.stopped)} their egress stops it for now"
                if seen.stopped
                else ""
            )
            code = FindingCode.UNMANAGED_WIDENING
            message = (
                f"{said} lets {who} on {_spans_text(seen.reachable)}{out}, which no guide row "
                f"lists{stopped}; {remedy}"
            )
        else:
            code = FindingCode.UNMANAGED_RULE_SHADOWED
            message = (
                f"{said} admits {who.replace(' reach ', ' to ')} on {_spans_text(seen.stopped)}, "
                "which no guide row lists; the senders' egress stops it for now "
                f"({'; '.join(seen.stopped_by)}): it would open if that went; {remedy}"
            )
        return Finding.of(code, message, row=row, target=self.target, objects=objects)
