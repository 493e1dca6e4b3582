"""`hardening plan`'s table shows what the JSON says would be written: the same rules, as many,
with the same priorities, actions, peers and guide rows; and it fits 120 columns."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from builders import EXAMPLES, example_body, example_names
from server_hardening.cli import main

WIDTH = 120


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*args: str) -> Result:
    """``hardening ARGS`` in this process: the exit code, stdout and stderr a user sees."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return Result(code, out.getvalue(), err.getvalue())


def _gcp_v4_with_ipv6_and_egress() -> dict[str, Any]:
    """A GCP spec unlike the example: 4.x, restrictEgress, an IPv6 VCS range, DNS."""
    body = copy.deepcopy(example_body("gcp-v3"))
    spec = body["spec"]
    spec["serverVersion"] = "4.8"
    spec["topology"]["vcs"] = {"cidrs": ["140.82.112.0/20", "2606:50c0::/32"]}
    spec["topology"]["dns"] = {"cidrs": ["169.254.169.254/32"]}
    spec["kubernetes"] = {"networkPolicies": {"enabled": True, "restrictEgress": True}}
    return body


SPECS = [*example_names(), "gcp-v4-egress"]


def _spec_file(name: str, tmp_path: Path) -> str:
    if name in example_names():
        return str(EXAMPLES / f"{name}.yaml")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(_gcp_v4_with_ipv6_and_egress()))
    return str(path)


# ------------------------------------------------------------------------------------------
# Reading the table back, as a person reads it: sections, block headings, columns.


def _columns(header: str) -> list[tuple[str, int]]:
    return [(m.group(0), m.start()) for m in re.finditer(r"\S+(?: \S+)*", header)]


