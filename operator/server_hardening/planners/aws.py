"""The AWS write plan: which calls, in which order, for one drift plan. Pure: no I/O here.

Per security group and direction ("lane") at most one ``Authorize`` and one ``Revoke`` call, per
group at most one ``ModifySecurityGroupRules``, and per pass one ``CreateTags`` per 1,000
adopted rules. The order keeps access from narrowing at every moment, below both the old and
the new desired state:

0. adoptions: identical unmarked rules get this resource's tags (access does not change);
1. in a lane whose end state fits the quota but whose old and new rules side by side do not
   (a full lane), just enough revokes to make room, chosen among the rules whose access no
   state needs: what a rule grants that both the old and the new state grant must still be
   granted by the rules left in the lane (an unexpected rule no desired rule covers, or a rule
   the others cover). If no such choice makes room, the group is not written (``QuotaExceeded``
   naming the group, direction, quota and the rules that would have to go): a full lane never
   revokes first what it is about to re-grant narrower;
2. every authorise and modify, across all groups;
3. every other revoke.

So at every moment of the pass the lane grants at least what both the old and the new state
grant. A desired rule that an unmarked identical rule holds is adopted, never revoked and
re-created, so no revoke ever precedes the authorise of the same access.

A lane over the quota at the end of the pass is not written at all (a ``QuotaExceeded``
finding and an error say by how much).
"""

from __future__ import annotations

import enum
import ipaddress
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from server_hardening.drift import ObservedItem, Plan
from server_hardening.model import RuleQuota
from server_hardening.renderers.aws import (
    AtomicRule,
    QuotaUse,
    RenderedSecurityGroups,
    quota_finding,
)
from server_hardening.rules import Direction, Finding, FindingCode

TARGET = "aws"
FAMILIES = (4, 6)
Lane = tuple[str, Direction]
"""A security group and a direction: the unit AWS counts rules and batches calls by."""


class WriteKind(enum.StrEnum):
    ADOPT = "adopt"
    AUTHORIZE = "authorize"
    REVOKE = "revoke"
    MODIFY = "modify"


@dataclass(frozen=True)
class Write:
    """One API call: authorise ``rules`` or revoke ``items`` in a lane, fix the descriptions of
    ``changes`` (rule ID, desired rule) in ``group``, or adopt ``changes`` (tag them as this
    resource's, then fix their descriptions)."""

    kind: WriteKind
    group: str
    direction: Direction | None = None
    rules: tuple[AtomicRule, ...] = ()
    items: tuple[ObservedItem[AtomicRule], ...] = ()
    changes: tuple[tuple[str, AtomicRule], ...] = ()


@dataclass(frozen=True)
class WritePlan:
    writes: tuple[Write, ...]
    findings: tuple[Finding, ...] = ()
    errors: tuple[str, ...] = ()
    blocked: frozenset[str] = frozenset()


@dataclass
class LaneChanges:
    """What one lane will see in this pass."""

    creates: list[AtomicRule] = field(default_factory=list)
    revokes: list[ObservedItem[AtomicRule]] = field(default_factory=list)


RuleCounts = Mapping[Lane, tuple[int, int]]


def rule_counts(observed: Sequence[ObservedItem[AtomicRule]]) -> dict[Lane, tuple[int, int]]:
    """Rules per lane and family (IPv4, IPv6) as AWS counts them against the quota."""
    counts: dict[Lane, list[int]] = defaultdict(lambda: [0, 0])
    for item in observed:
        rule = item.payload
        lane = counts[(rule.group_id, rule.direction)]
        for i, family in enumerate(FAMILIES):
            if family in rule.family:
                lane[i] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


def _quota(quota: RuleQuota, direction: Direction) -> int:
    return quota.inbound if direction is Direction.INGRESS else quota.outbound


def holders(
    plan: Plan[AtomicRule], observed: Sequence[ObservedItem[AtomicRule]]
) -> dict[str, list[ObservedItem[AtomicRule]]]:
    """Rules this resource does not own, by key: AWS refuses a second rule with that key."""
    held: dict[str, list[ObservedItem[AtomicRule]]] = defaultdict(list)
    for item in (*observed, *plan.unmanaged, *plan.remove_unmanaged):
        if not item.owned and item not in held[item.key]:
            held[item.key].append(item)
    return held


