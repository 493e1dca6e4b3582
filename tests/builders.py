"""Builders: valid resources with one thing changed, so a test says only what it is about."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from server_hardening.model import ResourceRef, ServerHardeningSpec, parse_resource, parse_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
OWNER = ResourceRef(namespace="circleci-server", name="circleci", uid="0000-test-uid")

GKE_POD_RANGE = "10.4.0.0/14"  # GKE's default cluster range, clear of BASE_SPEC's subnets
BASE_SPEC: dict[str, Any] = {
    "serverVersion": "3",
    "topology": {
        "kubernetesNodes": {"cidrs": ["10.0.0.0/16"]},
        "nomadClients": {"cidrs": ["10.1.0.0/16"]},
        "externalVMs": {"cidrs": ["10.2.0.0/16"]},
    },
}


def spec_dict(**changes: Any) -> dict[str, Any]:
    """BASE_SPEC with dotted-path changes: ``spec_dict(**{"topology.dns": {...}})``."""
    spec = copy.deepcopy(BASE_SPEC)
    for path, value in changes.items():
        node = spec
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    gcp = spec.get("gcp")
    if isinstance(gcp, dict) and gcp.get("restrictEgress", True):
        # VPC-native GKE: a restricting GCP spec names the pods' range (CHOICE-K8S-PODS).
        spec["topology"].setdefault("kubernetesPods", {"cidrs": [GKE_POD_RANGE]})
    return spec


def make_spec(**changes: Any) -> ServerHardeningSpec:
    return parse_spec(spec_dict(**changes))


def example_names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES.glob("*.yaml"))


def example_body(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return body


def example(name: str) -> tuple[ResourceRef, ServerHardeningSpec]:
    return parse_resource(example_body(name))
