"""Taking it all away: the ServerHardening resources release what they own per their
deletionPolicy (Delete in v3, Orphan in v4) while the operator runs, then ``helm uninstall``
leaves no operator process, pod, finalizer or chart object behind."""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from field import site
from field.conftest import RELEASE, RELEASE_NAMESPACE, FieldCluster
from field.node import NodeError, wait_until

GROUP, VERSION, PLURAL = "hardening.circleci.com", "v1alpha1", "serverhardenings"


def custom(cluster: FieldCluster) -> Any:
    return client.CustomObjectsApi(cluster.api)


def gone(cluster: FieldCluster, namespace: str) -> bool:
    try:
        custom(cluster).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "circleci")
    except ApiException as exc:
        return exc.status == 404
    return False


def managed(cluster: FieldCluster, namespace: str) -> dict[str, dict[str, str]]:
    items = client.NetworkingV1Api(cluster.api).list_namespaced_network_policy(namespace).items
    return {p.metadata.name: dict(p.metadata.labels or {}) for p in items}


def operator_tasks(cluster: FieldCluster) -> list[str]:
    """Running containerd tasks of the operator image on the node."""
    running = []
    for line in cluster.node.ctr("tasks", "list").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "RUNNING":
            try:
                image = cluster.node.ctr("containers", "info", fields[0])
            except NodeError as exc:
                if "not found" in str(exc):
                    continue  # removed between the two calls: what the caller waits for
                raise
            if "localhost/server-hardening:field" in image:
                running.append(fields[0])
    return running


def test_resources_release_per_deletion_policy_then_uninstall_is_clean(
    release: FieldCluster,
) -> None:
    cluster = release
    assert managed(cluster, site.V3) and managed(cluster, site.V4)
    for ns, policy in ((site.V3, "Delete"), (site.V4, "Orphan")):  # Orphan is the default
        custom(cluster).patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, "circleci", {"spec": {"deletionPolicy": policy}}
        )
    for ns in (site.V3, site.V4):
        custom(cluster).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "circleci")
    for ns in (site.V3, site.V4):
        wait_until(f"{ns}'s resource to be finalized", lambda ns=ns: gone(cluster, ns), 120)
    assert managed(cluster, site.V3) == {}
    orphans = managed(cluster, site.V4)
    assert orphans and all(
        "app.kubernetes.io/managed-by" not in labels for labels in orphans.values()
    )

    assert operator_tasks(cluster)
    cluster.helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait")
    wait_until("no operator pod", lambda: cluster.operator_pods() == [] or None, 120)
    wait_until("no operator process on the node", lambda: operator_tasks(cluster) == [] or None, 60)
    apps, rbac = client.AppsV1Api(cluster.api), client.RbacAuthorizationV1Api(cluster.api)
    assert apps.list_namespaced_deployment(RELEASE_NAMESPACE).items == []
    assert [r.metadata.name for r in rbac.list_namespaced_role(site.V3).items] == []
    assert [
        s.metadata.name
        for s in cluster.core.list_namespaced_service_account(RELEASE_NAMESPACE).items
    ] == ["default"]
    # No Lease RBAC is left either. The Lease itself is the operator's, not helm's: it goes with
    # the namespace (helm deletes the Role while the last leader is still stopping, so that
    # leader may not get to release it; a new install waits out the lease once, 15 s).
    assert [r.metadata.name for r in rbac.list_namespaced_role(RELEASE_NAMESPACE).items] == []
