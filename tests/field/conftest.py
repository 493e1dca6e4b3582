"""The field tier: the product as deployed, on a real node on this machine (see tests/field/node.py
and docs/field.md). One node, one chart release and one pair of CircleCI-like namespaces serve
the whole session; the modules run in file order (chart, traffic, lifecycle, uninstall).

On a machine that cannot run it (not root, a missing command or kernel feature) the tier is
skipped with the failed check; under ``CI=true`` that is a failure instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from kubernetes import client

from field.node import HOST_ADDR, Node, preflight, running_node, wait_until

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "server-hardening"
RELEASE, RELEASE_NAMESPACE = "server-hardening", "server-hardening"
V3_NAMESPACE, V4_NAMESPACE, OTHER_NAMESPACE = "circleci-v3", "circleci-v4", "field-other"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
OPERATOR_SELECTOR = "app.kubernetes.io/name=server-hardening"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The session's first field test also builds what scripts/fieldprep did not (cold: many
    minutes), so the tier's tests get a longer timeout than the suite's."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.timeout(3600))


@dataclass
class FieldCluster:
    node: Node
    api: Any
    helm_env: dict[str, str]
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api)

    def helm(self, *args: str) -> str:
        proc = subprocess.run(
            [str(self.node.testbin.helm), *args], env=self.helm_env, capture_output=True,
            text=True, check=False, timeout=300,
        )  # fmt: skip
        if proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
        return proc.stdout

    def values(self, *, ha: bool = False) -> Path:
        port = urlparse(self.node.control_plane.url).port if self.node.control_plane else None
        values: dict[str, Any] = {
            "image": {"repository": "localhost/server-hardening", "tag": "field",
                      "pullPolicy": "Never"},
            "watchNamespaces": [V3_NAMESPACE, V4_NAMESPACE],
            # Narrowed to this control plane, as the chart's values advise.
            "networkPolicy": {"apiServer": {"cidrs": [f"{HOST_ADDR}/32"], "ports": [port]}},
        }  # fmt: skip
        if ha:
            values |= {"replicaCount": 2, "ha": {"enabled": True}}
        path = Path(self.helm_env["HOME"]) / ("values-ha.yaml" if ha else "values.yaml")
        path.write_text(yaml.safe_dump(values))
        return path

    def operator_pods(self) -> list[Any]:
        pods = self.core.list_namespaced_pod(RELEASE_NAMESPACE, label_selector=OPERATOR_SELECTOR)
        return [p for p in pods.items if p.metadata.deletion_timestamp is None]

    def ready_operator_pods(self) -> list[Any]:
        return [
            p
            for p in self.operator_pods()
            if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    def wait_rollout(self, replicas: int, timeout: float = 180) -> list[Any]:
        apps = client.AppsV1Api(self.api)

        def rolled_out() -> list[Any] | None:
            deployment = apps.read_namespaced_deployment(RELEASE, RELEASE_NAMESPACE)
            status = deployment.status
            done = (
                status.observed_generation == deployment.metadata.generation
                and status.updated_replicas == replicas
                and status.ready_replicas == replicas
                and (status.replicas or 0) == replicas
            )
            pods = self.ready_operator_pods()
            return pods if done and len(pods) == replicas else None

        return wait_until("the operator Deployment to roll out", rolled_out, timeout)


@pytest.fixture(scope="session")
def cluster() -> Iterator[FieldCluster]:
    problem = preflight()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the field tier must run under CI=true, but: {problem}")
        pytest.skip(f"field tier: {problem}")
    progress = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
    with running_node(progress) as node, tempfile.TemporaryDirectory() as home:
        api = node.api_client()
        env = {**os.environ, "HOME": home, "KUBECONFIG": str(node.control_plane.admin_kubeconfig)}  # type: ignore[union-attr]
        for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
            env[var] = str(Path(home) / var.lower())
        result = FieldCluster(node, api, env)
        result.figures.update(node.timings)
        yield result
        api.close()


@pytest.fixture(scope="session")
def release(cluster: FieldCluster) -> FieldCluster:
    """The chart installed (helm install --wait is not used: Ready is what the test checks)."""
    from field.workloads import ensure_namespace

    for ns in (V3_NAMESPACE, V4_NAMESPACE, OTHER_NAMESPACE):
        ensure_namespace(cluster.api, ns)
    ensure_namespace(cluster.api, RELEASE_NAMESPACE, RESTRICTED)
    started = time.monotonic()
    cluster.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
               "--values", str(cluster.values()))  # fmt: skip
    cluster.wait_rollout(1)
    cluster.figures["helm_install_to_ready_seconds"] = time.monotonic() - started
    return cluster