def parse_table(text: str) -> dict[str, list[dict[str, str]]]:
    """Section title -> rows (column -> text, plus ``block``), continuation lines joined."""
    sections: dict[str, list[dict[str, str]]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        title = lines[i]
        if not re.match(r"^(KUBERNETES|AWS|GCP): ", title):
            i += 1
            continue
        columns = _columns(lines[i + 1])
        rows: list[dict[str, str]] = []
        block = ""
        i += 2
        while i < len(lines) and lines[i].strip():
            line = lines[i]
            i += 1
            if not line.startswith("  "):
                block = line
                continue
            cells = {}
            for n, (name, start) in enumerate(columns):
                end = columns[n + 1][1] if n + 1 < len(columns) else None
                cells[name] = line[start:end].strip()
            if line[columns[0][1]] == " ":  # a continuation of the row above
                for name, value in cells.items():
                    if value:
                        joiner = "" if rows[-1][name].endswith(",") else " "
                        rows[-1][name] += joiner + value
                continue
            rows.append({"block": block, **cells})
        sections[title.split(":")[0]] = rows
    return sections


# ------------------------------------------------------------------------------------------
# What the JSON says, rule by rule.


def _rows_of(description: str) -> str:
    match = re.search(r"\[([A-Z0-9,-]+)\]", description)
    assert match, f"no guide rows in {description!r}"
    return match.group(1)


def _aws_expected(groups: list[dict[str, Any]]) -> Counter[tuple[str, ...]]:
    roles = {g["groupId"]: g["role"] for g in groups}
    out: Counter[tuple[str, ...]] = Counter()
    for group in groups:
        for direction in ("ingress", "egress"):
            for perm in group.get(direction, []):
                protocol = perm["IpProtocol"]
                ports = (
                    "all"
                    if protocol == "-1"
                    else f"{protocol}/{perm['FromPort']}"
                    + (f"-{perm['ToPort']}" if perm["ToPort"] != perm["FromPort"] else "")
                )
                peers = [(r["CidrIp"], r["Description"]) for r in perm.get("IpRanges", [])]
                peers += [(r["CidrIpv6"], r["Description"]) for r in perm.get("Ipv6Ranges", [])]
                peers += [
                    (f"{r['GroupId']} ({roles[r['GroupId']]})", r["Description"])
                    for r in perm.get("UserIdGroupPairs", [])
                ]
                for peer, description in peers:
                    block = f"{group['groupId']} ({group['role']})"
                    out[(block, direction, "allow", peer, ports, _rows_of(description))] += 1
    return out


def _gcp_expected(firewalls: list[dict[str, Any]]) -> Counter[tuple[str, ...]]:
    out: Counter[tuple[str, ...]] = Counter()
    for fw in firewalls:
        peers = [f"tag:{t}" for t in fw.get("sourceTags", [])]
        peers += fw.get("sourceRanges", []) + fw.get("destinationRanges", [])
        action = "deny" if "denied" in fw else "allow"
        key = (
            ",".join(f"tag:{t}" for t in fw["targetTags"]),
            fw["direction"].lower(),
            str(fw["priority"]),
            action,
            ",".join(sorted(peers)),
            _rows_of(fw["description"]),
        )
        out[key] += 1
    return out


def _np_expected(policies: list[dict[str, Any]]) -> Counter[tuple[str, ...]]:
    out: Counter[tuple[str, ...]] = Counter()
    for policy in policies:
        name = policy["metadata"]["name"]
        for kind, peers_key in (("Ingress", "from"), ("Egress", "to")):
            if kind not in policy["spec"]["policyTypes"]:
                continue
            entries = policy["spec"].get(kind.lower()) or []
            if not entries:
                out[(name, kind.lower(), "deny", "")] += 1
            for entry in entries:
                cidrs = sorted(p["ipBlock"]["cidr"] for p in entry[peers_key] if "ipBlock" in p)
                out[(name, kind.lower(), "allow", ",".join(cidrs))] += 1
    return out


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SPECS)
def test_the_table_shows_every_rule_of_the_json_with_its_priority_and_rows(
    name: str, tmp_path: Path
) -> None:
    path = _spec_file(name, tmp_path)
    table = run("plan", "-f", path)
    as_json = run("plan", "-f", path, "-o", "json")
    assert table.returncode == 0 and as_json.returncode == 0, table.stderr + as_json.stderr
    doc = json.loads(as_json.stdout)
    sections = parse_table(table.stdout)
    assert set(sections) == {t.upper() for t in ("kubernetes", "aws", "gcp") if t in doc}

    if "aws" in doc:
        shown = Counter(
            (r["block"], r["DIRECTION"], r["ACTION"], r["PEER"], r["PORTS"], r["GUIDE ROWS"])
            for r in sections["AWS"]
        )
        assert shown == _aws_expected(doc["aws"]["securityGroups"])
    if "gcp" in doc:
        shown = Counter(
            (
                # Long tags wrap mid-word: compare without the spaces wrapping joined in.
                re.sub(r"\(.*\)$", "", r["block"].replace(" ", "")).removeprefix("targets"),
                r["DIRECTION"],
                r["PRIORITY"],
                r["ACTION"],
                ",".join(sorted(r["PEER"].replace(" ", "").split(","))),
                r["GUIDE ROWS"],
            )
            for r in sections["GCP"]
        )
        assert shown == _gcp_expected(doc["gcp"]["firewalls"])
        assert any(r["PRIORITY"] == "65000" and r["ACTION"] == "deny" for r in sections["GCP"])
    if "kubernetes" in doc:
        shown = Counter(
            (
                r["block"].split(" (pods")[0],
                r["DIRECTION"],
                r["ACTION"],
                ",".join(
                    sorted(
                        p
                        for p in re.split(r",\s*", r["PEER"])
                        if re.fullmatch(r"[0-9a-f.:]+/\d+", p)
                    )
                ),
            )
            for r in sections["KUBERNETES"]
        )
        assert shown == _np_expected(doc["kubernetes"]["networkPolicies"])
        annotated = {
            p["metadata"]["name"]: set(
                p["metadata"]["annotations"]["hardening.circleci.com/guide-rows"].split(",")
            )
            for p in doc["kubernetes"]["networkPolicies"]
        }
        for row in sections["KUBERNETES"]:
            cited = set(row["GUIDE ROWS"].split(","))
            assert cited <= annotated[row["block"].split(" (pods")[0]], row


def test_a_network_policy_line_cites_the_rows_of_its_own_ports_only() -> None:
    """The v4 proxy serves 80/443 (LB-IN-1, LB-IN-2) and 4647 (LB-IN-4) from one policy."""
    sections = parse_table(run("plan", "-f", str(EXAMPLES / "aws-v4.yaml")).stdout)
    proxy = [r for r in sections["KUBERNETES"] if r["block"].startswith("svh-allow-circleci-proxy")]
    by_ports = {r["PORTS"]: set(r["GUIDE ROWS"].split(",")) for r in proxy}
    assert {"LB-IN-1", "LB-IN-2"} <= by_ports["tcp/80,443"]
    assert "LB-IN-4" not in by_ports["tcp/80,443"]
    assert "LB-IN-4" in by_ports["tcp/4647"]
    assert not {"LB-IN-1", "LB-IN-2"} & by_ports["tcp/4647"]