def lane_changes(
    plan: Plan[AtomicRule],
    rendered: RenderedSecurityGroups,
    observed: Sequence[ObservedItem[AtomicRule]],
) -> tuple[dict[Lane, LaneChanges], dict[str, list[tuple[str, AtomicRule]]], list[Finding]]:
    """The plan sorted into lanes, the description fixes per group, and the desired rules that
    another rule holds (AWS allows no duplicate, so this resource does not write its own)."""
    managed = set(rendered.group_ids)
    lanes: dict[Lane, LaneChanges] = defaultdict(LaneChanges)
    modifies: dict[str, list[tuple[str, AtomicRule]]] = defaultdict(list)
    findings: list[Finding] = []
    held = holders(plan, observed)
    for desired in plan.create:
        rule = desired.payload
        if rule.group_id not in managed:
            continue
        lane = lanes[(rule.group_id, rule.direction)]
        holding = held.get(desired.key, [])
        if not holding:
            lane.creates.append(rule)
        else:
            keeper = holding[0]
            whose = f"owned by {keeper.owner}" if keeper.owner else "unmanaged"
            findings.append(
                Finding.of(
                    FindingCode.HELD_BY_OTHER,
                    f"{desired.key} is held by {keeper.native_id} ({whose}); AWS allows "
                    "no duplicate, so this resource does not write its own",
                    row=desired.rows[0] if desired.rows else "",
                    target=TARGET,
                )
            )
    for change in plan.update:
        rule = change.desired.payload
        if rule.group_id in managed:
            modifies[rule.group_id].append((change.observed.native_id, rule))
    for item in (*plan.delete, *plan.remove_unmanaged):
        rule = item.payload
        if rule.group_id in managed:
            lanes[(rule.group_id, rule.direction)].revokes.append(item)
    return dict(lanes), dict(modifies), findings


def _family_count(rules: Sequence[AtomicRule], family: int) -> int:
    return sum(1 for rule in rules if family in rule.family)


def over_quota(
    lanes: Mapping[Lane, LaneChanges],
    counts: RuleCounts | None,
    quota: RuleQuota,
    rendered: RenderedSecurityGroups,
) -> tuple[set[str], list[Finding], list[str]]:
    """Groups whose end state does not fit: nothing is written to them this pass."""
    blocked: set[str] = set()
    findings: list[Finding] = []
    errors: list[str] = []
    if counts is None:
        return blocked, findings, errors
    for (group, direction), lane in sorted(lanes.items()):
        have = counts.get((group, direction), (0, 0))
        adds = lane.creates
        removes = [i.payload for i in lane.revokes]
        end = [
            have[i] + _family_count(adds, family) - _family_count(removes, family)
            for i, family in enumerate(FAMILIES)
        ]
        limit = _quota(quota, direction)
        if max(end) <= limit:
            continue
        blocked.add(group)
        role = rendered.role_of(group)
        use = QuotaUse(group, direction, ipv4=end[0], ipv6=end[1], quota=limit)
        existing = (
            f" after this pass ({have[0]} IPv4/{have[1]} IPv6 now, {len(adds)} to add, "
            f"{len(removes)} to remove)"
        )
        findings.append(quota_finding(use, role=role, existing=existing))
        errors.append(
            f"{group} ({role}): not written: {direction.value} would hold "
            f"{end[0]} IPv4 / {end[1]} IPv6 rules, over the quota of {limit}"
        )
    return blocked, findings, errors


# --------------------------------------------------------------------------------------
# Access as boxes: what a rule grants, to tell which revokes no state needs


Interval = tuple[int, int]
Box = tuple[Interval, Interval, str, Interval]
"""Protocol numbers, ports (ICMP: type * 256 + code), peer space (``v4``, ``v6``, ``group:<id>``,
``prefix-list:<id>``) and the addresses in it: the access of one rule."""

PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}
EVERY_PORT: Interval = (0, 65535)


def _ports(number: int, first: int | None, last: int | None) -> Interval:
    if number in (6, 17):
        low = 0 if first is None or first < 0 else first
        high = 65535 if last is None or last < 0 else last
        return (low, high)
    if number in (1, 58):  # ICMP type and code, -1 meaning any
        if first is None or first < 0:
            return EVERY_PORT
        if last is None or last < 0:
            return (first * 256, first * 256 + 255)
        return (first * 256 + last, first * 256 + last)
    return EVERY_PORT


