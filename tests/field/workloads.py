"""Real pods and Services standing in for a CircleCI server installation, and real TCP probes.

Every pod runs the stand-in base image (python3) with a tiny listener on its ports. A probe is a
TCP connect from inside a source's network namespace: a pod's (entered by its sandbox PID), the
node's (host network) or the outside namespace's with a chosen source address (a Nomad client,
a VM, another node, the internet). Connected means allowed; refused or no answer means blocked,
and every target is first shown to accept from the node, so "blocked" is never "not listening".
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from field.node import LISTENER, NODE_NETNS, OUTSIDE_NETNS, Node, wait_until

IMAGE = "docker.io/library/python:3.11.14-slim-bookworm"  # the stand-in base, see fieldimages
PROBE = Path(__file__).with_name("probe.py")


@dataclass(frozen=True)
class PodSpec:
    name: str
    labels: Mapping[str, str]
    ports: Sequence[int] = ()
    named_ports: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    selector: Mapping[str, str]
    ports: Sequence[tuple[int, int | str]]  # (service port, targetPort)


def ensure_namespace(api: Any, name: str, labels: Mapping[str, str] | None = None) -> None:
    body = {"metadata": {"name": name, "labels": dict(labels or {})}}
    try:
        client.CoreV1Api(api).create_namespace(body)
    except ApiException as exc:
        if exc.status != 409:
            raise


def pod_manifest(spec: PodSpec) -> dict[str, Any]:
    ports = sorted(set(spec.ports) | set(spec.named_ports.values()))
    container_ports = [
        {"containerPort": p, "protocol": "TCP", **({"name": n} if n else {})}
        for p in ports
        for n in [next((k for k, v in spec.named_ports.items() if v == p), None)]
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": spec.name, "labels": dict(spec.labels)},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "listener",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", LISTENER, *[str(p) for p in ports]],
                    "ports": container_ports,
                }
            ],
        },
    }


def service_manifest(spec: ServiceSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": spec.name},
        "spec": {
            "selector": dict(spec.selector),
            "ports": [
                {"name": f"p{port}", "port": port, "targetPort": target, "protocol": "TCP"}
                for port, target in spec.ports
            ],
        },
    }


def create_pods(api: Any, namespace: str, pods: Iterable[PodSpec]) -> dict[str, str]:
    """Create and wait for Running; returns pod name -> pod IP."""
    core = client.CoreV1Api(api)
    pods = list(pods)
    for pod in pods:
        try:
            core.create_namespaced_pod(namespace, pod_manifest(pod))
        except ApiException as exc:
            if exc.status != 409:
                raise

    def all_running() -> dict[str, str] | None:
        ips = {}
        for pod in pods:
            body = core.read_namespaced_pod(pod.name, namespace)
            if body.status.phase != "Running" or not body.status.pod_ip:
                return None
            ips[pod.name] = body.status.pod_ip
        return ips

    return wait_until(f"pods in {namespace} to run", all_running, 120)


def create_services(api: Any, namespace: str, services: Iterable[ServiceSpec]) -> dict[str, str]:
    """Create; returns Service name -> ClusterIP."""
    core = client.CoreV1Api(api)
    out = {}
    for service in services:
        try:
            body = core.create_namespaced_service(namespace, service_manifest(service))
        except ApiException as exc:
            if exc.status != 409:
                raise
            body = core.read_namespaced_service(service.name, namespace)
        out[service.name] = body.spec.cluster_ip
    return out


# -- probes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a connection starts: a pod (namespace/name), the node, or an outside address."""

    label: str
    pod: tuple[str, str] | None = None
    outside_address: str | None = None

    def command(self, node: Node) -> list[str]:
        probe = [sys.executable, "-I", str(PROBE)]
        if self.pod is not None:
            pid = node.pod_pid(*self.pod)
            return ["nsenter", f"--net=/proc/{pid}/ns/net", "--", *probe]
        if self.outside_address is not None:
            return ["ip", "netns", "exec", OUTSIDE_NETNS, *probe, "--source", self.outside_address]
        return ["ip", "netns", "exec", NODE_NETNS, *probe]


def connect_all(
    node: Node, source: Source, targets: Sequence[tuple[str, int]], timeout: float = 1.5
) -> dict[tuple[str, int], bool]:
    """TCP connects from ``source`` to every ``(ip, port)``, in parallel: connected or not."""
    request = json.dumps({"timeout": timeout, "targets": [list(t) for t in targets]})
    proc = subprocess.run(
        source.command(node), input=request, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"probe from {source.label} failed: {proc.stderr.strip()}")
    answers = json.loads(proc.stdout)
    return {(ip, int(port)): bool(ok) for ip, port, ok in answers}
