"""What a Service of type LoadBalancer exposes, read from the Service as it is. Pure: no I/O.

In v4 the guide's 80/443 and Nomad's 4647 share the ``circleci-proxy`` load balancer. Unless
the installer set ``nginx.loadBalancerSourceRanges`` (the Service's
``spec.loadBalancerSourceRanges``) or made the load balancer internal, 4647 is open to the whole
internet: the same ``WorldOpenSensitivePort`` as any rule opening it, with the Helm value that
narrows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server_hardening.guide import SENSITIVE_PORTS
from server_hardening.policy.exposure import WORLD, Access, world_open_sensitive_port
from server_hardening.rules import Direction, Finding, PortRange

TARGET = "kubernetes"

# Annotations that make a cloud's load balancer internal (documented by each provider).
INTERNAL_ANNOTATIONS: Mapping[str, tuple[str, ...]] = {
    "service.beta.kubernetes.io/aws-load-balancer-internal": ("true", "0.0.0.0/0"),
    "service.beta.kubernetes.io/aws-load-balancer-scheme": ("internal",),
    "networking.gke.io/load-balancer-type": ("internal",),
    "cloud.google.com/load-balancer-type": ("internal",),
    "service.beta.kubernetes.io/azure-load-balancer-internal": ("true",),
}


def is_internal(service: Mapping[str, Any]) -> bool:
    annotations = (service.get("metadata") or {}).get("annotations") or {}
    return any(
        str(annotations.get(key, "")).lower() in values
        for key, values in INTERNAL_ANNOTATIONS.items()
    )


def load_balancer_exposure(service: Mapping[str, Any]) -> Finding | None:
    """A public LoadBalancer Service that serves a sensitive port to the union of its source
    ranges (none: the whole internet), as a finding naming the Helm value that narrows it."""
    spec = service.get("spec") or {}
    name = str((service.get("metadata") or {}).get("name", ""))
    if spec.get("type") != "LoadBalancer" or is_internal(service):
        return None
    ranges = tuple(spec.get("loadBalancerSourceRanges") or WORLD)
    ports = tuple(
        PortRange.single(int(p["port"]))
        for p in spec.get("ports") or []
        if str(p.get("protocol") or "TCP").upper() == "TCP"
        and int(p.get("port", 0)) in SENSITIVE_PORTS
    )
    if not ports:
        return None
    where = f"Service {name} (type LoadBalancer, public)"
    found = world_open_sensitive_port(
        Access(Direction.INGRESS, ranges, "tcp", ports, where),
        TARGET,
        "set nginx.loadBalancerSourceRanges in CircleCI Server's Helm values to the Nomad "
        "clients' CIDRs (or make the load balancer internal)",
    )
    if found is None:
        return None
    sources = ", ".join(spec.get("loadBalancerSourceRanges") or []) or "none set"
    return Finding.of(
        found.code,
        f"{found.message} (loadBalancerSourceRanges: {sources})",
        row=found.row,
        target=TARGET,
        objects=(name,),
    )
