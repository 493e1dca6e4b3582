"""The AWS write plan: which calls, in which order, for one drift plan. Pure: no I/O here.

Per security group and direction ("lane") at most one ``Authorize`` and one ``Revoke`` call, per
group at most one ``ModifySecurityGroupRules``, and per pass one ``CreateTags`` per 1,000
adopted rules. The order keeps access from narrowing at every moment, below both the old and
the new desired state:

0. adoptions: identical unmarked rules get this resource's tags (access does not change);
1. lanes whose end state fits the quota but old and new side by side do not revoke their
   undesired rules first (those grant nothing the new state keeps);
2. every authorise and modify, across all groups;
3. every revoke.

A desired rule that an unmarked identical rule holds is adopted, never revoked and re-created,
so no revoke ever precedes the authorise of the same access.

A lane over the quota at the end of the pass is not written at all (a ``QuotaExceeded``
finding and an error say by how much).
"""

from __future__ import annotations

import enum
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
                    FindingCode.HELD_BY_OTHER_RULE,
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


def needs_room_first(
    lanes: Mapping[Lane, LaneChanges],
    counts: RuleCounts | None,
    quota: RuleQuota,
    blocked: set[str],
) -> set[Lane]:
    """Lanes whose end state fits the quota but old and new side by side do not."""
    out: set[Lane] = set()
    if counts is None:
        return out
    for (group, direction), lane in lanes.items():
        if group in blocked or not lane.revokes:
            continue
        have = counts.get((group, direction), (0, 0))
        limit = _quota(quota, direction)
        for i, family in enumerate(FAMILIES):
            if have[i] + _family_count(lane.creates, family) > limit:
                out.add((group, direction))
    return out


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
    room_first = needs_room_first(lanes, counts, quota, blocked)
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
        Write(WriteKind.REVOKE, group, way, items=tuple(lanes[(group, way)].revokes))
        for group, way in sorted(room_first)
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
            revokes = lanes.get((group, way), empty).revokes
            if revokes and (group, way) not in room_first:
                writes.append(Write(WriteKind.REVOKE, group, way, items=tuple(revokes)))
    return WritePlan(
        writes=tuple(writes),
        findings=tuple(findings + quota_findings),
        errors=tuple(errors),
        blocked=frozenset(blocked),
    )
