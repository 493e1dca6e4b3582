"""Brownfield in the cluster, against the real kube-apiserver with the chart's RBAC: identical
hand-made policies are adopted, an Orphan then re-create converges, a declared exception keeps a
team's policy out of drift until it expires, and a component whose Service vanishes keeps its
last allow (never a silent outage), loudly."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.harness import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    custom,
    network_policies,
    operator_identity,
    status_of,
    wait_for,
    wait_for_event,
)
from e2e.test_operator import EXPECTED, NAME, create, phase_is, resource

pytestmark = pytest.mark.e2e

POOL = [f"svh-brown-{uuid.uuid4().hex[:6]}-{i}" for i in range(8)]
PROXY = {
    "metadata": {"name": "circleci-proxy", "labels": {"app": "circleci-proxy"}},
    "spec": {
        "selector": {"app": "circleci-proxy"},
        "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "https", "port": 443, "targetPort": 8443},
            {"name": "nomad", "port": 4647, "targetPort": 4647},
        ],
    },
}
SCRAPE = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-prometheus-scrape"},
    "spec": {
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
                ],
                "ports": [{"protocol": "TCP", "port": 9090}],
            }
        ],
    },
}


@pytest.fixture(scope="module")
def operator(control_plane: Any, admin_api: Any) -> Iterator[OperatorProcess]:
    kubeconfig, _ = operator_identity(control_plane, admin_api, POOL)
    proc = OperatorProcess(kubeconfig, POOL).start()
    yield proc
    proc.stop()


@pytest.fixture
def ns(admin_api: Any) -> str:
    name = POOL.pop()
    client.CoreV1Api(admin_api).create_namespaced_service(name, PROXY)
    return name


def _gone(admin_api: Any, ns: str) -> bool:
    try:
        custom(admin_api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)
    except ApiException as exc:
        return exc.status == 404
    return False


def _uids(admin_api: Any, ns: str) -> dict[str, str]:
    return {n: p.metadata.uid for n, p in network_policies(admin_api, ns).items()}


def test_an_identical_hand_made_policy_is_adopted_not_recreated(
    operator: OperatorProcess, admin_api: Any, ns: str
) -> None:
    net = client.NetworkingV1Api(admin_api)
    by_hand = {
        "metadata": {"name": "svh-default-deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    uid = net.create_namespaced_network_policy(ns, by_hand).metadata.uid

    create(admin_api, resource(ns))
    wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))

    policy = network_policies(admin_api, ns)["svh-default-deny"]
    assert policy.metadata.uid == uid  # the same object: adopted, not deleted and re-created
    assert policy.metadata.annotations["hardening.circleci.com/owner"].startswith(f"{ns}/{NAME}/")
    assert set(network_policies(admin_api, ns)) == EXPECTED
    wait_for_event(
        admin_api, ns, NAME, "the adoption's Applied event",
        lambda e: e.reason == "Applied" and "adopted svh-default-deny (marks only)" in e.message,
    )  # fmt: skip


def test_orphan_then_recreate_converges_without_manual_steps(
    operator: OperatorProcess, admin_api: Any, ns: str
) -> None:
    create(admin_api, resource(ns, deletionPolicy="Orphan"))
    wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    before = _uids(admin_api, ns)
    custom(admin_api).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)
    wait_for("the resource to be gone", lambda: _gone(admin_api, ns))
    assert _uids(admin_api, ns) == before  # orphaned: left in place, unmarked

    create(admin_api, resource(ns))
    status = wait_for("Enforced again", phase_is(admin_api, ns, "Enforced"))

    assert _uids(admin_api, ns) == before  # taken back in place: no 409, no window
    assert not status["targets"][0]["lastError"]
    for policy in network_policies(admin_api, ns).values():
        assert policy.metadata.annotations["hardening.circleci.com/owner"].startswith(f"{ns}/")


def test_a_declared_exception_keeps_a_scrape_policy_out_of_drift_until_it_expires(
    operator: OperatorProcess, admin_api: Any, ns: str
) -> None:
    client.NetworkingV1Api(admin_api).create_namespaced_network_policy(ns, SCRAPE)
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=25)).strftime("%Y-%m-%dT%H:%M:%SZ")
    exception = {
        "target": "kubernetes",
        "name": "allow-prometheus-*",
        "reason": "Prometheus in namespace mon scrapes the server's pods",
        "expires": expires,
    }
    create(admin_api, resource(ns, exceptions=[exception]))

    status = wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    (kube,) = status["targets"]
    assert kube["drift"]["unmanagedWidening"] == 0
    assert any(
        f["code"] == "DeclaredException" and "Prometheus in namespace mon" in f["message"]
        for f in kube["findings"]
    )
    assert (
        operator.metric("server_hardening_exceptions", namespace=ns, name=NAME, state="active") == 1
    )

    status = wait_for("Drifted after the exception expires", phase_is(admin_api, ns, "Drifted"),
                      timeout=90)  # fmt: skip
    (kube,) = status["targets"]
    assert kube["drift"]["unmanagedWidening"] == 1
    assert {f["code"] for f in kube["findings"]} >= {"ExceptionExpired", "UnmanagedWidening"}
    assert "allow-prometheus-scrape" in network_policies(admin_api, ns)  # Report: left alone


def test_a_component_whose_service_vanishes_keeps_its_last_allow_loudly(
    operator: OperatorProcess, admin_api: Any, ns: str
) -> None:
    create(admin_api, resource(ns))
    wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    before = network_policies(admin_api, ns)["svh-allow-circleci-proxy"]

    client.CoreV1Api(admin_api).delete_namespaced_service("circleci-proxy", ns)

    def unresolved() -> dict[str, Any] | None:
        status = status_of(admin_api, ns, NAME)
        condition = next(
            (c for c in status.get("conditions") or [] if c["type"] == "ComponentsResolved"), {}
        )
        return status if condition.get("status") == "False" else None

    status = wait_for("ComponentsResolved=False", unresolved)
    after = network_policies(admin_api, ns)
    assert after["svh-allow-circleci-proxy"].metadata.uid == before.metadata.uid
    assert after["svh-allow-circleci-proxy"].spec.ingress == before.spec.ingress
    assert status["phase"] == "Enforced"
    wait_for_event(
        admin_api, ns, NAME, "the ComponentServiceMissing event",
        lambda e: e.reason == "ComponentServiceMissing",
    )  # fmt: skip
    assert (
        operator.metric("server_hardening_component_services_missing", namespace=ns, name=NAME) == 1
    )
    remembered = status_of(admin_api, ns, NAME)["resolvedComponents"]
    assert {e["service"] for e in remembered} >= {"circleci-proxy"}

    # Then the allow policy is deleted too: it comes back from what the resource remembers,
    # and nothing says the component is resolved.
    client.NetworkingV1Api(admin_api).delete_namespaced_network_policy(
        "svh-allow-circleci-proxy", ns
    )

    def recreated() -> Any:
        found = network_policies(admin_api, ns).get("svh-allow-circleci-proxy")
        return found if found is not None and found.metadata.uid != before.metadata.uid else None

    again = wait_for("svh-allow-circleci-proxy re-created", recreated)
    assert again.spec.ingress == before.spec.ingress
    assert again.spec.pod_selector == before.spec.pod_selector
    status = wait_for("the re-create recorded", lambda: _after_repair(admin_api, ns))
    assert status["phase"] == "Enforced"
    condition = next(c for c in status["conditions"] if c["type"] == "ComponentsResolved")
    assert condition["status"] == "False" and "circleci-proxy is gone" in condition["message"]
    assert (
        operator.metric("server_hardening_component_services_missing", namespace=ns, name=NAME) == 1
    )

    client.CoreV1Api(admin_api).create_namespaced_service(ns, PROXY)

    def resolved() -> bool:
        status = status_of(admin_api, ns, NAME)
        return any(
            c["type"] == "ComponentsResolved" and c["status"] == "True"
            for c in status.get("conditions") or []
        )

    wait_for("ComponentsResolved=True", resolved)


def _after_repair(admin_api: Any, ns: str) -> dict[str, Any] | None:
    """The status once a check has repaired the deleted policy (its drift recorded)."""
    status = status_of(admin_api, ns, NAME)
    targets = {t["name"]: t for t in status.get("targets") or []}
    last = (targets.get("kubernetes") or {}).get("lastDrift") or {}
    return status if last.get("missing") and last.get("repaired") else None


def test_the_v4_proxy_load_balancer_is_judged_as_it_is(
    operator: OperatorProcess, admin_api: Any, ns: str
) -> None:
    """The proxy Service made a public LoadBalancer: 4647 open to the world is reported from
    the Service itself, naming nginx.loadBalancerSourceRanges; narrowing it clears the finding."""
    core = client.CoreV1Api(admin_api)
    core.patch_namespaced_service("circleci-proxy", ns, {"spec": {"type": "LoadBalancer"}})
    create(admin_api, resource(ns))

    def exposed() -> list[dict[str, Any]]:
        status = status_of(admin_api, ns, NAME)
        return [
            f
            for t in status.get("targets") or []
            for f in t.get("findings") or []
            if f["code"] == "WorldOpenSensitivePort" and "circleci-proxy" in f["message"]
        ]

    (finding,) = wait_for("the load balancer's exposure", exposed)
    assert "nginx.loadBalancerSourceRanges" in finding["message"]
    assert finding["row"] == "NOMAD-IN-1"
    assert not any(
        f["code"] == "PublicNomadPort" for f in status_of(admin_api, ns, NAME)["findings"]
    )
    assert (
        operator.metric(
            "server_hardening_world_open_sensitive_ports",
            namespace=ns,
            name=NAME,
            target="kubernetes",
        )
        == 1
    )

    core.patch_namespaced_service(
        "circleci-proxy", ns, {"spec": {"loadBalancerSourceRanges": ["10.1.0.0/16"]}}
    )
    wait_for("the exposure to clear", lambda: not exposed())


@pytest.mark.parametrize("policy", ["Delete", "Orphan"])
def test_uninstall_returns_the_adopted_policy_and_removes_only_what_was_created(
    operator: OperatorProcess, admin_api: Any, ns: str, policy: str
) -> None:
    """A hand-made policy identical to one the guide wants is adopted, the rest created; after
    the resource is deleted the hand-made one is still there, unmarked, with the same spec
    (Delete and Orphan alike), and Delete removed exactly what the operator created."""
    net = client.NetworkingV1Api(admin_api)
    by_hand = {
        "metadata": {"name": "svh-default-deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    uid = net.create_namespaced_network_policy(ns, by_hand).metadata.uid
    create(admin_api, resource(ns, deletionPolicy=policy))
    wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    marks = {
        name: (p.metadata.annotations or {}).get("hardening.circleci.com/provenance")
        for name, p in network_policies(admin_api, ns).items()
    }
    assert marks == dict.fromkeys(EXPECTED, "created") | {"svh-default-deny": "adopted"}
    spec_before = net.read_namespaced_network_policy("svh-default-deny", ns).spec.to_dict()

    custom(admin_api).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)
    wait_for("the resource to be gone", lambda: _gone(admin_api, ns))

    left = network_policies(admin_api, ns)
    expected = {"svh-default-deny"} if policy == "Delete" else EXPECTED
    assert set(left) == expected
    kept = left["svh-default-deny"]
    assert kept.metadata.uid == uid and kept.spec.to_dict() == spec_before
    for item in left.values():
        annotations, labels = item.metadata.annotations or {}, item.metadata.labels or {}
        assert "hardening.circleci.com/owner" not in annotations
        assert not {"hardening.circleci.com/owner", "app.kubernetes.io/managed-by"} & set(labels)
    # The adopted one goes back as it was found; created ones (Orphan) keep their provenance.
    assert not {"hardening.circleci.com/provenance", "hardening.circleci.com/guide-rows"} & set(
        kept.metadata.annotations or {}
    )
    for name in expected - {"svh-default-deny"}:
        assert left[name].metadata.annotations["hardening.circleci.com/provenance"] == "created"
