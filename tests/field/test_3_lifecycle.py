"""The operator pod's lifecycle on the real node: a pod stop ends on SIGTERM, not SIGKILL; with
the chart's HA values a standby takes over when the leader's pod is deleted (its peering record
withdrawn, not expired) and repairs drift injected meanwhile; an API-server restart is ridden
out without a container restart."""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client

from field import site
from field.conftest import CHART, RELEASE, RELEASE_NAMESPACE, FieldCluster
from field.lifecycle import delete_and_watch, peers
from field.node import wait_until

POLICY = "svh-allow-circleci-server-traefik"


def networking(cluster: FieldCluster) -> Any:
    return client.NetworkingV1Api(cluster.api)


def policy_uid(cluster: FieldCluster, namespace: str, name: str) -> str | None:
    items = networking(cluster).list_namespaced_network_policy(namespace).items
    return next((p.metadata.uid for p in items if p.metadata.name == name), None)


def test_deleting_the_operator_pod_ends_on_sigterm(release: FieldCluster) -> None:
    [pod] = release.wait_rollout(1)
    stop = delete_and_watch(release, pod.metadata.name)
    release.figures["pod_stop_seconds"] = stop.seconds
    assert (stop.exit_code, stop.reason) == (0, "Completed"), "137 would be SIGKILL"
    release.wait_rollout(1)


def test_ha_standby_takes_over_and_repairs_drift(release: FieldCluster) -> None:
    release.helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
                 "--values", str(release.values(ha=True)))  # fmt: skip
    pods = {p.metadata.name for p in release.wait_rollout(2)}

    def both_peers() -> dict[str, Any] | None:
        found = peers(release, site.V3)
        return found if pods <= set(found) else None

    records = wait_until("both pods in the peering", both_peers, 120)
    leader = max(pods, key=lambda name: int(records[name]["priority"]))
    [standby] = pods - {leader}
    old_uid = policy_uid(release, site.V3, POLICY)
    assert old_uid is not None

    started = time.monotonic()
    stop = delete_and_watch(release, leader)
    assert (stop.exit_code, stop.reason) == (0, "Completed")
    assert leader not in peers(release, site.V3), "the leader's peering record was not withdrawn"
    # Drift while only the standby (and the replacement pod, still starting) can act.
    networking(release).delete_namespaced_network_policy(POLICY, site.V3)
    drifted = time.monotonic()

    def repaired() -> bool:
        uid = policy_uid(release, site.V3, POLICY)
        return uid is not None and uid != old_uid

    wait_until("the standby to repair the deleted policy", repaired, 120)
    release.figures["ha_takeover_seconds"] = time.monotonic() - started
    release.figures["ha_repair_after_drift_seconds"] = time.monotonic() - drifted
    assert standby in peers(release, site.V3)
    release.wait_rollout(2)


def test_the_operator_rides_out_an_api_server_restart(release: FieldCluster) -> None:
    pods = release.ready_operator_pods()
    restarts = {p.metadata.name: p.status.container_statuses[0].restart_count for p in pods}
    assert release.node.control_plane is not None
    release.node.control_plane.restart_apiserver(down_for=5)
    old_uid = policy_uid(release, site.V3, POLICY)
    networking(release).delete_namespaced_network_policy(POLICY, site.V3)
    wait_until("repair after the restart",
               lambda: policy_uid(release, site.V3, POLICY) not in (None, old_uid), 180)  # fmt: skip
    after = {p.metadata.name: p.status.container_statuses[0].restart_count
             for p in release.ready_operator_pods()}  # fmt: skip
    assert after == restarts
