"""A spec with a cloud target on a cluster without that cloud's credentials, against the real
kube-apiserver: the GCP target's error is the resource's status (phase Error, Ready=False
TargetError, the target's lastError) and an Event naming what to configure, within seconds;
the NetworkPolicies are still enforced and reported; a restarted operator is Ready."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.harness import (
    KUBERNETES_ONLY,
    OperatorProcess,
    create,
    network_policies,
    operator_identity,
    resource,
    status_of,
    target_status,
    wait_for,
    wait_for_event,
)

pytestmark = pytest.mark.e2e

NAMESPACE = f"svh-nocreds-{uuid.uuid4().hex[:6]}"
NAME = "circleci"
GCP = {
    "project": "circleci-e2e",
    "network": "circleci",
    "targetTags": {
        "kubernetesNodes": "circleci-k8s",
        "nomadClients": "circleci-nomad",
        "externalVMs": "circleci-vm",
    },
}


def no_cloud_credentials(home: Path) -> dict[str, str]:
    """An operator environment with no GCP credentials anywhere Application Default Credentials
    look: no key file, no gcloud configuration, no metadata server (as off GCE)."""
    return {
        "GOOGLE_APPLICATION_CREDENTIALS": "",
        "CLOUDSDK_CONFIG": str(home / "gcloud"),
        "HOME": str(home),
        "NO_GCE_CHECK": "true",
    }


@pytest.fixture(scope="module")
def operator(
    control_plane: Any, admin_api: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    kubeconfig, _ = operator_identity(control_plane, admin_api, [NAMESPACE])
    env = no_cloud_credentials(tmp_path_factory.mktemp("home"))
    proc = OperatorProcess(kubeconfig, [NAMESPACE], env=env).start()
    yield proc
    proc.stop()


def test_missing_gcp_credentials_are_a_status_and_an_event_and_a_restart_is_ready(
    operator: OperatorProcess, admin_api: Any
) -> None:
    client.CoreV1Api(admin_api).create_namespaced_service(
        NAMESPACE,
        {
            "metadata": {"name": "circleci-proxy"},
            "spec": {
                "selector": {"app": "circleci-proxy"},
                "ports": [{"name": "https", "port": 443, "targetPort": 8443}],
            },
        },
    )
    started = time.monotonic()
    topology = {**KUBERNETES_ONLY, "kubernetesPods": {"cidrs": ["10.4.0.0/14"]}}
    create(admin_api, resource(NAMESPACE, NAME, topology=topology, gcp=GCP))
    status = wait_for(
        "phase Error", lambda: (s := status_of(admin_api, NAMESPACE, NAME)).get("phase") == "Error"
        and s,
    )  # fmt: skip
    took = time.monotonic() - started
    gcp = target_status(admin_api, NAMESPACE, NAME, "gcp")
    assert "no GCP credentials for project circleci-e2e" in gcp["lastError"]
    assert "GOOGLE_APPLICATION_CREDENTIALS" in gcp["lastError"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "TargetError")
    assert "gcp: no GCP credentials" in ready["message"]
    # The other target is enforced and reported meanwhile.
    kube = target_status(admin_api, NAMESPACE, NAME, "kubernetes")
    assert kube["lastError"] == "" and kube["managedRules"] > 0
    assert len(network_policies(admin_api, NAMESPACE)) == kube["managedRules"]
    wait_for_event(
        admin_api, NAMESPACE, NAME, "the TargetError event",
        lambda e: e.reason == "TargetError" and "gcp: no GCP credentials" in e.message,
    )  # fmt: skip
    print(f"status with the credentials error {took:.1f} s after create")

    # A restarted operator catches up: the reconcile completes (with the target's error), so
    # /readyz answers 200 (start() waits for it).
    operator.kill()
    restarted = time.monotonic()
    operator.start()
    print(f"restarted operator Ready after {time.monotonic() - restarted:.1f} s")
    assert operator.http("/readyz")[0] == 200
