"""The rendered chart against the real local kube-apiserver (no kubelet: nothing runs).

- every object of every variant is accepted by a server-side dry run with strict field
  validation (the CRDs are installed for real first; ServiceMonitor and PrometheusRule against
  minimal stand-in CRDs that accept any spec, since the Prometheus Operator is not here);
- the operator's pod is admitted by Pod Security admission in a namespace enforcing
  ``restricted`` (and a weakened copy is refused, so the check is live);
- the chart's RBAC, created for real, lets the ServiceAccount (authenticated with its own token)
  do each operation the operator needs and nothing else: no Secrets, no namespace deletion, no
  other namespaces when namespaced.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hardening_chart import (
    VARIANTS,
    by_kind,
    create_object,
    ensure_namespace,
    install_rbac,
    one,
    render_chart,
)
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from server_hardening_dev.controlplane import ControlPlane

pytestmark = pytest.mark.e2e


def _stand_in_crd(plural: str, kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


STAND_IN_CRDS = [
    _stand_in_crd("servicemonitors", "ServiceMonitor"),
    _stand_in_crd("prometheusrules", "PrometheusRule"),
]


def _wait_established(api: Any, names: list[str], timeout: float = 60.0) -> None:
    ext = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for name in sorted(pending):
            crd = ext.read_custom_resource_definition(name)
            conditions = (crd.status and crd.status.conditions) or []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                pending.discard(name)
        if pending:
            assert time.monotonic() < deadline, f"CRDs not established: {pending}"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def api(packaging_admin_api: Any) -> Any:
    """Admin client, with the chart's CRDs and the monitoring stand-ins installed for real."""
    crds = by_kind(render_chart(None, include_crds=True), "CustomResourceDefinition")
    crds += STAND_IN_CRDS
    for crd in crds:
        try:
            create_object(packaging_admin_api, crd)
        except ApiException as exc:
            if exc.status != 409:
                raise
    _wait_established(packaging_admin_api, [c["metadata"]["name"] for c in crds])
    return packaging_admin_api


def _namespaces(rendered: list[dict[str, Any]]) -> set[str]:
    return {o["metadata"]["namespace"] for o in rendered if "namespace" in o["metadata"]}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_object_passes_a_server_side_dry_run(api: Any, name: str) -> None:
    namespace = f"dry-{name}"
    rendered = render_chart(VARIANTS[name], namespace=namespace, release=f"dry-{name}")
    for ns in sorted(_namespaces(rendered)):
        ensure_namespace(api, ns)
    refused = []
    for obj in rendered:
        try:
            created = create_object(api, obj, dry_run=True)
        except ApiException as exc:
            refused.append(f"{obj['kind']} {obj['metadata']['name']}: {exc.status} {exc.body}")
            continue
        assert created["kind"] == obj["kind"]
    assert not refused, "\n".join(refused)


def test_dry_run_really_validates(api: Any) -> None:
    """A typo in a field is refused (strict field validation), so the dry run is a real check."""
    rendered = render_chart(None, namespace="dry-typo", release="dry-typo")
    ensure_namespace(api, "dry-typo")
    deployment = copy.deepcopy(one(rendered, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(ApiException) as refused:
        create_object(api, deployment, dry_run=True)
    assert "livenesProbe" in str(refused.value.body)
    resource = {
        "apiVersion": "hardening.circleci.com/v1alpha1",
        "kind": "ServerHardening",
        "metadata": {"name": "bad", "namespace": "dry-typo"},
        "spec": {"serverVersion": "9", "topology": {}},
    }
    with pytest.raises(ApiException) as invalid:
        create_object(api, resource, dry_run=True)
    assert invalid.value.status == 422


# --------------------------------------------------------------------------------------------
# Pod Security admission


def _pod_from(deployment: dict[str, Any], namespace: str) -> dict[str, Any]:
    template = copy.deepcopy(deployment["spec"]["template"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "operator", "namespace": namespace, **template["metadata"]},
        "spec": template["spec"],
    }


@pytest.fixture(scope="module")
def restricted_namespace(api: Any) -> str:
    name = "pss-restricted"
    body = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }
    try:
        create_object(api, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    return name


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_operator_pod_is_admitted_under_restricted_pod_security(
    api: Any, restricted_namespace: str, name: str
) -> None:
    rendered = render_chart(VARIANTS[name], namespace=restricted_namespace)
    pod = _pod_from(one(rendered, "Deployment"), restricted_namespace)
    created = create_object(api, pod, dry_run=True)
    assert created["spec"]["securityContext"]["runAsNonRoot"] is True


def test_pod_security_admission_refuses_a_weakened_pod(api: Any, restricted_namespace: str) -> None:
    rendered = render_chart(None, namespace=restricted_namespace)
    pod = _pod_from(one(rendered, "Deployment"), restricted_namespace)
    container = pod["spec"]["containers"][0]
    container["securityContext"]["allowPrivilegeEscalation"] = True
    del container["securityContext"]["capabilities"]
    with pytest.raises(ApiException) as refused:
        create_object(api, pod, dry_run=True)
    assert refused.value.status == 403
    assert "violates PodSecurity" in str(refused.value.body)


# --------------------------------------------------------------------------------------------
# RBAC, as the ServiceAccount itself


Check = tuple[str, str, str, str, str, str]  # verb, group, resource, subresource, ns, name

WATCHED = "circleci-server"


def _can(sa_api: Any, check: Check) -> bool:
    verb, group, resource, subresource, namespace, name = check
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                verb=verb,
                group=group,
                resource=resource,
                subresource=subresource or None,
                namespace=namespace or None,
                name=name or None,
            )
        )
    )
    result = client.AuthorizationV1Api(sa_api).create_self_subject_access_review(review)
    return bool(result.status.allowed)


