"""The v4 proxy's load balancer as it is: a public one serving 4647 without source ranges is
the same WorldOpenSensitivePort as any rule opening it, naming the Helm value that narrows it."""

from __future__ import annotations

from typing import Any

import pytest

from server_hardening.policy.loadbalancer import load_balancer_exposure
from server_hardening.rules import FindingCode


def proxy(kind: str = "LoadBalancer", ranges: list[str] | None = None, **annotations: str) -> Any:
    spec: dict[str, Any] = {
        "type": kind,
        "ports": [{"port": 80}, {"port": 443}, {"port": 4647, "protocol": "TCP"}],
    }
    if ranges is not None:
        spec["loadBalancerSourceRanges"] = ranges
    return {"metadata": {"name": "circleci-proxy", "annotations": annotations}, "spec": spec}


def test_a_public_load_balancer_without_source_ranges_opens_4647_to_the_world() -> None:
    finding = load_balancer_exposure(proxy())
    assert finding is not None
    assert finding.code is FindingCode.WORLD_OPEN_SENSITIVE_PORT
    assert finding.row == "NOMAD-IN-1"
    assert "4647" in finding.message and "nginx.loadBalancerSourceRanges" in finding.message
    assert "loadBalancerSourceRanges: none set" in finding.message


def test_source_ranges_that_add_up_to_the_world_are_the_world() -> None:
    finding = load_balancer_exposure(proxy(ranges=["0.0.0.0/1", "128.0.0.0/1"]))
    assert finding is not None and finding.code is FindingCode.WORLD_OPEN_SENSITIVE_PORT


@pytest.mark.parametrize(
    "service",
    [
        proxy(ranges=["10.0.16.0/20"]),
        proxy(kind="ClusterIP"),
        proxy(kind="NodePort"),
        proxy(**{"service.beta.kubernetes.io/aws-load-balancer-scheme": "internal"}),
        proxy(**{"networking.gke.io/load-balancer-type": "Internal"}),
    ],
)
def test_narrowed_internal_or_not_a_load_balancer_is_not_flagged(service: Any) -> None:
    assert load_balancer_exposure(service) is None
