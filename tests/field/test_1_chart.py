"""``helm install`` of the chart into a namespace that enforces the ``restricted`` Pod Security
Standard, on the real node: the operator pod (the project's image, uid 65532 without a passwd
entry) becomes Ready through the chart's probes, reaches the API server through the
``kubernetes`` Service under its own NetworkPolicy, and ``helm upgrade`` rolls it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from field.conftest import RELEASE, RELEASE_NAMESPACE, FieldCluster
from field.node import KUBERNETES_SERVICE_IP, STATE_ROOT, wait_until


def container_log(pod: Any) -> str:
    logs = STATE_ROOT / "pod-logs" / f"{RELEASE_NAMESPACE}_{pod.metadata.name}_{pod.metadata.uid}"
    return "\n".join(p.read_text(errors="replace") for p in sorted(logs.glob("operator/*.log")))


def test_the_release_namespace_really_enforces_restricted(release: FieldCluster) -> None:
    privileged = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "privileged-probe"},
        "spec": {"containers": [{"name": "c", "image": "docker.io/library/python:3.11.14-slim-bookworm",
                                 "securityContext": {"privileged": True}}]},
    }  # fmt: skip
    with pytest.raises(ApiException) as refused:
        release.core.create_namespaced_pod(RELEASE_NAMESPACE, privileged)
    assert refused.value.status == 403
    assert "violates PodSecurity" in refused.value.body
    assert "restricted:latest" in refused.value.body


def test_the_chart_pod_is_ready_as_deployed(release: FieldCluster) -> None:
    [pod] = release.ready_operator_pods()
    [status] = pod.status.container_statuses
    assert status.ready and status.restart_count == 0
    assert pod.spec.security_context.run_as_user == 65532
    assert pod.spec.containers[0].image == "localhost/server-hardening:field"
    # It found the API server as any pod does: the kubernetes Service's ClusterIP.
    service = release.core.read_namespaced_service("kubernetes", "default")
    assert service.spec.cluster_ip == KUBERNETES_SERVICE_IP
    log = container_log(pod)
    assert f"identity {pod.metadata.name}" in log  # kopf's, and the Lease candidate's prefix
    assert "getpwuid" not in log
    policy = client.NetworkingV1Api(release.api).read_namespaced_network_policy(
        RELEASE, RELEASE_NAMESPACE
    )
    assert policy.spec.policy_types == ["Ingress", "Egress"]


def test_helm_upgrade_rolls_the_pod(release: FieldCluster) -> None:
    [before] = release.ready_operator_pods()
    release.helm("upgrade", RELEASE, str(Path(__file__).resolve().parents[2] / "helm" / "server-hardening"),
                 "--namespace", RELEASE_NAMESPACE, "--values", str(release.values()),
                 "--set-string", f"podAnnotations.rolled-at={time.time_ns()}")  # fmt: skip
    wait_until(
        "the old pod to go",
        lambda: all(p.metadata.name != before.metadata.name for p in release.operator_pods()),
        120,
    )
    [after] = release.wait_rollout(1)
    assert after.metadata.name != before.metadata.name
    assert "rolled-at" in (after.metadata.annotations or {})
