"""The operator pod's lifecycle on the real node: a pod stop ends on SIGTERM, not SIGKILL; with
the chart's HA values (two pods, leader election on a Lease) ten leader changes, alternately a
deleted leader pod and a SIGKILLed leader container, each with a NetworkPolicy deleted at that
moment and repaired by the next leader, and the API server's audit log showing no write of a
pod outside its own tenure of the Lease; an API-server restart is ridden out without a
container restart, but for a leader that could not renew its Lease in time, which steps down
by exiting (code 3)."""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from kubernetes import client

from field import site
from field.conftest import CHART, RELEASE, RELEASE_NAMESPACE, FieldCluster
from field.lifecycle import LEASE, change_leader, delete_and_watch, lease_holder, pod_of
from field.node import wait_until
from one_writer import by_pod, outside_their_lease, tenures_and_writes
from server_hardening.runner import EXIT_LEADERSHIP_LOST

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


LEADER_CHANGES = 10
#: Seconds from both pods Ready to the next leader change, drawn uniformly: longer than a
#: standby's longest wait between two reads of the Lease (2.2 retry periods).
CHANGE_AFTER_READY = (3.0, 8.0)


def test_ha_ten_leader_changes_each_repaired_by_the_next_leader_with_one_writer(
    release: FieldCluster,
) -> None:
    release.helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
                 "--values", str(release.values(ha=True)))  # fmt: skip
    pods = {p.metadata.name for p in release.wait_rollout(2)}
    # The single operator of before is gone: from here every replica runs the election.
    first = wait_until("a leader among the HA pods",
                       lambda: (h if pod_of(h := lease_holder(release)) in pods else None), 60)  # fmt: skip

    deployment = client.AppsV1Api(release.api).read_namespaced_deployment(
        RELEASE, RELEASE_NAMESPACE
    )
    timings = [
        a for a in deployment.spec.template.spec.containers[0].args
        if a.startswith(("--lease-duration=", "--renew-deadline=", "--retry-period="))
    ]  # fmt: skip
    release.figures["failover_lease_timings"] = timings

    def uid() -> str | None:
        return policy_uid(release, site.V3, POLICY)

    changes = []
    for turn in range(LEADER_CHANGES):
        how = "pod delete" if turn % 2 == 0 else "SIGKILL"
        # Not right after the new standby's first read of the Lease (when it turned Ready):
        # at a random moment of the renewals and of the standby's reads.
        time.sleep(random.uniform(*CHANGE_AFTER_READY))  # noqa: S311 - a moment, not a secret
        changes.append(change_leader(release, how, site.V3, POLICY, uid))
        release.wait_rollout(2)  # a standby again before the next change
    release.figures["leader_changes"] = [
        {"how": c.how, "lease_seconds": round(c.lease_seconds, 2),
         "repair_seconds": round(c.repair_seconds, 2)} for c in changes
    ]  # fmt: skip
    for how in ("pod delete", "SIGKILL"):
        for what in ("lease", "repair"):
            values = [getattr(c, f"{what}_seconds") for c in changes if c.how == how]
            release.figures[f"failover_{how.replace(' ', '_')}_{what}_p50_max_seconds"] = (
                round(statistics.median(values), 2), round(max(values), 2)
            )  # fmt: skip
    # Recorded, never asserted: a slow machine is not a failure.
    print(f"\nleader changes ({' '.join(timings)}), seconds from the delete or kill:")
    for c in changes:
        print(f"  {c.how:10} new leader {c.lease_seconds:6.2f}  policy back {c.repair_seconds:6.2f}"
              f"  {pod_of(c.old)} -> {pod_of(c.new)}")  # fmt: skip
    print({k: v for k, v in release.figures.items() if k.startswith("failover_")})

    assert release.node.control_plane is not None
    events = [
        e for e in release.node.control_plane.audit_events()
        if str(e.get("stageTimestamp", "")) >= changes[0].since
    ]  # fmt: skip
    account = f"system:serviceaccount:{RELEASE_NAMESPACE}:{RELEASE}"
    holders, writes = tenures_and_writes(
        events, (RELEASE_NAMESPACE, LEASE), by_pod(account), holder=pod_of(first)
    )
    assert outside_their_lease(writes) == [], "a pod wrote outside its tenure of the Lease"
    for change in changes:
        assert change.new != change.old
        # The deleted policy came back from the new holder's pod, inside its tenure.
        (repair,) = [
            w for w in writes
            if w.at >= change.since and w.what.startswith(f"create networkpolicies {site.V3}/{POLICY} ")
        ][:1]  # fmt: skip
        assert repair.replica == pod_of(change.new), (change, repair)
    assert len(holders) >= LEADER_CHANGES // 2  # every pod delete hands over to another pod


def test_the_operator_rides_out_an_api_server_restart(release: FieldCluster) -> None:
    pods = release.ready_operator_pods()
    restarts = {p.metadata.name: p.status.container_statuses[0].restart_count for p in pods}
    assert release.node.control_plane is not None
    release.node.control_plane.restart_apiserver(down_for=5)
    old_uid = policy_uid(release, site.V3, POLICY)
    networking(release).delete_namespaced_network_policy(POLICY, site.V3)
    wait_until("repair after the restart",
               lambda: policy_uid(release, site.V3, POLICY) not in (None, old_uid), 180)  # fmt: skip
    release.wait_rollout(len(pods))
    for pod in release.ready_operator_pods():
        [status] = pod.status.container_statuses
        if status.restart_count == restarts[pod.metadata.name]:
            continue  # rode it out
        # With HA, a leader that could not renew the Lease for the renew deadline (the API
        # server away longer than ha.renewDeadlineSeconds, 5 s by default) steps down by
        # exiting, as client-go's controllers do, and comes back as a standby. Nothing else
        # may restart it.
        terminated = status.last_state.terminated
        assert status.restart_count == restarts[pod.metadata.name] + 1
        assert terminated is not None and terminated.exit_code == EXIT_LEADERSHIP_LOST
