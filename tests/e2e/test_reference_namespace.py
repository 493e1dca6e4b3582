"""The CircleCI Server 4.x namespace and CircleCI's monitoring reference on the real API server
(tests/reference/namespace.py): the install's Services and a team's hand-made scrape policy are
created, the operator's pipeline applies with unmanagedRules Report and Remove, and every flow
passes the NetworkPolicies the namespace then holds (np_eval over what the API server returns),
while the monitoring opening stays the scraper's and its ports'."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest
import yaml
from kubernetes import client

from cli_run import run
from reference import namespace as fixture
from reference.flows import Flow
from server_hardening.model import ResourceRef, parse_spec
from server_hardening.reconcile import reconcile
from server_hardening.rules import FindingCode
from server_hardening.targets.factory import LiveTargets
from server_hardening.targets.kubeapi import KubeApi
from server_hardening.targets.kubeconfig import load_credentials
from truth import np_eval

pytestmark = pytest.mark.e2e

HAND_MADE = "allow-prometheus"


def _spec(unmanaged: str) -> dict[str, Any]:
    return {
        "serverVersion": "4.10",
        "topology": {
            "kubernetesNodes": {"cidrs": ["10.10.0.0/20"]},
            "kubernetesPods": {"cidrs": ["10.8.0.0/14"]},
            "nomadClients": {"cidrs": ["10.20.0.0/20"]},
            "externalVMs": {"enabled": False},
        },
        "kubernetes": {
            "networkPolicies": {"restrictEgress": True},
            "apiServer": {"cidrs": ["172.16.0.2/32"]},
            "monitoring": fixture.MONITORING_SPEC,
        },
        "unmanagedRules": unmanaged,
    }


def _install(api: Any, namespace: str) -> None:
    core = client.CoreV1Api(api)
    for service in fixture.services():
        body = copy.deepcopy(service)
        body["metadata"]["namespace"] = namespace
        core.create_namespaced_service(namespace, body)
    client.NetworkingV1Api(api).create_namespaced_network_policy(
        namespace,
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": HAND_MADE},
            "spec": {
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "telegraf"}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 9273}]}],
            },
        },
    )


def _held(api: Any, namespace: str) -> list[dict[str, Any]]:
    items = client.NetworkingV1Api(api).list_namespaced_network_policy(namespace).items
    return [api.sanitize_for_serialization(p) for p in items]


def _parties(namespace: str) -> dict[str, np_eval.Party]:
    out: dict[str, np_eval.Party] = dict(fixture.OUTSIDE)
    for name, pod in fixture.pods().items():
        moved = pod.namespace == fixture.NAMESPACE
        out[name] = dataclasses.replace(pod, namespace=namespace) if moved else pod
    return out


def _allowed(policies: list[dict[str, Any]], parties: dict[str, Any], flow: Flow) -> bool:
    return np_eval.allows(
        policies, parties[flow.source], parties[flow.destination], flow.port, flow.protocol.upper()
    )


@pytest.mark.parametrize("unmanaged", ["Report", "Remove"])
def test_after_apply_every_flow_of_the_namespace_and_the_monitoring_reference_passes(
    control_plane: Any, admin_api: Any, namespace: str, unmanaged: str
) -> None:
    _install(admin_api, namespace)
    kube = KubeApi(load_credentials(str(control_plane.admin_kubeconfig)))
    ref = ResourceRef(namespace, "circleci", "uid-reference")

    report = reconcile(ref, parse_spec(_spec(unmanaged)), LiveTargets(kube))

    (target,) = report.targets
    assert target.error is None and target.applied is not None, target.last_error
    held = _held(admin_api, namespace)
    names = {p["metadata"]["name"] for p in held}
    assert {"svh-default-deny", "svh-allow-circleci-proxy", "svh-allow-monitoring"} <= names
    parties = _parties(namespace)
    blocked = [str(f) for f in fixture.flows() if not _allowed(held, parties, f)]
    assert blocked == []
    widening = [f for f in target.findings if f.code is FindingCode.UNMANAGED_WIDENING]
    if unmanaged == "Report":
        # The team's policy opens telegraf to every namespace: reported, kept.
        assert HAND_MADE in names and any(HAND_MADE in f.message for f in widening)
        assert _allowed(held, parties, fixture.CLOSED[0])
    else:
        # Removed: the monitoring field alone carries the scrape, and nothing wider.
        assert HAND_MADE not in names
        opened = [str(f) for f in fixture.CLOSED if _allowed(held, parties, f)]
        assert opened == []


def _create_pods(api: Any, namespace: str) -> None:
    """The namespace's pods as the API server holds them (no node runs them here: they stay
    Pending, with their labels and declared ports, which is what NetworkPolicies select on)."""
    core = client.CoreV1Api(api)
    declared = {"telegraf": [{"containerPort": 9273}], "kong": [{"containerPort": 8100}]}
    for name, pod in fixture.pods().items():
        if pod.namespace != fixture.NAMESPACE:
            continue
        ports = [{"name": n, "containerPort": p} for n, p in pod.ports.items()]
        ports = [*ports, *[p for p in declared.get(name, []) if p not in ports]]
        core.create_namespaced_pod(
            namespace,
            {
                "metadata": {"name": name, "labels": dict(pod.labels)},
                "spec": {"containers": [{"name": "main", "image": "stand-in", "ports": ports}]},
            },
        )


@pytest.mark.parametrize("unmanaged", ["Report", "Remove"])
def test_verify_answers_the_kubernetes_rows_on_the_namespace_pods_and_every_policy(
    control_plane: Any, admin_api: Any, namespace: str, unmanaged: str, tmp_path: Any
) -> None:
    _install(admin_api, namespace)
    _create_pods(admin_api, namespace)
    kube = KubeApi(load_credentials(str(control_plane.admin_kubeconfig)))
    ref = ResourceRef(namespace, "circleci", "uid-reference")
    reconcile(ref, parse_spec(_spec(unmanaged)), LiveTargets(kube))
    manifest = tmp_path / "circleci.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "hardening.circleci.com/v1alpha1",
                "kind": "ServerHardening",
                "metadata": {"name": "circleci", "namespace": namespace},
                "spec": _spec(unmanaged),
            }
        )
    )

    done = run(
        "verify",
        "-f",
        str(manifest),
        "-o",
        "json",
        "--kubeconfig",
        str(control_plane.admin_kubeconfig),
    )

    document = json.loads(done.stdout)
    verdicts = {r["row"]: r["verdict"] for r in document["rows"] if r["target"] == "kubernetes"}
    assert {"LB-IN-2", "LB-IN-4", "CHOICE-NP-DEFAULT-DENY", "ALL-OUT-3"} <= set(verdicts)
    checked = {m for r in document["rows"] for c in r["checks"] for m in c["machines"]}
    assert any("telegraf" in m for m in checked) and any("kong" in m for m in checked)
    if unmanaged == "Remove":
        assert set(verdicts.values()) == {"holds"}, verdicts
        assert done.returncode == 0, done.stdout
    else:
        # The team's policy opens telegraf's 9273 to every namespace: the default deny is
        # violated there, with the pod, the port and the policy as evidence; the rest holds.
        assert done.returncode == 3, done.stderr
        assert verdicts.pop("CHOICE-NP-DEFAULT-DENY") == "violated"
        assert set(verdicts.values()) == {"holds"}, verdicts
        deny = next(r for r in document["rows"] if r["row"] == "CHOICE-NP-DEFAULT-DENY")
        violated = [c for c in deny["checks"] if c["verdict"] == "violated"]
        assert [c["from"] for c in violated] == ["a pod of another namespace"]
        assert any("telegraf:9273" in m for m in violated[0]["machines"])
        assert violated[0]["decidedBy"] == [f"NetworkPolicy {HAND_MADE} (not managed)"]
