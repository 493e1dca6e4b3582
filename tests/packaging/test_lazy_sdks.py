"""The cloud SDKs are imported only when a resource has a cloud target: a Kubernetes-only
operator never loads boto3 or google-cloud-compute (tens of MiB of modules)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import sys
from server_hardening import handlers, runner, service  # what `hardening run` loads
from server_hardening.compiler import compile_intent
from server_hardening.model import ResourceRef, parse_spec
from server_hardening.targets.factory import LiveTargets
from builders import spec_dict

spec = parse_spec(spec_dict())
assert spec.aws is None and spec.gcp is None
builders = LiveTargets(None).build(compile_intent(spec), ResourceRef("ns", "name", "uid"))
print(",".join(name for name, _ in builders))
print(",".join(m for m in ("boto3", "botocore", "google.cloud.compute_v1") if m in sys.modules))
"""


def test_a_kubernetes_only_operator_imports_no_cloud_sdk() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'tests'}"},
    ).stdout.splitlines()
    assert out[0] == "kubernetes"
    assert out[1:] == [""], f"imported: {out[1:]}"
