"""Checks on security-group rules the operator does not own. Pure: no I/O here.

Security groups only allow, so every rule in a managed group that this resource did not write
widens access beyond the guide: the chain says *how* (a sensitive port open to the whole
internet first, as on every target; then the default allow-all egress rule of a new group; then
any other rule), so the worst reading is the one reported.

AWS keeps one CIDR per rule, so "the whole internet" is judged on the union of the sources of
the unmanaged rules of the same group and direction that reach the same port: ``0.0.0.0/1`` and
``128.0.0.0/1`` on port 22 are two rules, and together the world.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from server_hardening.addresses import AddressSet
from server_hardening.drift import Claim, Claimer, DesiredItem, ObservedItem, UnmanagedJudge
from server_hardening.guide import SENSITIVE_PORTS
from server_hardening.machines import AwsMachines
from server_hardening.policy.effective import AwsEffective
from server_hardening.policy.exposure import (
    Access,
    NodePorts,
    is_world_open,
    node_port_exposure,
    world_open_sensitive_port,
)
from server_hardening.renderers.aws import AtomicRule, RenderedSecurityGroups, atomic_rules
from server_hardening.rules import Direction, Finding, FindingCode, PortRange

TARGET = "aws"


def access(rule: AtomicRule, where: str) -> Access:
    """A rule as an Access: group and prefix-list peers name no addresses here."""
    peers = (rule.peer,) if rule.peer_type in ("cidr4", "cidr6") else ()
    if rule.protocol == "-1":
        return Access(rule.direction, peers, "all", None, where)
    first, last = rule.from_port, rule.to_port
    if first is None or last is None or first < 0 or last < 0 or (first <= 1 and last >= 65535):
        return Access(rule.direction, peers, rule.protocol, None, where)
    return Access(rule.direction, peers, rule.protocol, (PortRange(max(first, 1), last),), where)


Check = Callable[[AtomicRule, Access, str], Finding | None]


def with_neighbours(seen: Access, neighbours: Sequence[Access]) -> list[Access]:
    """Per sensitive port the rule reaches, one Access whose sources are the union of the rule's
    and of every neighbour's (same group and direction) that reaches that port too."""
    out = []
    for port in SENSITIVE_PORTS:
        if not seen.covers_port(port):
            continue
        peers = set(seen.peers)
        for other in neighbours:
            if other.direction is seen.direction and other.covers_port(port):
                peers.update(other.peers)
        out.append(
            Access(
                seen.direction, tuple(sorted(peers)), "tcp", (PortRange.single(port),), seen.where
            )
        )
    return out


def opens_a_sensitive_port_to_the_world(
    rule: AtomicRule, seen: Access, fate: str
) -> Finding | None:
    return world_open_sensitive_port(seen, TARGET, fate)


def allows_all_egress(rule: AtomicRule, seen: Access, fate: str) -> Finding | None:
    if rule.direction is not Direction.EGRESS or rule.protocol != "-1" or not is_world_open(seen):
        return None
    return Finding.of(
        FindingCode.UNMANAGED_WIDENING,
        f"{seen.where} allows all egress to {rule.peer} (the default rule of a new security "
        f"group): it makes every egress restriction of the guide moot; {fate}",
        target=TARGET,
    )


def _ports_within(inner: AtomicRule, outer: AtomicRule) -> bool:
    if outer.protocol == "-1" or outer.from_port is None or outer.to_port is None:
        return outer.protocol in ("-1", inner.protocol)
    if outer.protocol != inner.protocol or inner.from_port is None or inner.to_port is None:
        return False
    return outer.from_port <= inner.from_port and inner.to_port <= outer.to_port


def covered_by_the_guide(rule: AtomicRule, desired: Sequence[AtomicRule]) -> bool:
    """Widening is judged by meaning: a rule every packet of which the desired rules allow too
    widens nothing, e.g. 4647 from a /24 inside the nodes' /20, or a /23 that two desired /24s
    make up. The addresses are the union of every desired rule of the same group, direction and
    family whose ports hold the rule's; groups and prefix lists must be the same one."""
    lane = [
        wanted
        for wanted in desired
        if (wanted.group_id, wanted.direction, wanted.peer_type)
        == (rule.group_id, rule.direction, rule.peer_type)
        and _ports_within(rule, wanted)
    ]
    if not lane:
        return False
    if rule.peer_type not in ("cidr4", "cidr6"):
        return any(wanted.peer == rule.peer for wanted in lane)
    return AddressSet.of(wanted.peer for wanted in lane).covers(rule.peer)


def widens_the_group(rule: AtomicRule, seen: Access, fate: str) -> Finding | None:
    text = f" ({rule.description!r})" if rule.description else ""
    return Finding.of(
        FindingCode.UNMANAGED_WIDENING,
        f"{seen.where} is not managed by this resource: {rule.key()}{text}; in a security group "
        f"every rule widens access; {fate}",
        target=TARGET,
    )


CHAIN: tuple[Check, ...] = (
    opens_a_sensitive_port_to_the_world,
    allows_all_egress,
    widens_the_group,
)