def access_box(rule: AtomicRule) -> Box:
    """What ``rule`` grants in its lane."""
    if rule.protocol == "-1":
        protocols, ports = (0, 255), EVERY_PORT
    else:
        number = PROTOCOL_NUMBERS.get(rule.protocol)
        if number is None:
            number = int(rule.protocol) if rule.protocol.isdigit() else -1
        protocols, ports = (number, number), _ports(number, rule.from_port, rule.to_port)
    if rule.peer_type in ("cidr4", "cidr6"):
        net = ipaddress.ip_network(rule.peer, strict=False)
        space = f"v{net.version}"
        return protocols, ports, space, (int(net.network_address), int(net.broadcast_address))
    return protocols, ports, f"{rule.peer_type}:{rule.peer}", (0, 0)


def _meet(a: Interval, b: Interval) -> Interval | None:
    low, high = max(a[0], b[0]), min(a[1], b[1])
    return (low, high) if low <= high else None


def _intersection(a: Box, b: Box) -> Box | None:
    if a[2] != b[2]:
        return None
    protocols, ports, addresses = _meet(a[0], b[0]), _meet(a[1], b[1]), _meet(a[3], b[3])
    if protocols is None or ports is None or addresses is None:
        return None
    return protocols, ports, a[2], addresses


def _minus(a: Box, b: Box) -> list[Box]:
    """``a`` without ``b``, as disjoint boxes."""
    if _intersection(a, b) is None:
        return [a]
    out: list[Box] = []
    rest = list(a)
    for dim in (0, 1, 3):
        have: Interval = rest[dim]  # type: ignore[assignment]
        cut: Interval = b[dim]  # type: ignore[assignment]
        if have[0] < cut[0]:
            piece = list(rest)
            piece[dim] = (have[0], cut[0] - 1)
            out.append(tuple(piece))  # type: ignore[arg-type]
        if cut[1] < have[1]:
            piece = list(rest)
            piece[dim] = (cut[1] + 1, have[1])
            out.append(tuple(piece))  # type: ignore[arg-type]
        rest[dim] = (max(have[0], cut[0]), min(have[1], cut[1]))
    return out


def uncovered(boxes: Sequence[Box], by: Sequence[Box]) -> list[Box]:
    """The parts of ``boxes`` that no box of ``by`` covers."""
    left = list(boxes)
    for hole in by:
        left = [piece for box in left for piece in _minus(box, hole)]
        if not left:
            break
    return left


def still_granted_without(
    rule: AtomicRule, needed: Sequence[AtomicRule], others: Sequence[AtomicRule]
) -> bool:
    """Whether everything ``rule`` grants that ``needed`` also grants is granted by ``others``."""
    box = access_box(rule)
    shared = [m for m in (_intersection(box, access_box(n)) for n in needed) if m is not None]
    return not uncovered(shared, [access_box(o) for o in others])


# --------------------------------------------------------------------------------------
# Full lanes


