"""``hardening demo``, end to end, as a user runs it (non-interactive: ``--no-progress``).

Each run starts its own control plane, moto and operator, so the assertions are on what the demo
reports and on what it leaves behind: its exit code, the rows it prints (the unmanaged world-open
SSH rule, the drift repaired or only reported, the metric lines that changed), and after it exits
no process it started, no open port and no temporary directory. Nothing here asserts on timing.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from server_hardening_dev.controlplane import TestBinaries

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 600  # a bound on a hung run, not an expectation


@dataclass
class DemoRun:
    code: int
    out: str
    err: str

    def show(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err[-4000:]}"

    def pids(self) -> dict[str, int]:
        match = re.search(r"processes started: (.*?); moto ran in this process", self.out)
        assert match, self.show()
        return {k: int(v) for k, v in re.findall(r"([\w-]+) (\d+)", match.group(1))}

    def temp_dir(self) -> Path:
        match = re.search(r"temporary directory: (\S+)", self.out)
        assert match, self.show()
        return Path(match.group(1))

    def ports(self) -> list[int]:
        found = re.findall(r"(?:at https?|metrics: http)://127\.0\.0\.1:(\d+)", self.out)
        assert len(found) == 3, self.show()  # kube-apiserver, EC2 API, operator metrics
        return [int(p) for p in found]

    def metric_changes(self) -> dict[str, float]:
        """``series{labels}`` -> change, from the demo's before/after table."""
        rows = re.findall(
            r"^\s+(server_hardening_\w+\{[^}]*\})\s+\S+\s+\S+\s+([+-][\d.e+]+)$", self.out, re.M
        )
        return {series: float(change) for series, change in rows}

    def rows(self, pattern: str) -> list[str]:
        return [line for line in self.out.splitlines() if re.search(pattern, line)]


def run_demo(*args: str) -> DemoRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "operator"), os.environ.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-m", "server_hardening", "demo", "--no-progress", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    return DemoRun(proc.returncode, proc.stdout, proc.stderr)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that mention ``text`` (e.g. the demo's temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and _running(int(entry.name)):
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def assert_nothing_left_behind(run: DemoRun) -> None:
    assert "left behind: nothing" in run.out, run.show()
    pids = run.pids()
    assert set(pids) == {"etcd", "kube-apiserver", "operator"}, run.show()
    assert [name for name, pid in pids.items() if _running(pid)] == [], run.show()
    temp = run.temp_dir()
    assert not temp.exists(), run.show()
    assert _processes_mentioning(str(temp)) == []
    assert [p for p in run.ports() if _listening(p)] == [], run.show()


def assert_reports_the_seeded_state(run: DemoRun) -> None:
    # The world-open SSH rule seeded in nomadClients, shown as unmanaged and named as a finding.
    ssh = run.rows(r"nomadClients\s+sgr-\w+\s+ingress\s+tcp\s+22\s+0\.0\.0\.0/0\s+-\s+UNMANAGED")
    assert len(ssh) == 1, run.show()
    assert "world-open SSH" in ssh[0]
    assert run.rows(r"error\s+WorldOpenSensitivePort \[ALL-IN-1\]: sgr-\w+ .*\(nomadClients\)")
    # Every group's default allow-all egress rule is unmanaged too; the rest is managed.
    egress = run.rows(r"egress\s+all\s+all\s+0\.0\.0\.0/0\s+-\s+UNMANAGED \(default egress\)")
    assert len(egress) == 4, run.show()
    assert run.rows(r"nomadClients\s+sgr-\w+\s+ingress\s+tcp\s+4647\s+sg:kubernetesNodes"
                    r"\s+NOMAD-IN-1\s+managed$")  # fmt: skip
    for policy in ("svh-default-deny", "svh-allow-namespace", "svh-allow-circleci-proxy"):
        assert run.rows(rf"^\s+{policy}\s+"), run.show()
    assert run.rows(r"svh-allow-circleci-proxy\s+app=circleci-proxy\s+Ingress\s+8080,8443 from")


@pytest.fixture(scope="module")
def enforce_run(test_binaries: TestBinaries) -> DemoRun:
    return run_demo()


@pytest.fixture(scope="module")
def audit_run(test_binaries: TestBinaries) -> DemoRun:
    return run_demo("--mode", "Audit")