def judge_rule(
    rule: AtomicRule,
    rule_id: str,
    rendered: RenderedSecurityGroups,
    *,
    removing: bool,
    neighbours: Sequence[AtomicRule] = (),
    node_ports: NodePorts | None = None,
) -> Finding | None:
    """The first finding of the chain for an unmanaged rule in a managed group; ``neighbours``
    are the other unmanaged rules of its group (see the module doc)."""
    fate = (
        "it will be revoked (unmanagedRules: Remove)"
        if removing
        else "reported only (unmanagedRules: Report)"
    )
    where = f"{rule_id} in {rule.group_id} ({rendered.role_of(rule.group_id)})"
    seen = access(rule, where)
    around = [access(n, where) for n in neighbours if n.group_id == rule.group_id]
    for joint in with_neighbours(seen, around):
        exposed = world_open_sensitive_port(joint, TARGET, fate)
        if exposed is not None:
            return exposed
    behind = node_port_exposure(seen, node_ports or {}, TARGET, fate)
    if behind is not None:
        return behind
    if covered_by_the_guide(rule, rendered.atoms):
        return None
    for check in CHAIN:
        finding = check(rule, seen, fate)
        if finding is not None:
            return finding
    return None


def judge_foreign_rule(
    rule: AtomicRule,
    rule_id: str,
    controller: str,
    rendered: RenderedSecurityGroups,
    node_ports: NodePorts | None = None,
    node_port_range: tuple[int, int] | None = None,
) -> Finding | None:
    """Another controller's rule: never removed, but judged by what it means. A sensitive port
    it opens to the whole internet (itself, or as the NodePort that backs it) is reported like
    anyone's; NodePorts it opens to the whole internet (an NLB's client rule without
    ``loadBalancerSourceRanges``) are a warning naming the Services behind them."""
    role = rendered.role_of(rule.group_id)
    where = f"{rule_id} in {rule.group_id} ({role}, owned by {controller})"
    seen, fate = access(rule, where), "left alone: another controller's"
    exposed = world_open_sensitive_port(seen, TARGET, fate) or node_port_exposure(
        seen, node_ports or {}, TARGET, fate
    )
    if exposed is not None or node_port_range is None:
        return exposed
    first, last = node_port_range
    if seen.direction is not Direction.INGRESS or not is_world_open(seen):
        return None
    if not any(seen.covers_port(port) for port in (first, last)):
        return None
    behind = sorted(
        f"{service} port {port} (NodePort {node_port})"
        for node_port, (service, port) in (node_ports or {}).items()
        if seen.covers_port(node_port)
    )
    services = f": {', '.join(behind)}" if behind else ""
    return Finding.of(
        FindingCode.UNMANAGED_WIDENING,
        f"{where} opens NodePorts {first}-{last} to the whole internet{services}; set the "
        "Service's loadBalancerSourceRanges (the controller then writes the narrower rule); "
        f"{fate}",
        target=TARGET,
    )


class AwsPolicy:
    """The ``aws`` target's judgement (:class:`~server_hardening.policy.base.TargetPolicy`):
    the rendered rules are desired, an unmarked rule with a desired key is that rule exactly
    (the key is the access itself), unmanaged rules go through :data:`CHAIN` beside their group's
    other unmanaged rules, other controllers' are judged for exposure only."""

    def __init__(
        self,
        rendered: RenderedSecurityGroups,
        *,
        remove_unmanaged: bool = False,
        node_ports: NodePorts | None = None,
        node_port_range: tuple[int, int] | None = None,
    ) -> None:
        self.rendered = rendered
        self._remove_unmanaged = remove_unmanaged
        self.node_ports: NodePorts = dict(node_ports or {})
        self.node_port_range = node_port_range

    @property
    def remove_unmanaged(self) -> bool:
        return self._remove_unmanaged

    def desired(self) -> Sequence[DesiredItem[AtomicRule]]:
        return atomic_rules(self.rendered)

    def judge_unmanaged(
        self, observed: Sequence[ObservedItem[AtomicRule]]
    ) -> UnmanagedJudge[AtomicRule]:
        unmanaged = [i for i in observed if not i.owned and not i.owner]

        def judge(item: ObservedItem[AtomicRule]) -> Finding | None:
            neighbours = [i.payload for i in unmanaged if i.native_id != item.native_id]
            return judge_rule(
                item.payload,
                item.native_id,
                self.rendered,
                removing=self._remove_unmanaged,
                neighbours=neighbours,
                node_ports=self.node_ports,
            )

        return judge

    def judge_foreign(self) -> UnmanagedJudge[AtomicRule]:
        def judge(item: ObservedItem[AtomicRule]) -> Finding | None:
            return judge_foreign_rule(
                item.payload,
                item.native_id,
                item.controller,
                self.rendered,
                self.node_ports,
                self.node_port_range,
            )

        return judge

    def effective(self, machines: AwsMachines) -> AwsEffective:
        """Every machine of every role as it is really exposed (``policy.effective``)."""
        atoms = self.rendered.atoms
        return AwsEffective(
            machines,
            managed_groups=self.rendered.group_ids,
            covered=lambda rule: covered_by_the_guide(rule, atoms),
        )

    def claimer(self) -> Claimer[AtomicRule]:
        """The key is the access itself (group, direction, protocol, ports, peer): an unmarked
        rule with a desired key is that rule exactly, whatever its description says."""

        def claim(item: ObservedItem[AtomicRule], desired: DesiredItem[AtomicRule]) -> Claim | None:
            return Claim.ADOPT

        return claim
