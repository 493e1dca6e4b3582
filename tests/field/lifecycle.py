"""Watching an operator pod stop; the leader Lease, and changing its holder by deleting the
leader's pod or SIGKILLing its container (through containerd, as the kernel's OOM killer or a
crash would end it)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch

from field.conftest import RELEASE, RELEASE_NAMESPACE, FieldCluster
from field.node import wait_until

#: The chart's Lease: ha.leaseName's default, the release's full name.
LEASE = RELEASE


@dataclass
class Stop:
    exit_code: int | None = None
    reason: str = ""
    finished_at: Any = None
    seconds: float = 0.0  # from the delete call until the pod object is gone


def delete_and_watch(cluster: FieldCluster, pod_name: str, timeout: float = 90) -> Stop:
    """Delete a pod (default grace period) and follow it until it is gone: how its container
    ended (exit code 0 after SIGTERM; 137 would be SIGKILL at the end of the grace period)."""
    core = client.CoreV1Api(cluster.api)
    stop = Stop()
    ready = threading.Event()
    done = threading.Event()

    def follow() -> None:
        w = watch.Watch()
        ready.set()
        for event in w.stream(core.list_namespaced_pod, RELEASE_NAMESPACE,
                              field_selector=f"metadata.name={pod_name}",
                              timeout_seconds=int(timeout)):  # fmt: skip
            pod = event["object"]
            for status in pod.status.container_statuses or []:
                terminated = status.state.terminated if status.state else None
                if terminated is not None:
                    stop.exit_code, stop.reason = terminated.exit_code, terminated.reason or ""
                    stop.finished_at = terminated.finished_at
            if event["type"] == "DELETED":
                break
        w.stop()
        done.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    ready.wait(10)
    time.sleep(0.5)  # the watch is established
    started = time.monotonic()
    core.delete_namespaced_pod(pod_name, RELEASE_NAMESPACE)
    if not done.wait(timeout):
        raise AssertionError(f"pod {pod_name} still exists after {timeout:.0f}s")
    stop.seconds = time.monotonic() - started
    return stop


def lease_holder(cluster: FieldCluster) -> str:
    """The Lease's holder identity ("" when released or absent): ``<pod>_<suffix>``."""
    try:
        lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease(
            LEASE, RELEASE_NAMESPACE
        )
    except client.ApiException as exc:
        if exc.status == 404:
            return ""
        raise
    return str(lease.spec.holder_identity or "")


def pod_of(holder: str) -> str:
    return holder.split("_", maxsplit=1)[0]


def kill_container(cluster: FieldCluster, pod: str, container: str = "operator") -> None:
    """SIGKILL the running container ``container`` of ``pod`` through containerd: no SIGTERM,
    no release; the kubelet restarts the container in the same pod."""
    node = cluster.node
    running = {
        fields[0]
        for line in node.ctr("tasks", "list").splitlines()[1:]
        if len(fields := line.split()) >= 3 and fields[2] == "RUNNING"
    }
    for container_id in node.ctr("containers", "list", "--quiet").split():
        if container_id not in running:
            continue
        labels = json.loads(node.ctr("containers", "info", container_id)).get("Labels") or {}
        if (
            labels.get("io.kubernetes.pod.namespace") == RELEASE_NAMESPACE
            and labels.get("io.kubernetes.pod.name") == pod
            and labels.get("io.kubernetes.container.name") == container
        ):
            node.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)
            return
    raise AssertionError(f"no running container {container} in pod {pod}")


@dataclass
class LeaderChange:
    how: str  # "pod delete" or "SIGKILL"
    old: str  # the Lease holders (identities) before and after
    new: str
    lease_seconds: float  # from the delete or kill until the new holder holds the Lease
    repair_seconds: float  # from the delete or kill until the deleted policy is back
    since: str  # the API server's clock (UTC) when the change began, for the audit log


def change_leader(
    cluster: FieldCluster, how: str, namespace: str, policy: str, uid_of: Any
) -> LeaderChange:
    """Take the leader away (``how``), delete ``policy`` at that moment, and follow the next
    holder taking the Lease and the policy coming back. After a pod delete the policy goes once
    the old leader has released the Lease (until then it still leads, and may repair it
    itself); after a SIGKILL at once."""
    import datetime as dt

    old = lease_holder(cluster)
    assert old, "no leader"
    old_uid = uid_of()
    assert old_uid is not None
    since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    started = time.monotonic()
    if how == "pod delete":
        cluster.core.delete_namespaced_pod(pod_of(old), RELEASE_NAMESPACE)
        wait_until("the old leader to release the Lease", lambda: lease_holder(cluster) != old, 60)
    else:
        kill_container(cluster, pod_of(old))
    client.NetworkingV1Api(cluster.api).delete_namespaced_network_policy(policy, namespace)
    new = wait_until(
        "a new holder of the Lease",
        lambda: h if (h := lease_holder(cluster)) not in ("", old) else None,
        90,
    )
    held = time.monotonic() - started
    wait_until("the deleted policy to be repaired", lambda: uid_of() not in (None, old_uid), 90)
    return LeaderChange(how, old, new, held, time.monotonic() - started, since)
