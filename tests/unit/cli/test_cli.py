"""`hardening plan` and `hardening crd`, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from builders import EXAMPLES, example_names
from cli_run import run
from server_hardening.cli import main
from server_hardening.crd import crd_yaml

REPO = Path(__file__).resolve().parents[3]


def test_the_installed_entry_point_runs_plan_as_a_user_does() -> None:
    """The module entry point in a fresh interpreter, from a clean environment."""
    result = subprocess.run(
        [sys.executable, "-m", "server_hardening", "plan", "-f", "-", "-o", "json"],
        capture_output=True,
        text=True,
        input=(EXAMPLES / "kubernetes-only.yaml").read_text(),
        env={"PYTHONPATH": str(REPO / "operator"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["profile"] == "v4.3"


@pytest.mark.parametrize("name", example_names())
def test_plan_json_has_the_documented_shape(name: str) -> None:
    result = run("plan", "-f", str(EXAMPLES / f"{name}.yaml"), "-o", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    body = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    spec = body["spec"]
    expected_keys = (
        {"profile", "kubernetes", "findings"}
        | ({"aws"} if "aws" in spec else set())
        | ({"gcp"} if "gcp" in spec else set())
    )
    assert set(doc) == expected_keys
    assert doc["profile"] in {"v3", "v4.0", "v4.3"}
    for policy in doc["kubernetes"]["networkPolicies"]:
        assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    for group in doc.get("aws", {}).get("securityGroups", []):
        assert set(group) == {"groupId", "role", "ingress", "egress"}
        for permission in group["ingress"] + group["egress"]:
            assert permission["IpProtocol"] in {"tcp", "udp", "-1"}
            peers = (
                permission.get("IpRanges", [])
                + permission.get("Ipv6Ranges", [])
                + permission.get("UserIdGroupPairs", [])
            )
            assert peers and all("Description" in p and "[" in p["Description"] for p in peers)
    for firewall in doc.get("gcp", {}).get("firewalls", []):
        assert {"name", "network", "direction", "priority", "description"} <= set(firewall)
        assert len(firewall["name"]) <= 63
    for finding in doc["findings"]:
        assert {"severity", "code", "message"} <= set(finding)


def test_plan_table_names_targets_and_guide_rows() -> None:
    result = run("plan", "-f", str(EXAMPLES / "aws-v4.yaml"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ServerHardening circleci-server/circleci - guide profile v4.3"
    assert lines[2].startswith("KUBERNETES: NetworkPolicies")
    assert "GUIDE ROWS" in lines[3]
    aws = lines.index("AWS: security-group rules (security groups only allow)")
    assert any("NOMAD-IN-1" in line for line in lines[aws:])
    assert any(line.startswith("svh-default-deny") for line in lines[:aws])
    assert "FINDINGS" in result.stdout


def test_plan_yaml_prints_manifests_ready_for_kubectl() -> None:
    result = run("plan", "-f", str(EXAMPLES / "kubernetes-only.yaml"), "-o", "yaml")
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["metadata"]["name"] for d in docs] == [
        "svh-default-deny",
        "svh-allow-namespace",
        "svh-allow-frontend",  # pinned by podSelector in the example
    ]


def test_a_bad_file_names_the_field_exits_2_and_prints_nothing_to_stdout(tmp_path: Path) -> None:
    body = yaml.safe_load((EXAMPLES / "kubernetes-only.yaml").read_text())
    body["spec"]["topology"]["nomadClients"]["cidrs"] = [
        "10.1.0.0/16",
        "10.9.0.0/16",
        "10.0.0.300/24",
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(body))
    result = run("plan", "-f", str(bad), "-o", "json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert (
        f'{bad}: spec.topology.nomadClients.cidrs[2]: "10.0.0.300/24" is not a valid CIDR'
        in result.stderr
    )


@pytest.mark.parametrize(
    ("sources", "field"),
    [
        (["0.0.0.0/1", "128.0.0.0/1"], "spec.access.adminSSH.sources: "),
        (["192.0.2.0/24", "::0/0"], "spec.access.adminSSH.sources[1]: "),
        (["1.2.3.4/0"], "spec.access.adminSSH.sources[0]: "),
        (["::/1", "4000::/2", "8000::/1"], "spec.access.adminSSH.sources: "),
    ],
)
def test_plan_refuses_admin_ssh_from_the_world_in_any_spelling(
    tmp_path: Path, sources: list[str], field: str
) -> None:
    body = yaml.safe_load((EXAMPLES / "kubernetes-only.yaml").read_text())
    body["spec"]["access"] = {"adminSSH": {"enabled": True, "sources": sources}}
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(body))
    result = run("plan", "-f", str(path), "-o", "json")
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert f"{path}: {field}" in result.stderr
    assert "SSH to the" in result.stderr or "whole internet" in result.stderr


def test_plan_reads_stdin() -> None:
    result = run(
        "plan", "-f", "-", "-o", "json", stdin=(EXAMPLES / "kubernetes-only.yaml").read_text()
    )
    assert result.returncode == 0 and json.loads(result.stdout)["profile"] == "v4.3"


def test_a_file_without_a_resource_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("kind: ConfigMap\n")
    result = run("plan", "-f", str(empty))
    assert result.returncode == 2
    assert f"{empty}: no ServerHardening: document 1 is kind 'ConfigMap'" in result.stderr


def test_the_committed_crd_is_the_one_the_model_generates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["crd"]) == 0
    printed = capsys.readouterr().out
    committed = (REPO / "crds" / "serverhardening.yaml").read_text()
    assert printed == crd_yaml()
    assert committed == printed, (
        "crds/serverhardening.yaml is stale: run `hardening crd > crds/serverhardening.yaml`"
    )


def test_the_resource_reference_is_generated_from_the_model() -> None:
    import os

    from server_hardening.crd import reference_markdown

    doc = REPO / "docs" / "resource.md"
    if os.environ.get("UPDATE_DOCS") == "1":
        doc.write_text(reference_markdown())
    assert doc.read_text() == reference_markdown(), "docs/resource.md is stale: UPDATE_DOCS=1"
    assert "| `spec.topology.nomadClients.cidrs` (required) | []string |" in doc.read_text()


def test_a_file_of_two_resources_is_planned_one_at_a_time_by_name(tmp_path: Path) -> None:
    one = (EXAMPLES / "kubernetes-only.yaml").read_text()
    two = one.replace("name: circleci\n", "name: circleci-staging\n", 1)
    assert two != one
    both = tmp_path / "both.yaml"
    both.write_text(one + "\n---\n" + two)
    refused = run("plan", "-f", str(both), "-o", "json")
    assert refused.returncode == 2 and refused.stdout == ""
    assert (
        f"{both}: 2 ServerHardening resources (document 1: circleci, document 2: "
        "circleci-staging): plan one at a time with --name NAME" in refused.stderr
    )
    picked = run("plan", "-f", str(both), "-o", "json", "--name", "circleci-staging")
    assert picked.returncode == 0, picked.stderr
    assert (
        picked.stderr == f"{both} (document 2): ServerHardening circleci-server/circleci-staging\n"
    )
    missing = run("plan", "-f", str(both), "--name", "prod")
    assert missing.returncode == 2
    assert "no ServerHardening named 'prod' (the file has circleci, circleci-staging)" in (
        missing.stderr
    )


def test_a_list_on_stdin_names_the_item_it_planned() -> None:
    item = yaml.safe_load((EXAMPLES / "kubernetes-only.yaml").read_text())
    listed = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [item]})
    result = run("plan", "-f", "-", "-o", "json", stdin=listed)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("<stdin> (document 1, items[0]): ServerHardening ")
