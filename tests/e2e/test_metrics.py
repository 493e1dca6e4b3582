"""The operator's real /metrics, scraped while it reconciles on the real kube-apiserver, passes
``promtool check metrics`` (Prometheus' own naming and type conventions)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    custom,
    operator_identity,
    resource,
    status_of,
    wait_for,
)
from server_hardening_dev.controlplane import TestBinaries

pytestmark = pytest.mark.e2e

NAMESPACES = [f"svh-metrics-{uuid.uuid4().hex[:6]}-{i}" for i in range(2)]


@pytest.fixture(scope="module")
def operator(control_plane: Any, admin_api: Any) -> Iterator[OperatorProcess]:
    kubeconfig, _ = operator_identity(control_plane, admin_api, NAMESPACES)
    proc = OperatorProcess(kubeconfig, NAMESPACES).start()
    yield proc
    proc.stop()


def test_promtool_check_metrics_passes_on_the_real_output(
    operator: OperatorProcess, admin_api: Any, test_binaries: TestBinaries, tmp_path: Path
) -> None:
    # Two resources with the same name in two namespaces; one of them Invalid (an unknown
    # server version), so every family the operator exports has samples.
    valid, invalid = NAMESPACES
    custom(admin_api).create_namespaced_custom_object(
        GROUP, VERSION, valid, PLURAL, resource(valid)
    )
    custom(admin_api).create_namespaced_custom_object(
        GROUP, VERSION, invalid, PLURAL,
        resource(invalid, access={"adminSSH": {"enabled": True, "sources": ["::/1", "8000::/2",
                                                                             "c000::/2"]}}),
    )  # fmt: skip
    wait_for("Enforced", lambda: status_of(admin_api, valid, "circleci").get("phase") == "Enforced")
    wait_for("Invalid", lambda: status_of(admin_api, invalid, "circleci").get("phase") == "Invalid")
    code, text = operator.http("/metrics")
    assert code == 200
    for family in (
        "server_hardening_drift",
        "server_hardening_resource_drift",
        "server_hardening_spec_valid",
        "server_hardening_reconciles_total",
        "server_hardening_reconcile_duration_seconds_bucket",
        "server_hardening_last_drift_check_timestamp_seconds",
        "server_hardening_watch_alive",
    ):
        assert f"\n{family}" in text, family
    assert "server_hardening_drift_total" not in text
    (tmp_path / "metrics.txt").write_text(text)
    checked = subprocess.run(
        [str(test_binaries.promtool), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stderr
    # Both resources keep their own namespace label (alerts group on it).
    assert f'server_hardening_spec_valid{{name="circleci",namespace="{invalid}"}} 0.0' in text
    assert f'server_hardening_spec_valid{{name="circleci",namespace="{valid}"}} 1.0' in text


def test_promtool_check_metrics_can_fail(test_binaries: TestBinaries) -> None:
    """The check really checks: the old gauge name is flagged."""
    old = "# HELP x_drift_total drift\n# TYPE x_drift_total gauge\nx_drift_total 1\n"
    checked = subprocess.run(
        [str(test_binaries.promtool), "check", "metrics"],
        input=old,
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode != 0
    assert "x_drift_total" in checked.stdout + checked.stderr
