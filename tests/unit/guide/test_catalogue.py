"""The catalogue encodes the guide: every row ID of the guide is there, and the v4 differences
are the ones the guide lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server_hardening.guide import (
    CHOICES,
    PROFILES,
    V3,
    V4_0,
    V4_3,
    match_version,
    profile_for,
)
from server_hardening.rules import Action, Protocol

GUIDE = Path(__file__).resolve().parents[4] / "shared" / "guide" / "network-guide.md"


def guide_row_ids() -> set[str]:
    text = GUIDE.read_text(encoding="utf-8")
    return set(re.findall(r"^\| ([A-Z0-9]+-[A-Z]+-\d+) \|", text, flags=re.MULTILINE))


@pytest.mark.skipif(not GUIDE.exists(), reason=f"the shared guide is not at {GUIDE}")
def test_every_row_of_the_guide_is_in_the_v3_profile() -> None:
    ids = guide_row_ids()
    assert len(ids) == 30
    assert ids == V3.row_ids()


@pytest.mark.parametrize(
    ("version", "profile"),
    [
        ("3", "v3"),
        ("3.4", "v3"),
        ("4.0", "v4.0"),
        ("4.2", "v4.0"),
        ("4.3", "v4.3"),
        ("4.10", "v4.3"),
        ("3.x", "v3"),
        ("3.4.1", "v3"),
        ("4.2.3", "v4.0"),
        ("4", "v4.3"),
        ("4.x", "v4.3"),
        ("4.11", "v4.3"),
        ("4.11.2", "v4.3"),
    ],
)
def test_server_versions_pick_their_profile(version: str, profile: str) -> None:
    assert profile_for(version).name == profile


@pytest.mark.parametrize("version", ["3", "3.x", "4.0", "4.2", "4.3", "4.10.1"])
def test_a_known_version_maps_without_a_note(version: str) -> None:
    assert match_version(version).note == ""


def test_a_version_newer_than_the_catalogue_says_so() -> None:
    version = match_version("4.11")
    assert version.newer_than_catalogue and version.profile is V4_3
    assert "newer than the catalogue" in version.note and "4.10" in version.note


@pytest.mark.parametrize("version", ["4", "4.x"])
def test_an_unpinned_4_says_that_4_0_to_4_2_must_name_the_minor(version: str) -> None:
    note = match_version(version)
    assert note.profile is V4_3 and not note.newer_than_catalogue
    assert "4.0-4.2" in note.note


def test_v4_0_adds_ssh_from_nomad_clients_to_vms() -> None:
    assert "V4-NOMAD-OUT-22" in V4_0.row_ids()
    assert "V4-NOMAD-OUT-22" not in V3.row_ids()
    assert V4_0.row_ids() - V3.row_ids() == {"V4-NOMAD-OUT-22"}


def test_v4_3_drops_what_the_guide_says_it_dropped() -> None:
    dropped = V4_0.row_ids() - V4_3.row_ids()
    assert dropped == {
        "K8S-OUT-1", "NOMAD-OUT-1", "NOMAD-OUT-2", "NOMAD-OUT-4",
        "VM-IN-1", "VM-IN-2", "VM-IN-3", "VM-IN-4", "LB-IN-3", "LB-IN-5",
        "V4-NOMAD-OUT-22",  # CHOICE-V43-NO-SSH-TO-VMS
    }  # fmt: skip
    # ALL-OUT-4 stays for the VCS, without its VM-subnet half (CHOICE-V43-NO-SSH-TO-VMS).
    assert {r.peer.value for r in V4_3.rows if r.id == "ALL-OUT-4"} == {"vcs"}
    assert {r.peer.value for r in V4_0.rows if r.id == "ALL-OUT-4"} == {"vcs", "externalVMs"}
    assert "VM-IN-5" in V4_3.row_ids() and V4_3.row("VM-IN-5").ports.first == 54782  # type: ignore[union-attr]


def test_v4_moves_every_nomad_facing_service_onto_the_proxy() -> None:
    for profile in (V4_0, V4_3):
        for default in profile.components.values():
            assert default.services[0] == "circleci-proxy"
    assert V3.components[next(iter(V3.components))].services == ("circleci-server-traefik",)


def test_isolation_rows_deny_everything_both_ways() -> None:
    for profile in PROFILES.values():
        iso = [r for r in profile.rows if r.id.endswith("ISO-1")]
        assert {(r.id, r.direction.value) for r in iso} == {
            ("NOMAD-ISO-1", "ingress"), ("NOMAD-ISO-1", "egress"),
            ("VM-ISO-1", "ingress"), ("VM-ISO-1", "egress"),
        }  # fmt: skip
        assert all(r.action is Action.DENY and r.protocols == (Protocol.ALL,) for r in iso)


def test_dns_rows_cover_udp_and_tcp() -> None:
    dns = [r for r in V3.rows if r.id == "ALL-OUT-1"]
    assert len(dns) == 3
    assert all(set(r.protocols) == {Protocol.UDP, Protocol.TCP} for r in dns)


def test_choice_ids_are_unique_and_documented() -> None:
    ids = [c.id for c in CHOICES]
    assert len(ids) == len(set(ids))
    assert all(c.id.startswith("CHOICE-") and len(c.summary) > 40 for c in CHOICES)
