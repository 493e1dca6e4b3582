"""The alerts: the real promtool checks and unit-tests them; the chart renders the same rules."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hardening_chart import (
    ALERTS_PLAIN,
    REPO,
    contract_series,
    one,
    plain_alerts_text,
    render_chart,
)

from server_hardening_dev.controlplane import TestBinaries

ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts_test.yaml"
OPERATIONS = REPO / "docs" / "operations.md"
ALERT_NAMES = (
    "ServerHardeningDriftPersists",
    "ServerHardeningReconcileErrors",
    "ServerHardeningDriftCheckStale",
    "ServerHardeningWorldOpenSensitivePort",
    "ServerHardeningSpecInvalid",
    "ServerHardeningComponentServiceMissing",
    "ServerHardeningGuideRowViolated",
    "ServerHardeningEventSourceDown",
    "ServerHardeningOperatorDown",
)
# Alerts about the operator or a source resources share, not about one resource: the
# resources on an event source say so in their EventsReceived condition.
NOT_PER_RESOURCE = {"ServerHardeningOperatorDown", "ServerHardeningEventSourceDown"}


def promtool(binaries: TestBinaries, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries.promtool), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )


def plain_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_PLAIN.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_rules_accepts_the_plain_file(test_binaries: TestBinaries) -> None:
    proc = promtool(test_binaries, "check", "rules", ALERTS_PLAIN)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in proc.stdout


def test_promtool_unit_tests_pass(test_binaries: TestBinaries) -> None:
    proc = promtool(test_binaries, "test", "rules", ALERTS_TEST)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_unit_tests_cover_every_alert_firing_and_silent() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert fired == set(ALERT_NAMES)
    assert silent == set(ALERT_NAMES)


def test_promtool_catches_a_wrong_expectation(test_binaries: TestBinaries, tmp_path: Path) -> None:
    """The unit tests really evaluate: a flipped expectation fails."""
    (tmp_path / "alerts.yaml").write_text(ALERTS_PLAIN.read_text())
    broken = ALERTS_TEST.read_text().replace("target: aws\n", "target: gcp\n", 1)
    (tmp_path / "alerts_test.yaml").write_text(broken)
    proc = promtool(test_binaries, "test", "rules", tmp_path / "alerts_test.yaml")
    assert proc.returncode != 0
    assert "ServerHardeningDriftPersists" in proc.stdout + proc.stderr


def test_plain_file_is_the_chart_rule_with_default_values(
    test_binaries: TestBinaries,
) -> None:
    assert ALERTS_PLAIN.read_text() == plain_alerts_text(), (
        "deploy/prometheus/alerts.yaml is stale: python tests/packaging/hardening_chart.py sync"
    )
    rule = one(render_chart({"prometheusRule": {"enabled": True}}), "PrometheusRule")
    chart_rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert [(r["alert"], r["expr"], r["for"]) for r in chart_rules] == [
        (r["alert"], r["expr"], r["for"]) for r in plain_rules()
    ]


def test_thresholds_come_from_values(test_binaries: TestBinaries, tmp_path: Path) -> None:
    values = {
        "prometheusRule": {"enabled": True},
        "alerts": {
            "runbookBaseUrl": "https://runbooks.example.com/hardening/",
            "jobRegex": "hardening",
            "driftPersists": {"for": "1h", "severity": "critical"},
            "reconcileErrors": {"window": "10m", "for": "30m"},
            "driftCheckStale": {"intervalMultiplier": 5, "for": "10m"},
            "worldOpenSensitivePort": {"for": "0m", "severity": "page"},
            "operatorDown": {"for": "15m"},
            "specInvalid": {"for": "30m", "severity": "critical"},
        },
    }
    rule = one(render_chart(values), "PrometheusRule")
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert rules["ServerHardeningDriftPersists"]["for"] == "1h"
    assert rules["ServerHardeningDriftPersists"]["labels"]["severity"] == "critical"
    assert "more than 1h" in rules["ServerHardeningDriftPersists"]["annotations"]["description"]
    assert "[10m]" in rules["ServerHardeningReconcileErrors"]["expr"]
    assert rules["ServerHardeningReconcileErrors"]["for"] == "30m"
    assert "5 * max by" in rules["ServerHardeningDriftCheckStale"]["expr"]
    assert rules["ServerHardeningWorldOpenSensitivePort"]["labels"]["severity"] == "page"
    assert 'job=~"hardening"' in rules["ServerHardeningOperatorDown"]["expr"]
    assert rules["ServerHardeningSpecInvalid"]["for"] == "30m"
    assert "more than 30m" in rules["ServerHardeningSpecInvalid"]["annotations"]["description"]
    assert rules["ServerHardeningOperatorDown"]["annotations"]["runbook_url"] == (
        "https://runbooks.example.com/hardening#serverhardeningoperatordown"
    )
    # The rendered rules with non-default values are still valid Prometheus rules.
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    proc = promtool(test_binaries, "check", "rules", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    rules = plain_rules()
    assert [r["alert"] for r in rules] == list(ALERT_NAMES)
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}
        if rule["alert"] not in NOT_PER_RESOURCE:
            for text in (annotations["summary"], annotations["description"]):
                assert "{{ $labels.namespace }}/{{ $labels.name }}" in text, rule["alert"]
                # A spec has no target; nor has a Service (it lives in the cluster).
                if rule["alert"] not in {
                    "ServerHardeningSpecInvalid",
                    "ServerHardeningComponentServiceMissing",
                }:
                    assert "{{ $labels.target }}" in text, rule["alert"]
        anchor = annotations["runbook_url"].split("#", 1)[1]
        assert anchor == rule["alert"].lower()


def _github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_runbook_anchor_exists_in_the_operations_guide() -> None:
    anchors = _github_anchors(OPERATIONS.read_text())
    for rule in plain_rules():
        url = rule["annotations"]["runbook_url"]
        assert url.split("#", 1)[0].endswith("docs/operations.md")
        assert url.split("#", 1)[1] in anchors, rule["alert"]


@pytest.mark.parametrize("name", ALERT_NAMES)
def test_alert_expressions_use_only_contract_series(name: str) -> None:
    rule = next(r for r in plain_rules() if r["alert"] == name)
    used = set(re.findall(r"\bserver_hardening_\w+", rule["expr"]))
    assert used <= contract_series(), used - contract_series()
    if name == "ServerHardeningDriftPersists":
        assert "server_hardening_drift" in used


def test_per_resource_alerts_keep_the_resource_namespace_and_name() -> None:
    """Grouping by (namespace, name) only means the resource's namespace if the scrape keeps
    the operator's labels: the ServiceMonitor honours them."""
    for rule in plain_rules():
        if rule["alert"] in NOT_PER_RESOURCE | {"ServerHardeningReconcileErrors"}:
            continue
        assert re.search(r"by \(namespace, name\b", rule["expr"]), rule["alert"]
    monitor = one(render_chart({"metrics": {"serviceMonitor": {"enabled": True}}}),
                  "ServiceMonitor")  # fmt: skip
    assert [e.get("honorLabels") for e in monitor["spec"]["endpoints"]] == [True]
