"""The operator's own Kubernetes client against the real kube-apiserver, authenticated the ways a
platform engineer's kubeconfig does it beyond the other e2e tests' token and client-certificate
files: an exec credential plugin (as ``aws eks get-token`` or ``gke-gcloud-auth-plugin`` are),
used by both kopf's watches (through the login handler) and the operator's calls."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.harness import (
    OperatorProcess,
    create,
    network_policies,
    operator_identity,
    resource,
    status_of,
    wait_for,
)

pytestmark = [pytest.mark.e2e]


def exec_kubeconfig(token_kubeconfig: Path, directory: Path) -> tuple[Path, Path]:
    """The same cluster and ServiceAccount, with the token handed out by an exec plugin that
    logs each run. Returns the kubeconfig and the plugin's run log."""
    config = yaml.safe_load(token_kubeconfig.read_text())
    (user,) = config["users"]
    token = user["user"].pop("token")
    runs = directory / "plugin-runs"
    plugin = directory / "token-plugin"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token},
    }
    plugin.write_text(f"#!/bin/sh\necho run >> {runs}\necho '{json.dumps(credential)}'\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    user["user"]["exec"] = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": str(plugin),
        "interactiveMode": "Never",
    }
    path = directory / "exec-kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path, runs


def test_an_operator_whose_kubeconfig_uses_an_exec_plugin_watches_and_writes(
    control_plane: Any, admin_api: Any, namespace: str, tmp_path: Path
) -> None:
    token_kubeconfig, _ = operator_identity(control_plane, admin_api, [namespace])
    # A Service to read: the proxy's allow takes its pods and ports from it.
    proxy = {
        "metadata": {"name": "circleci-proxy"},
        "spec": {
            "selector": {"app": "circleci-proxy"},
            "ports": [{"name": "https", "port": 443, "targetPort": 8443}],
        },
    }
    client.CoreV1Api(admin_api).create_namespaced_service(namespace, proxy)
    kubeconfig, runs = exec_kubeconfig(token_kubeconfig, tmp_path)
    operator = OperatorProcess(kubeconfig, [namespace])
    try:
        operator.start()
        create(admin_api, resource(namespace))  # seen only through kopf's watch
        wait_for(
            "Enforced through the plugin's credentials",
            lambda: status_of(admin_api, namespace, "circleci").get("phase") == "Enforced",
        )
    finally:
        operator.stop()
    policies = network_policies(admin_api, namespace)
    assert set(policies) == {"svh-default-deny", "svh-allow-namespace", "svh-allow-circleci-proxy"}
    allow_proxy = policies["svh-allow-circleci-proxy"].spec
    assert allow_proxy.pod_selector.match_labels == {"app": "circleci-proxy"}
    assert [str(p.port) for rule in allow_proxy.ingress for p in rule.ports] == ["8443"]
    # The plugin ran (once for the operator's client, once for kopf's login) and its
    # credential, which states no expiry, was not asked for again at every call.
    assert 1 <= len(runs.read_text().splitlines()) <= 2


def test_plan_live_reads_the_cluster_with_a_client_certificate_kubeconfig(
    control_plane: Any, admin_api: Any, namespace: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """``hardening plan --live`` as an administrator runs it from a laptop: the admin
    kubeconfig holds a client certificate and the CA as data. It reads; it writes nothing."""
    from server_hardening.cli import main

    body = resource(namespace)
    path = tmp_path / "hardening.yaml"
    path.write_text(yaml.safe_dump(body))
    kubeconfig = str(control_plane.admin_kubeconfig)
    assert main(["plan", "--live", "-f", str(path), "--kubeconfig", kubeconfig, "-o", "json"]) == 0
    (kube,) = json.loads(capsys.readouterr().out)["targets"]
    assert kube["name"] == "kubernetes" and not kube["error"]
    created = {a["id"] for a in kube["actions"] if a["action"] == "create"}
    assert {"svh-default-deny", "svh-allow-namespace"} <= created
    assert network_policies(admin_api, namespace) == {}  # a plan writes nothing
