"""Merging keeps rule counts low and never changes what is allowed or denied."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from server_hardening.compiler import merge_rules
from server_hardening.rules import (
    Action,
    Direction,
    Peer,
    PeerKind,
    PortRange,
    Protocol,
    Role,
    Rule,
)

PEERS = [Peer(PeerKind.EXTERNAL, ("0.0.0.0/0",)), Peer(PeerKind.NOMAD_CLIENTS, ("10.1.0.0/16",))]
MAX_PORT = 60
ROWS = ("A-1", "B-2", "C-3")


# Everything but the ports, as one choice: 2 subjects x 2 directions x 2 actions x 2 peers x
# 3 protocols x 3 rows. Drawn field by field (and ports drawn, then dropped, for "all") it
# took three times the choices per rule and twice the time per example, for the same rules.
KINDS = tuple(
    itertools.product(
        (Role.NOMAD_CLIENTS, Role.EXTERNAL_VMS), Direction, Action, PEERS, Protocol, ROWS
    )
)
KIND = st.sampled_from(KINDS)


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    subject, direction, action, peer, protocol, row = draw(KIND)
    ports = None
    if protocol is not Protocol.ALL:
        first = draw(st.integers(1, MAX_PORT))
        ports = PortRange(first, draw(st.integers(first, MAX_PORT)))
    return Rule(subject, direction, action, peer, protocol, ports, frozenset({row}))


def meaning(rule_set: tuple[Rule, ...] | list[Rule]) -> set[tuple[object, ...]]:
    """Every (lane, port) the rules cover, expanded over a small port space."""
    out = set()
    for r in rule_set:
        ports = (
            range(1, MAX_PORT + 1) if r.ports is None else range(r.ports.first, r.ports.last + 1)
        )
        for port in ports:
            out.add((r.subject, r.direction, r.action, r.peer, r.protocol, port))
    return out


def provenance(rule_set: tuple[Rule, ...] | list[Rule]) -> set[str]:
    return set().union(*(r.rows for r in rule_set)) if rule_set else set()


@given(st.lists(rules(), max_size=25))
def test_merging_keeps_what_is_allowed_is_idempotent_and_leaves_no_mergeable_pair(
    rule_list: list[Rule],
) -> None:
    merged = merge_rules(rule_list)
    assert meaning(merged) == meaning(rule_list)
    assert provenance(merged) == provenance(rule_list)
    assert len(merged) <= len(rule_list)
    assert merge_rules(merged) == merged
    lanes = [(r.subject, r.direction, r.action, r.peer, r.protocol) for r in merged]
    for i, a in enumerate(merged):
        for j, b in enumerate(merged):
            if i < j and lanes[i] == lanes[j]:
                assert a.ports is not None and b.ports is not None
                assert a.ports.last + 1 < b.ports.first or b.ports.last + 1 < a.ports.first


def test_rules_with_the_same_effect_merge_their_rows() -> None:
    peer = PEERS[0]
    a = Rule(
        Role.NOMAD_CLIENTS,
        Direction.EGRESS,
        Action.ALLOW,
        peer,
        Protocol.TCP,
        PortRange(22, 22),
        frozenset({"ALL-OUT-4"}),
    )
    b = Rule(
        Role.NOMAD_CLIENTS,
        Direction.EGRESS,
        Action.ALLOW,
        peer,
        Protocol.TCP,
        PortRange(22, 22),
        frozenset({"VM-OUT-1"}),
    )
    (merged,) = merge_rules([a, b])
    assert merged.rows == {"ALL-OUT-4", "VM-OUT-1"}
