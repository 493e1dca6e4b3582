"""Watching an operator pod stop, and reading the kopf peering records."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client, watch

from field.conftest import RELEASE_NAMESPACE, FieldCluster

PEERING = "server-hardening"


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


def peers(cluster: FieldCluster, namespace: str) -> dict[str, Any]:
    body = client.CustomObjectsApi(cluster.api).get_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", PEERING
    )
    return dict(body.get("status") or {})
