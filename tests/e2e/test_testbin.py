"""scripts/testbin builds what is asked for, checking each binary on its own, and the demo prints
each of its build lines once."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

from server_hardening_dev.controlplane import TestBinaries
from server_hardening_dev.demo import Progress, _BuildLines

REPO = Path(__file__).resolve().parents[2]
TESTBIN = REPO / "scripts" / "testbin"


def run_testbin(*args: str, root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SERVER_HARDENING_TESTBIN": str(root)}
    return subprocess.run(
        ["bash", str(TESTBIN), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_the_control_plane_alone_is_ready_without_helm_or_promtool(
    control_plane_binaries: TestBinaries, tmp_path: Path
) -> None:
    # A cache holding only kube-apiserver and etcd, at the pinned versions.
    key = Path(run_testbin("--print-dir", root=tmp_path).stdout.strip()).name
    cache = tmp_path / key
    cache.mkdir()
    for name in ("kube-apiserver", "etcd"):
        (cache / name).symlink_to(control_plane_binaries.directory / name)

    done = run_testbin("kube-apiserver", "etcd", root=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(cache)
    assert "kube-apiserver etcd present" in done.stderr
    assert "building" not in done.stderr
    assert not (cache / "helm").exists() and not (cache / "promtool").exists()


def test_an_unknown_binary_is_refused(tmp_path: Path) -> None:
    refused = run_testbin("kubelet", root=tmp_path)
    assert refused.returncode == 2
    assert "unknown argument: kubelet" in refused.stderr


def test_each_build_line_is_printed_once_in_plain_output() -> None:
    out = io.StringIO()
    lines = _BuildLines(Progress(out, live=False))
    lines.write("testbin: [etcd] building .\ntestbin: [etcd] built")
    lines.write(" in 21s\n")
    assert out.getvalue().splitlines() == [
        "    build: testbin: [etcd] building .",
        "    build: testbin: [etcd] built in 21s",
    ]
