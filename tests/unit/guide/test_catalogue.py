"""The catalogue encodes the guide: the row tables of docs/guide.md (kept in the repository, so
this runs on every clone) are exactly the rows of each profile, and the v4 differences are the
ones the guide lists."""

from __future__ import annotations

from pathlib import Path

import pytest

from server_hardening.guide import (
    CHOICES,
    PROFILES,
    V3,
    V4_0,
    V4_3,
    Ports,
    Profile,
    match_version,
    profile_for,
)
from server_hardening.rules import Action, Direction, Protocol

GUIDE = Path(__file__).resolve().parents[3] / "docs" / "guide.md"
ROW_COLUMNS = [
    "ID", "held by", "dir", "action", "protocol", "ports", "peer", "when", "v3", "v4.0", "v4.3",
    "what for",
]  # fmt: skip

Line = tuple[str, str, str, str, str, str, str, str]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def guide_tables() -> tuple[dict[str, set[Line]], list[str]]:
    """docs/guide.md's row tables, per profile as (id, holder, direction, action, protocols,
    ports, peer, when) lines, and the IDs of its choice table."""
    per_profile: dict[str, set[Line]] = {"v3": set(), "v4.0": set(), "v4.3": set()}
    choices: list[str] = []
    header: list[str] = []
    for line in GUIDE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            header = []
            continue
        cells = _cells(line)
        if not header:
            header = cells
            continue
        if set(line) <= set("|-"):
            continue
        if header == ROW_COLUMNS:
            row = dict(zip(ROW_COLUMNS, cells, strict=True))
            for holder in row["held by"].split(","):
                line_key: Line = (
                    row["ID"], holder.strip().strip("`"), row["dir"], row["action"],
                    row["protocol"], row["ports"], row["peer"].strip("`"), row["when"],
                )  # fmt: skip
                for profile, lines in per_profile.items():
                    if row[profile] == "yes":
                        lines.add(line_key)
        elif header == ["ID", "what the product does"]:
            choices.append(cells[0])
    return per_profile, choices


def catalogue_lines(profile: Profile) -> set[Line]:
    out: set[Line] = set()
    for r in profile.rows:
        protocols = "+".join("all" if p is Protocol.ALL else p.value.upper() for p in r.protocols)
        if r.ports is Ports.NODE_PORTS:
            ports = "NodePort range"
        elif r.ports is Ports.SSH_RERUN:
            ports = "64535-65535 (podman: 32768-65535)"  # CHOICE-NOMAD-PODMAN
        else:
            ports = "all" if r.ports is None else str(r.ports)
        when = "; ".join(q.value for q in r.requires) or "-"
        direction = "in" if r.direction is Direction.INGRESS else "out"
        out.add((r.id, r.subject.value, direction, r.action.value, protocols, ports,
                 r.peer.value, when))  # fmt: skip
    return out


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=lambda p: p.name)
def test_the_catalogue_holds_the_rows_of_docs_guide(profile: Profile) -> None:
    per_profile, _ = guide_tables()
    documented = per_profile[profile.name]
    catalogue = catalogue_lines(profile)
    assert documented, f"no rows parsed from {GUIDE} for {profile.name}"
    assert sorted(catalogue - documented) == [], "in guide.py, not in docs/guide.md"
    assert sorted(documented - catalogue) == [], "in docs/guide.md, not in guide.py"


def test_every_row_of_the_guide_is_in_the_v3_profile() -> None:
    per_profile, _ = guide_tables()
    ids = {line[0] for line in per_profile["v3"]}
    assert len(ids) == 30
    assert ids == V3.row_ids()


def test_docs_guide_lists_every_choice() -> None:
    _, choices = guide_tables()
    assert choices == [c.id for c in CHOICES]


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
