"""A spec written the way a Kubernetes user writes it (examples/kubernetes-only.yaml: a
matchLabels + matchExpressions selector, integer ports, serverVersion "4.x", driftCheckInterval
1m30s) is admitted, applied by the operator as the chart's ServiceAccount, and stays in sync: the
selector it wrote compares equal to what the API server returns, so a second pass writes
nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builders import example_body
from e2e.harness import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    custom,
    network_policies,
    operator_identity,
    status_of,
    wait_for,
)

pytestmark = pytest.mark.e2e

NAMESPACE = f"svh-first-hour-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def identity(control_plane: Any, admin_api: Any) -> tuple[Path, str]:
    return operator_identity(control_plane, admin_api, [NAMESPACE])


@pytest.fixture(scope="module")
def operator(identity: tuple[Path, str]) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(identity[0], [NAMESPACE]).start()
    yield proc
    proc.stop()


def enforced_at(api: Any, generation: int) -> Any:
    def check() -> dict[str, Any] | None:
        status = status_of(api, NAMESPACE, "circleci")
        done = status.get("phase") == "Enforced" and status.get("observedGeneration") == generation
        return status if done else None

    return check


def operator_writes(control_plane: Any, service_account: str) -> list[str]:
    return [
        f"{e['verb']} {e['objectRef'].get('name', '')}"
        for e in control_plane.audit_events(namespace=NAMESPACE, resource="networkpolicies")
        if e["user"]["username"].endswith(f":{service_account}")
        and e["verb"] in {"create", "update", "patch", "delete"}
    ]


def test_the_kubernetes_shaped_example_applies_and_stays_in_sync(
    operator: OperatorProcess, admin_api: Any, control_plane: Any, identity: tuple[Path, str]
) -> None:
    body = example_body("kubernetes-only")
    body["metadata"]["namespace"] = NAMESPACE
    assert body["spec"]["serverVersion"] == "4.x"
    assert body["spec"]["driftCheckInterval"] == "1m30s"
    objects = custom(admin_api)
    objects.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    status = wait_for("Enforced", enforced_at(admin_api, 1))
    assert status["driftTotal"] == 0

    policies = network_policies(admin_api, NAMESPACE)
    assert set(policies) == {"svh-default-deny", "svh-allow-namespace", "svh-allow-frontend"}
    selector = policies["svh-allow-frontend"].spec.pod_selector
    assert selector.match_labels == {"app": "circleci-proxy"}
    assert [(e.key, e.operator, e.values) for e in selector.match_expressions] == [
        ("layer", "In", ["application"])
    ]
    ports = sorted(
        p.port for rule in policies["svh-allow-frontend"].spec.ingress for p in rule.ports
    )
    assert ports == [80, 443, 4647]
    first = operator_writes(control_plane, identity[1])
    assert sorted(first) == [
        "create svh-allow-frontend", "create svh-allow-namespace", "create svh-default-deny",
    ]  # fmt: skip

    # A new generation makes the operator reconcile again: nothing it wrote differs from what
    # the API server returns, so it writes nothing more.
    objects.patch_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, "circleci", {"spec": {"driftCheckInterval": "1m31s"}}
    )
    status = wait_for("Enforced at generation 2", enforced_at(admin_api, 2))
    assert status["driftTotal"] == 0
    assert operator_writes(control_plane, identity[1]) == first
