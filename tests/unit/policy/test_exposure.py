"""Exposure by meaning: "the whole internet" is judged on the union of a rule's sources."""

from __future__ import annotations

import pytest

from server_hardening.policy.exposure import (
    Access,
    sensitive_ports_open_to_world,
    world_families,
    world_open_sensitive_port,
)
from server_hardening.rules import Direction, FindingCode, PortRange, Severity


@pytest.mark.parametrize(
    ("sources", "families"),
    [
        (["0.0.0.0/0"], (4,)),
        (["0.0.0.0/1", "128.0.0.0/1"], (4,)),
        (["1.2.3.4/0"], (4,)),
        (["::/0"], (6,)),
        (["::0/0"], (6,)),
        (["::/1", "8000::/1"], (6,)),
        (["0.0.0.0/0", "::/0"], (4, 6)),
        (["0.0.0.0/1"], ()),
        (["10.0.0.0/8", "192.168.0.0/16"], ()),
        (["sg-0123456789abcdef0", "pl-12345"], ()),
        ([], ()),
    ],
)
def test_the_whole_internet_in_any_spelling(sources: list[str], families: tuple[int, ...]) -> None:
    assert world_families(sources) == families


def _ssh(peers: tuple[str, ...], direction: Direction = Direction.INGRESS) -> Access:
    return Access(direction, peers, "tcp", (PortRange.single(22),), "rule x")


@pytest.mark.parametrize(
    ("access", "ports"),
    [
        (_ssh(("0.0.0.0/0",)), [22]),
        (_ssh(("0.0.0.0/1", "128.0.0.0/1")), [22]),
        (_ssh(("10.0.0.0/8",)), []),
        (_ssh(("0.0.0.0/0",), Direction.EGRESS), []),
        (Access(Direction.INGRESS, ("::/0",), "all", None, "rule x"), [22, 2376, 4647]),
        (Access(Direction.INGRESS, ("::/0",), "udp", None, "rule x"), []),
        (
            Access(Direction.INGRESS, ("0.0.0.0/0",), "tcp", (PortRange(4000, 5000),), "r"),
            [4647],
        ),
    ],
)
def test_sensitive_ports_open_to_the_world(access: Access, ports: list[int]) -> None:
    assert sensitive_ports_open_to_world(access) == ports


def test_the_finding_names_the_guide_row_the_port_and_is_an_error() -> None:
    finding = world_open_sensitive_port(_ssh(("0.0.0.0/1", "128.0.0.0/1")), "aws", "reported only")
    assert finding is not None
    assert finding.code is FindingCode.WORLD_OPEN_SENSITIVE_PORT
    assert finding.severity is Severity.ERROR
    assert finding.row == "ALL-IN-1"
    assert "22 (SSH)" in finding.message and "IPv4" in finding.message
    assert finding.message.endswith("reported only")