def test_security_group_peers_are_shown_as_group_ids_with_their_role() -> None:
    sections = parse_table(run("plan", "-f", str(EXAMPLES / "aws-v4.yaml")).stdout)
    lb_in_4 = next(r for r in sections["AWS"] if r["GUIDE ROWS"] == "LB-IN-4")
    assert lb_in_4["PEER"] == "sg-0a1b2c3d4e5f60002 (nomadClients)"
    assert lb_in_4["block"] == "sg-0a1b2c3d4e5f60004 (loadBalancers)"


def test_gcp_source_tags_are_shown_as_tags() -> None:
    sections = parse_table(run("plan", "-f", str(EXAMPLES / "gcp-v3.yaml")).stdout)
    vm_in_2 = next(r for r in sections["GCP"] if "VM-IN-2" in r["GUIDE ROWS"])
    assert vm_in_2["PEER"] == "tag:circleci-nomad"
    assert vm_in_2["block"] == "targets tag:circleci-vm (externalVMs)"


@pytest.mark.parametrize("name", SPECS)
def test_no_line_of_the_default_table_is_wider_than_120_columns(name: str, tmp_path: Path) -> None:
    result = run("plan", "-f", _spec_file(name, tmp_path))
    assert result.returncode == 0, result.stderr
    widest = max(result.stdout.splitlines(), key=len)
    assert len(widest) <= WIDTH, widest


def test_wide_output_adds_the_firewall_names_and_does_not_wrap() -> None:
    wide = run("plan", "-f", str(EXAMPLES / "gcp-v3.yaml"), "-o", "wide").stdout
    doc = json.loads(run("plan", "-f", str(EXAMPLES / "gcp-v3.yaml"), "-o", "json").stdout)
    for firewall in doc["gcp"]["firewalls"]:
        assert firewall["name"] in wide
    assert "FIREWALL" in wide
    assert "FIREWALL" not in run("plan", "-f", str(EXAMPLES / "gcp-v3.yaml")).stdout


def test_yaml_output_never_writes_an_owner_annotation_with_an_empty_uid() -> None:
    """Offline there is no UID (the API server assigns it): the annotation names the resource."""
    for name in example_names():
        out = run("plan", "-f", str(EXAMPLES / f"{name}.yaml"), "-o", "yaml").stdout
        for manifest in yaml.safe_load_all(out):
            owner = manifest["metadata"]["annotations"]["hardening.circleci.com/owner"]
            assert owner == "circleci-server/circleci", owner


def test_the_live_table_wraps_long_reasons_within_120_columns_and_shows_gcp_priorities() -> None:
    from server_hardening.plantable import live_lines

    reason = "not managed and widens access: " + ", ".join(f"10.{n}.0.0/16" for n in range(30))
    doc = {
        "targets": [
            {
                "name": "gcp",
                "error": "",
                "conflictWith": "",
                "actions": [
                    {"action": "keep", "id": "svh-f1a4950582-k8s-in-deny-all",
                     "rule": "svh-f1a4950582-k8s-in-deny-all", "reason": "managed and as desired",
                     "row": "CHOICE-GCP-INGRESS-FLOOR", "priority": 65000},
                    {"action": "leave", "id": "allow-everything-from-the-office",
                     "rule": "allow-everything-from-the-office", "reason": reason, "row": ""},
                ],
            }
        ],
        "findings": [{"severity": "warning", "code": "UnmanagedWidening", "message": reason}],
    }  # fmt: skip
    lines = live_lines(doc)
    assert max(len(line) for line in lines) <= WIDTH
    text = "".join(line.strip() for line in lines)
    for n in range(30):
        assert f"10.{n}.0.0/16" in text
    header = _columns(lines[0])
    assert [name for name, _ in header] == [
        "TARGET", "ACTION", "ID", "PRIORITY", "RULE", "ROW", "REASON"
    ]  # fmt: skip
    assert any(" 65000 " in line for line in lines)
    assert max(len(line) for line in live_lines(doc, wide=True)) > WIDTH