def _operator_checks(namespace: str) -> list[Check]:
    """Everything the operator does in a namespace it watches."""
    checks: list[Check] = []
    hardening = "hardening.circleci.com"
    for verb in ("get", "list", "watch", "patch", "update"):
        checks.append((verb, hardening, "serverhardenings", "", namespace, ""))
    for verb in ("get", "patch", "update"):
        checks.append((verb, hardening, "serverhardenings", "status", namespace, ""))
    for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
        checks.append((verb, "networking.k8s.io", "networkpolicies", "", namespace, ""))
    for verb in ("get", "list", "watch"):
        checks.append((verb, "", "services", "", namespace, ""))
    for verb in ("create", "patch"):
        checks.append((verb, "", "events", "", namespace, ""))
        checks.append((verb, "events.k8s.io", "events", "", namespace, ""))
    checks.append(("list", "apiextensions.k8s.io", "customresourcedefinitions", "", "", ""))
    checks.append(("watch", "apiextensions.k8s.io", "customresourcedefinitions", "", "", ""))
    return checks


def _never_checks(namespace: str) -> list[Check]:
    """What the operator must never be able to do, wherever."""
    checks: list[Check] = []
    for ns in (namespace, "kube-system", ""):
        for verb in ("get", "list", "watch"):
            checks.append((verb, "", "secrets", "", ns, ""))
        checks.append(("get", "", "configmaps", "", ns, ""))
        checks.append(("create", "", "pods", "", ns, ""))
        checks.append(("create", "", "serviceaccounts", "token", ns, "default"))
        checks.append(("create", "rbac.authorization.k8s.io", "rolebindings", "", ns, ""))
        checks.append(("delete", "", "services", "", ns, ""))
        checks.append(("deletecollection", "networking.k8s.io", "networkpolicies", "", ns, ""))
        checks.append(("create", "hardening.circleci.com", "serverhardenings", "", ns, ""))
        checks.append(("delete", "hardening.circleci.com", "serverhardenings", "", ns, ""))
    checks += [
        ("delete", "", "namespaces", "", "", WATCHED),
        ("create", "", "namespaces", "", "", ""),
        ("update", "", "namespaces", "", "", WATCHED),
        ("create", "apiextensions.k8s.io", "customresourcedefinitions", "", "", ""),
        ("delete", "apiextensions.k8s.io", "customresourcedefinitions", "", "", ""),
        ("create", "rbac.authorization.k8s.io", "clusterroles", "", "", ""),
        ("escalate", "rbac.authorization.k8s.io", "clusterroles", "", "", ""),
        ("impersonate", "", "serviceaccounts", "", "kube-system", "default"),
    ]
    return checks


@pytest.fixture(scope="module")
def service_account_api(
    api: Any, packaging_control_plane: ControlPlane
) -> Iterator[dict[str, tuple[Any, list[dict[str, Any]]]]]:
    """Per variant: an ApiClient authenticated as the chart's ServiceAccount (its own token)."""
    clients: dict[str, tuple[Any, list[dict[str, Any]]]] = {}
    for name in ("default", "ha", "namespaced-ha"):
        rendered = render_chart(VARIANTS[name], namespace=f"sar-{name}", release=f"sar-{name}")
        namespace, account = install_rbac(api, rendered)
        kubeconfig = packaging_control_plane.service_account_kubeconfig(namespace, account)
        clients[name] = (packaging_control_plane.api_client(kubeconfig), rendered)
    yield clients
    for sa_api, _ in clients.values():
        sa_api.close()


