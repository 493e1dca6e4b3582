"""Checks on security-group rules the operator does not own. Pure: no I/O here.

Security groups only allow, so every rule in a managed group that this resource did not write
widens access beyond the guide: the chain says *how* (a sensitive port open to the whole
internet first, as on every target; then the default allow-all egress rule of a new group; then
any other rule), so the worst reading is the one reported.
"""

from __future__ import annotations

from collections.abc import Callable

from server_hardening.policy.exposure import Access, is_world_open, world_open_sensitive_port
from server_hardening.renderers.aws import AtomicRule, RenderedSecurityGroups
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
    rule: AtomicRule, rule_id: str, rendered: RenderedSecurityGroups, *, removing: bool
) -> Finding | None:
    """The first finding of the chain for an unmanaged rule in a managed group."""
    fate = (
        "it will be revoked (unmanagedRules: Remove)"
        if removing
        else "reported only (unmanagedRules: Report)"
    )
    where = f"{rule_id} in {rule.group_id} ({rendered.role_of(rule.group_id)})"
    seen = access(rule, where)
    for check in CHAIN:
        finding = check(rule, seen, fate)
        if finding is not None:
            return finding
    return None
