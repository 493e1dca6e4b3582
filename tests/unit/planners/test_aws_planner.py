"""The AWS write plan, without boto3: add before remove, one call per lane and kind, nothing lost."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from server_hardening.drift import DesiredItem, ObservedItem, Plan
from server_hardening.model import RuleQuota
from server_hardening.planners.aws import WriteKind, plan_writes, still_granted_without
from server_hardening.renderers.aws import AtomicRule, RenderedSecurityGroups
from server_hardening.rules import Direction, Role

GROUPS = ("sg-0000000a", "sg-0000000b", "sg-0000000c")
RENDERED = RenderedSecurityGroups(
    atoms=(),
    group_roles=tuple((group, (role,)) for group, role in zip(GROUPS, list(Role)[:3], strict=True)),
    owner="ns/name",
)

CIDRS = ("10.0.0.0/16", "10.1.0.0/16", "0.0.0.0/0")
LANES_AND_PEERS = tuple(itertools.product(GROUPS, Direction, CIDRS))
PORTS = 400


def _rule(n: int) -> AtomicRule:
    """Rule number ``n`` of the 3 groups x 2 directions x 3 CIDRs x 400 TCP ports, each once."""
    group, direction, cidr = LANES_AND_PEERS[n // PORTS]
    port = 1 + n % PORTS
    return AtomicRule(group, direction, "tcp", port, port, "cidr4", cidr)


# One TCP port from a CIDR into one of three groups, either way, drawn as one integer: the
# same rules, uniformly, as drawing each field, for one choice instead of four (a tuple of four
# draws cost 40-80 % more per example, st.builds over every field more still; measured).
rules = st.integers(0, len(LANES_AND_PEERS) * PORTS - 1).map(_rule)


def _desired(rule: AtomicRule) -> DesiredItem[AtomicRule]:
    return DesiredItem(rule.key(), "f", rule)


def _owned(rule: AtomicRule, n: int) -> ObservedItem[AtomicRule]:
    return ObservedItem(rule.key(), "f", rule, owned=True, native_id=f"sgr-{n:08x}")


@given(
    creates=st.lists(rules, unique_by=AtomicRule.key, max_size=30),
    deletes=st.lists(rules, unique_by=AtomicRule.key, max_size=30),
)
def test_every_add_comes_before_every_remove_and_each_lane_is_one_call_per_kind(
    creates: list[AtomicRule], deletes: list[AtomicRule]
) -> None:
    created = {c.key() for c in creates}
    deletes = [d for d in deletes if d.key() not in created]
    stale = [_owned(rule, n) for n, rule in enumerate(deletes)]
    plan: Plan[AtomicRule] = Plan("aws", create=tuple(map(_desired, creates)), delete=tuple(stale))

    writes = plan_writes(plan, RENDERED, stale, RuleQuota(inbound=1000, outbound=1000)).writes

    kinds = [w.kind for w in writes]
    if WriteKind.REVOKE in kinds:
        assert WriteKind.AUTHORIZE not in kinds[kinds.index(WriteKind.REVOKE) :]
    lanes = [(w.kind, w.group, w.direction) for w in writes]
    assert len(lanes) == len(set(lanes))
    authorised = [r for w in writes for r in w.rules]
    revoked = [i for w in writes for i in w.items]
    assert sorted(r.key() for r in authorised) == sorted(r.key() for r in creates)
    assert sorted(i.native_id for i in revoked) == sorted(i.native_id for i in stale)


@given(extra=st.integers(0, 5))
def test_a_lane_over_the_quota_is_not_written_at_all(extra: int) -> None:
    group = GROUPS[1]
    have = [
        _owned(AtomicRule(group, Direction.INGRESS, "tcp", p, p, "cidr4", "10.0.0.0/16"), p)
        for p in range(1, 6)
    ]
    new = [
        AtomicRule(group, Direction.INGRESS, "tcp", p, p, "cidr4", "10.9.0.0/16")
        for p in range(100, 101 + extra)
    ]
    plan: Plan[AtomicRule] = Plan("aws", create=tuple(map(_desired, new)))

    out = plan_writes(plan, RENDERED, have, RuleQuota(inbound=5, outbound=5))

    assert out.writes == ()
    assert out.blocked == frozenset({group})
    assert [f.code.value for f in out.findings] == ["QuotaExceeded"]
    assert "over the quota of 5" in out.errors[0]


def test_a_full_lane_revokes_first_only_rules_whose_access_no_state_shares() -> None:
    group = GROUPS[0]
    old = [
        _owned(AtomicRule(group, Direction.INGRESS, "tcp", p, p, "cidr4", "10.0.0.0/16"), p)
        for p in range(1, 6)
    ]
    new = [
        AtomicRule(group, Direction.INGRESS, "tcp", p, p, "cidr4", "10.9.0.0/16")
        for p in range(1, 6)
    ]
    plan: Plan[AtomicRule] = Plan("aws", create=tuple(map(_desired, new)), delete=tuple(old))

    writes = plan_writes(plan, RENDERED, old, RuleQuota(inbound=5, outbound=5)).writes

    assert [w.kind for w in writes] == [WriteKind.REVOKE, WriteKind.AUTHORIZE]


def _in(cidr: str, first: int = 64535, last: int = 65535, proto: str = "tcp") -> AtomicRule:
    return AtomicRule(GROUPS[0], Direction.INGRESS, proto, first, last, "cidr4", cidr)


def test_a_narrowed_replacement_in_a_full_lane_is_refused_not_revoked_first() -> None:
    """The /24 -> /25 replacement: what the /24 grants that the /25 grants too would be closed
    between the revoke and the authorise. Nothing else can make room: the group is not written,
    and the finding names the group, direction, quota and the rule that would have to go."""
    old = [_owned(_in("198.51.100.0/24"), 1), _owned(_in("203.0.113.0/24", 443, 443), 2)]
    plan: Plan[AtomicRule] = Plan(
        "aws", create=(_desired(_in("198.51.100.0/25")),), delete=(old[0],)
    )

    planned = plan_writes(plan, RENDERED, old, RuleQuota(inbound=2, outbound=2))

    assert planned.writes == ()
    assert planned.blocked == {GROUPS[0]}
    [finding] = planned.findings
    assert finding.code == "QuotaExceeded"
    assert f"{GROUPS[0]} (kubernetesNodes) ingress is full (2 of its quota of 2" in finding.message
    assert "198.51.100.0/24" in finding.message
    assert "no room to add 1 rules" in planned.errors[0]


def test_a_full_lane_makes_room_with_a_rule_no_state_needs_and_adds_before_the_rest() -> None:
    narrowed = _owned(_in("198.51.100.0/24"), 1)
    world_ssh = _owned(_in("0.0.0.0/0", 22, 22), 2)  # no desired rule grants any of it
    old = [narrowed, world_ssh]
    plan: Plan[AtomicRule] = Plan(
        "aws", create=(_desired(_in("198.51.100.0/25")),), delete=(narrowed, world_ssh)
    )

    writes = plan_writes(plan, RENDERED, old, RuleQuota(inbound=2, outbound=2)).writes

    assert [(w.kind, [i.native_id for i in w.items]) for w in writes] == [
        (WriteKind.REVOKE, [world_ssh.native_id]),
        (WriteKind.AUTHORIZE, []),
        (WriteKind.REVOKE, [narrowed.native_id]),
    ]


def test_a_rule_the_others_cover_can_go_first() -> None:
    needed = [_in("198.51.100.0/25")]
    assert still_granted_without(_in("198.51.100.0/26"), needed, [_in("198.51.100.0/24")])
    assert not still_granted_without(_in("198.51.100.0/24"), needed, [_in("198.51.100.0/26")])
    # Ports, protocols and peers are all part of what is granted.
    assert still_granted_without(_in("198.51.100.0/24", 22, 22), needed, [])
    assert still_granted_without(_in("198.51.100.0/24", 1, 100, "udp"), needed, [])
    everything = AtomicRule(GROUPS[0], Direction.INGRESS, "-1", None, None, "cidr4", "0.0.0.0/0")
    assert not still_granted_without(everything, needed, [])
    assert still_granted_without(everything, needed, [_in("198.51.100.0/25")])
    group_peer = AtomicRule(GROUPS[0], Direction.INGRESS, "tcp", 1, 9, "group", "sg-0000000b")
    assert still_granted_without(_in("10.0.0.0/8"), [group_peer], [])
    assert not still_granted_without(group_peer, [group_peer], [])