def _failures(sa_api: Any, checks: list[Check], expected: bool) -> list[Check]:
    return [c for c in checks if _can(sa_api, c) is not expected]


def test_cluster_wide_service_account_can_do_what_the_operator_needs(
    service_account_api: dict[str, tuple[Any, list[dict[str, Any]]]],
) -> None:
    sa_api, _ = service_account_api["default"]
    checks = _operator_checks(WATCHED) + _operator_checks("another-namespace")
    checks += [
        ("list", "hardening.circleci.com", "serverhardenings", "", "", ""),
        ("watch", "hardening.circleci.com", "serverhardenings", "", "", ""),
        ("list", "", "namespaces", "", "", ""),
        ("watch", "", "namespaces", "", "", ""),
    ]
    assert not _failures(sa_api, checks, expected=True)


def test_cluster_wide_service_account_cannot_do_anything_else(
    service_account_api: dict[str, tuple[Any, list[dict[str, Any]]]],
) -> None:
    sa_api, _ = service_account_api["default"]
    checks = [
        *_never_checks(WATCHED),
        # no HA: no Lease access at all
        ("get", "coordination.k8s.io", "leases", "", "sar-default", "sar-default-server-hardening"),
        ("create", "coordination.k8s.io", "leases", "", "sar-default", ""),
    ]
    assert not _failures(sa_api, checks, expected=False)


def test_ha_service_account_can_use_its_lease_only(
    service_account_api: dict[str, tuple[Any, list[dict[str, Any]]]],
) -> None:
    """get and update its own Lease, create one (a name cannot be granted before it exists),
    in the release namespace only; never another Lease, never delete or watch."""
    sa_api, _ = service_account_api["ha"]
    lease = "coordination.k8s.io", "leases", ""
    own = "sar-ha-server-hardening"  # the default: the release's full name
    allowed: list[Check] = [
        ("get", *lease, "sar-ha", own),
        ("update", *lease, "sar-ha", own),
        ("create", *lease, "sar-ha", ""),
    ]
    denied: list[Check] = [
        ("get", *lease, "sar-ha", "someone-elses"),
        ("update", *lease, "sar-ha", "kube-controller-manager"),
        ("delete", *lease, "sar-ha", own),
        ("patch", *lease, "sar-ha", own),
        ("list", *lease, "sar-ha", ""),
        ("watch", *lease, "sar-ha", ""),
        ("update", *lease, "kube-system", own),
        ("create", *lease, WATCHED, ""),
        *_never_checks(WATCHED),
    ]
    assert not _failures(sa_api, allowed + _operator_checks(WATCHED), expected=True)
    assert not _failures(sa_api, denied, expected=False)


def test_namespaced_service_account_is_confined_to_its_namespaces(
    service_account_api: dict[str, tuple[Any, list[dict[str, Any]]]],
) -> None:
    sa_api, rendered = service_account_api["namespaced-ha"]
    watched = sorted(
        {
            r["metadata"]["namespace"]
            for r in by_kind(rendered, "Role")
            if not r["metadata"]["name"].endswith("-leader-election")  # the release namespace's
        }
    )
    assert watched == ["circleci-server", "circleci-server-staging"]
    allowed: list[Check] = []
    for ns in watched:
        allowed += _operator_checks(ns)
    allowed += [
        ("get", "coordination.k8s.io", "leases", "", "sar-namespaced-ha", "hardening"),
        ("update", "coordination.k8s.io", "leases", "", "sar-namespaced-ha", "hardening"),
    ]
    assert not _failures(sa_api, allowed, expected=True)
    denied = _never_checks(WATCHED) + [
        (check[0], *check[1:4], "default", check[5])
        for check in _operator_checks("default")
        if check[4]  # the namespaced ones, moved to a namespace that is not watched
    ]
    denied += [
        ("list", "hardening.circleci.com", "serverhardenings", "", "", ""),
        ("list", "networking.k8s.io", "networkpolicies", "", "", ""),
        ("list", "", "namespaces", "", "", ""),
        ("update", "coordination.k8s.io", "leases", "", "sar-namespaced-ha", "another-lease"),
        ("update", "coordination.k8s.io", "leases", "", watched[0], "hardening"),
    ]
    assert not _failures(sa_api, denied, expected=False)