def test_the_demo_in_enforce_mode_repairs_the_drift_it_injects(enforce_run: DemoRun) -> None:
    run = enforce_run
    assert run.code == 0, run.show()
    assert "demo complete: every step did what it printed" in run.out
    assert "hardening demo:" not in run.err, run.show()  # no step failure reported
    assert_reports_the_seeded_state(run)
    # The drift: injected, then both the policy and the rule are back.
    assert run.rows(r"deleted NetworkPolicy svh-default-deny")
    assert run.rows(r"revoked security-group rule sgr-\w+ in nomadClients .*NOMAD-IN-1")
    assert run.rows(r"NetworkPolicy svh-default-deny: restored")
    assert run.rows(r"security-group rule: restored .* as sgr-\w+ \(was sgr-\w+\)")
    # Status lastDrift, events and metrics say so.
    assert run.rows(r"^\s+kubernetes\s+\S+Z\s+1\s+0\s+0\s+0\s+true$"), run.show()
    assert run.rows(r"^\s+aws\s+\S+Z\s+1\s+0\s+0\s+\d+\s+true$"), run.show()
    assert run.rows(r"Warning\s+DriftDetected\s+\d+\s+kubernetes: missing svh-default-deny")
    assert run.rows(r"Normal\s+Applied\s+\d+\s+kubernetes: created svh-default-deny")
    assert run.rows(r"Warning\s+DriftDetected\s+\d+\s+aws: missing sg-\w+ ingress tcp:4647")
    assert run.rows(r"Normal\s+Applied\s+\d+\s+aws: created sg-\w+ ingress tcp:4647")
    changes = run.metric_changes()
    for series in (
        'server_hardening_drift_detected_total{kind="missing",target="kubernetes"}',
        'server_hardening_drift_detected_total{kind="missing",target="aws"}',
        'server_hardening_writes_total{action="create",target="kubernetes"}',
        'server_hardening_writes_total{action="create",target="aws"}',
        'server_hardening_reconciles_total{result="repaired"}',
    ):
        assert changes.get(series, 0) >= 1, f"{series} did not grow\n{run.show()}"
    assert any(k.startswith("server_hardening_api_calls_total{") for k in changes), run.show()


def test_the_demo_in_enforce_mode_leaves_nothing_behind(enforce_run: DemoRun) -> None:
    assert enforce_run.code == 0, enforce_run.show()
    assert_nothing_left_behind(enforce_run)


def test_the_demo_in_audit_mode_reports_the_drift_and_leaves_it(audit_run: DemoRun) -> None:
    run = audit_run
    assert run.code == 0, run.show()
    assert "hardening demo:" not in run.err, run.show()
    assert_reports_the_seeded_state(run)
    assert run.rows(r"deleted NetworkPolicy svh-default-deny")
    assert run.rows(r"revoked security-group rule sgr-\w+ in nomadClients")
    assert run.rows(r"NetworkPolicy svh-default-deny still deleted, the security-group rule "
                    r"still revoked \(not repaired: Audit\)")  # fmt: skip
    assert not run.rows(r"restored after")
    assert run.rows(r"^\s+status\.phase: Drifted$")
    assert run.rows(r"^\s+kubernetes\s+\S+Z\s+1\s+0\s+0\s+0\s+false$"), run.show()
    assert run.rows(r"^\s+aws\s+\S+Z\s+1\s+0\s+0\s+\d+\s+false$"), run.show()
    assert run.rows(r"Warning\s+DriftDetected\s+\d+\s+kubernetes: missing svh-default-deny")
    assert run.rows(r"Warning\s+DriftDetected\s+\d+\s+aws: missing sg-\w+ ingress tcp:4647")
    assert not run.rows(r"\s+Applied\s+\d+\s+"), run.show()
    changes = run.metric_changes()
    assert changes.get('server_hardening_drift_detected_total{kind="missing",target="aws"}', 0) >= 1
    assert (
        changes.get('server_hardening_drift_detected_total{kind="missing",target="kubernetes"}', 0)
        >= 1
    )
    assert changes.get('server_hardening_reconciles_total{result="drift_reported"}', 0) >= 1
    assert not [k for k in changes if k.startswith("server_hardening_writes_total")], run.show()


def test_the_demo_in_audit_mode_leaves_nothing_behind(audit_run: DemoRun) -> None:
    assert audit_run.code == 0, audit_run.show()
    assert_nothing_left_behind(audit_run)


def test_without_moto_the_demo_names_the_step_and_the_install_command(
    test_binaries: TestBinaries, tmp_path: Path
) -> None:
    # moto is a development dependency; hide it the way a runtime-only install lacks it.
    (tmp_path / "moto.py").write_text("raise ImportError('No module named moto')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO / "operator")])
    proc = subprocess.run(
        [sys.executable, "-m", "server_hardening", "demo", "--no-progress"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "step 1 (start the control plane and the EC2 API): moto is not installed" in proc.stderr
    assert "pip install -e ./dev" in proc.stderr
    assert "left behind: nothing" in proc.stdout
    assert "processes started: none" in proc.stdout
