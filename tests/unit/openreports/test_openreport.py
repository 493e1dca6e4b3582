"""A reconcile Report as an OpenReports Report: every finding, mapped field by field."""

from __future__ import annotations

import datetime as dt

from server_hardening.drift import DriftCounts
from server_hardening.model import ResourceRef
from server_hardening.openreports import API_VERSION, KIND, to_openreport
from server_hardening.reconcile import MAX_FINDINGS, Report, TargetReport
from server_hardening.rules import Finding, Severity

NOW = dt.datetime(2026, 11, 29, 12, 0, 0, 250000, tzinfo=dt.UTC)
REF = ResourceRef(namespace="circleci", name="server", uid="0a1b-uid")


def report(*targets: TargetReport, findings: list[Finding] | None = None) -> Report:
    return Report(
        ref=REF,
        generation=3,
        mode="Enforce",
        phase="Drifted",
        reason="UnmanagedWidening",
        message="",
        checked_at=NOW,
        targets=list(targets),
        findings=findings or [],
    )


WORLD_SSH = Finding(
    Severity.ERROR,
    "WorldOpenSensitivePort",
    "sgr-0123456789abcdef0 in sg-0aaaaaaaaaaaaaaaa (nomadClients) opens 22 to the world",
    row="NOMAD-IN-2",
    target="aws",
)


def test_it_is_an_openreports_report_owned_by_the_resource() -> None:
    body = to_openreport(report())
    assert (body["apiVersion"], body["kind"]) == (API_VERSION, KIND)
    assert API_VERSION == "openreports.io/v1alpha1"
    assert body["metadata"]["namespace"] == "circleci"
    assert body["metadata"]["name"] == "server"
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "hardening.circleci.com/v1alpha1", "kind": "ServerHardening",
         "name": "server", "uid": "0a1b-uid", "controller": True}
    ]  # fmt: skip
    assert body["scope"]["kind"] == "ServerHardening"
    assert body["source"] == "server-hardening"


def test_a_finding_maps_row_to_policy_code_to_rule_and_names_its_cloud_ids() -> None:
    aws = TargetReport(name="aws", observed=True, findings=[WORLD_SSH],
                       drift=DriftCounts(unmanaged_widening=1))  # fmt: skip
    (result,) = to_openreport(report(aws))["results"]
    assert result["policy"] == "NOMAD-IN-2"
    assert result["rule"] == "WorldOpenSensitivePort"
    assert result["result"] == "fail"
    assert result["severity"] == "critical"
    assert result["category"] == "aws"
    assert result["message"] == WORLD_SSH.message
    assert result["timestamp"] == {"seconds": int(NOW.timestamp()), "nanos": 250000000}
    props = result["properties"]
    assert props["awsIds"] == "sg-0aaaaaaaaaaaaaaaa,sgr-0123456789abcdef0"
    assert props["guideRow"] == "NOMAD-IN-2"
    assert props["target"] == "aws"
    assert props["generation"] == "3"
    assert all(isinstance(v, str) for v in props.values())


def test_every_finding_is_a_result_with_no_cap() -> None:
    many = [
        Finding(Severity.WARNING, "Missing", f"svh-policy-{i} is desired and absent",
                row="K8S-IN-1", target="kubernetes", objects=(f"svh-policy-{i}",))
        for i in range(MAX_FINDINGS * 3)
    ]  # fmt: skip
    k8s = TargetReport(name="kubernetes", observed=True, findings=many,
                       drift=DriftCounts(missing=len(many)))  # fmt: skip
    body = to_openreport(report(k8s))
    assert len(body["results"]) == MAX_FINDINGS * 3
    assert body["summary"] == {"pass": 0, "fail": MAX_FINDINGS * 3, "warn": 0, "error": 0,
                               "skip": 0}  # fmt: skip
    first = body["results"][0]
    assert first["properties"]["objects"] == "svh-policy-0"
    assert {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "namespace": "circleci", "name": "svh-policy-0"} in first["resources"]  # fmt: skip


def test_a_failing_target_is_an_error_and_a_clean_one_a_pass() -> None:
    broken = TargetReport(name="gcp", last_error="403 Forbidden on compute.firewalls.list")
    clean = TargetReport(name="kubernetes", observed=True, managed_rules=3)
    body = to_openreport(report(broken, clean))
    by_rule = {r["rule"]: r for r in body["results"]}
    assert by_rule["TargetError"]["result"] == "error"
    assert "403 Forbidden" in by_rule["TargetError"]["message"]
    assert by_rule["InSync"]["result"] == "pass"
    assert by_rule["InSync"]["properties"]["managedRules"] == "3"
    assert body["summary"]["error"] == 1
    assert body["summary"]["pass"] == 1


def test_notes_are_warnings_and_spec_findings_have_no_target() -> None:
    note = Finding(Severity.INFO, "AdminSSHEnabled", "ALL-IN-1 is enabled", row="ALL-IN-1")
    (result,) = to_openreport(report(findings=[note]))["results"]
    assert (result["result"], result["severity"], result["category"]) == ("warn", "info", "spec")
    assert result["policy"] == "ALL-IN-1"


def test_a_finding_without_a_guide_row_has_the_general_policy() -> None:
    conflict = Finding(Severity.ERROR, "Conflict", "aws: managed by other/x", target="aws")
    aws = TargetReport(name="aws", observed=True, findings=[conflict])
    (result,) = to_openreport(report(aws))["results"]
    assert result["policy"] == "ServerHardening"
    assert result["severity"] == "high"
    assert "guideRow" not in result["properties"]


def test_an_offline_report_without_a_uid_has_no_owner_reference() -> None:
    offline = ResourceRef(namespace="circleci", name="server", uid="")
    body = to_openreport(report(), offline)
    assert "ownerReferences" not in body["metadata"]


def test_drift_found_by_the_planner_names_its_objects_in_the_report() -> None:
    from server_hardening.drift import DesiredItem, ObservedItem, compute_plan

    plan = compute_plan(
        "kubernetes",
        [DesiredItem("svh-default-deny", "a", {}, ("CHOICE-NP-DEFAULT-DENY",))],
        [ObservedItem("svh-old", "x", {}, owned=True, native_id="svh-old")],
        judge_unmanaged=lambda item: None,
        remove_unmanaged=False,
    )
    k8s = TargetReport(name="kubernetes", observed=True, findings=list(plan.findings),
                       drift=plan.drift())  # fmt: skip
    by_rule = {r["rule"]: r for r in to_openreport(report(k8s))["results"]}
    assert by_rule["Missing"]["properties"]["objects"] == "svh-default-deny"
    assert by_rule["Missing"]["policy"] == "CHOICE-NP-DEFAULT-DENY"
    assert by_rule["Unexpected"]["resources"][-1]["name"] == "svh-old"