def make_room(
    lanes: Mapping[Lane, LaneChanges],
    observed: Sequence[ObservedItem[AtomicRule]],
    counts: RuleCounts | None,
    quota: RuleQuota,
    blocked: set[str],
    rendered: RenderedSecurityGroups,
) -> tuple[dict[Lane, list[ObservedItem[AtomicRule]]], set[str], list[Finding], list[str]]:
    """For each full lane (its end state fits the quota, its old and new rules side by side do
    not), the revokes made before any add: as many as the quota needs, each one a rule whose
    access the old and the new state share is granted by the rules still there when it goes.
    A lane without enough of them blocks its group (a finding and an error say which rules
    would have to go)."""
    first: dict[Lane, list[ObservedItem[AtomicRule]]] = {}
    refused: set[str] = set()
    findings: list[Finding] = []
    errors: list[str] = []
    if counts is None:
        return first, refused, findings, errors
    for (group, direction), lane in sorted(lanes.items()):
        if group in blocked or group in refused:
            continue
        have = counts.get((group, direction), (0, 0))
        limit = _quota(quota, direction)
        need = [
            have[i] + _family_count(lane.creates, family) - limit
            for i, family in enumerate(FAMILIES)
        ]
        if max(need) <= 0:
            continue
        present = [
            i for i in observed if (i.payload.group_id, i.payload.direction) == (group, direction)
        ]
        leaving = {id(i) for i in lane.revokes}
        new_state = [i.payload for i in present if id(i) not in leaving] + lane.creates
        early: list[ObservedItem[AtomicRule]] = []
        for item in sorted(lane.revokes, key=lambda i: i.key):
            if max(need) <= 0:
                break
            helps = any(need[i] > 0 and family in item.payload.family
                        for i, family in enumerate(FAMILIES))  # fmt: skip
            if not helps:
                continue
            others = [i.payload for i in present if i is not item]
            if still_granted_without(item.payload, new_state, others):
                early.append(item)
                present = [i for i in present if i is not item]
                for i, family in enumerate(FAMILIES):
                    if family in item.payload.family:
                        need[i] -= 1
        if max(need) <= 0:
            first[(group, direction)] = early
            continue
        refused.add(group)
        role = rendered.role_of(group)
        short = max(need)
        replaced = ", ".join(i.key for i in lane.revokes if i not in early) or "none"
        field = "inbound" if direction is Direction.INGRESS else "outbound"
        findings.append(
            Finding.of(
                FindingCode.QUOTA_EXCEEDED,
                f"{group} ({role}) {direction.value} is full ({max(have)} of its quota of "
                f"{limit} per address family, spec.aws.ruleQuota.{field}): adding "
                f"{len(lane.creates)} rules before removing the ones they replace needs "
                f"{short} more free places, and removing first would close access both the "
                f"old and the new rules grant (the rules to remove: {replaced}); nothing is "
                "written to this group: free places by removing or merging rules no state "
                "needs, or raise the quota",
                target=TARGET,
            )
        )
        errors.append(
            f"{group} ({role}): not written: {direction.value} has no room to add "
            f"{len(lane.creates)} rules before removing what they replace (quota {limit})"
        )
    return first, refused, findings, errors


def plan_writes(
    plan: Plan[AtomicRule],
    rendered: RenderedSecurityGroups,
    observed: Sequence[ObservedItem[AtomicRule]] | None,
    quota: RuleQuota,
) -> WritePlan:
    """The ordered calls for ``plan`` (see the module doc). ``observed`` is what the last
    observe saw (None: not observed, so no quota arithmetic is possible)."""
    lanes, modifies, findings = lane_changes(plan, rendered, observed or ())
    counts = None if observed is None else rule_counts(observed)
    blocked, quota_findings, errors = over_quota(lanes, counts, quota, rendered)
    room_first, full, room_findings, room_errors = make_room(
        lanes, observed or (), counts, quota, blocked, rendered
    )
    blocked |= full
    quota_findings += room_findings
    errors += room_errors
    groups = [g for g in rendered.group_ids if g not in blocked]
    both = (Direction.INGRESS, Direction.EGRESS)
    empty = LaneChanges()

    adoptions: dict[str, list[tuple[str, AtomicRule]]] = defaultdict(list)
    for adoption in plan.adopt:
        rule = adoption.desired.payload
        if rule.group_id in set(groups):
            adoptions[rule.group_id].append((adoption.observed.native_id, rule))
    writes: list[Write] = [
        Write(WriteKind.ADOPT, group, changes=tuple(adoptions[group]))
        for group in groups
        if adoptions.get(group)
    ]
    writes += [
        Write(WriteKind.REVOKE, group, way, items=tuple(room_first[(group, way)]))
        for group, way in sorted(room_first)
        if group in groups and room_first[(group, way)]
    ]
    for group in groups:
        for way in both:
            creates = lanes.get((group, way), empty).creates
            if creates:
                writes.append(Write(WriteKind.AUTHORIZE, group, way, rules=tuple(creates)))
        if modifies.get(group):
            writes.append(Write(WriteKind.MODIFY, group, changes=tuple(modifies[group])))
    for group in groups:
        for way in both:
            made_room = room_first.get((group, way), [])
            revokes = [i for i in lanes.get((group, way), empty).revokes if i not in made_room]
            if revokes:
                writes.append(Write(WriteKind.REVOKE, group, way, items=tuple(revokes)))
    return WritePlan(
        writes=tuple(writes),
        findings=tuple(findings + quota_findings),
        errors=tuple(errors),
        blocked=frozenset(blocked),
    )
