"""A component whose Service vanished keeps its allow from what the resource remembers
(``status.resolvedComponents``): rendered as it was, re-created if deleted, reported until the
Service is back; a memory that does not fit is never trusted."""

from __future__ import annotations

from typing import Any

import pytest

from builders import OWNER, make_spec
from server_hardening import components
from server_hardening.compiler import compile_intent
from server_hardening.guide import Component
from server_hardening.reconcile import Report
from server_hardening.renderers.networkpolicy import render_network_policies
from server_hardening.rules import FindingCode
from server_hardening.targets.kubeapi import ApiError
from server_hardening.targets.kubernetes import KubernetesTarget, resolve_components

NAMESPACE = OWNER.namespace


def _service(name: str, selector: dict[str, str], ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"selector": selector, "ports": ports}}


PROXY = _service(
    "circleci-proxy",
    {"app": "circleci-proxy", "tier": "edge"},
    [
        {"port": 80, "targetPort": 8080},
        {"port": 443, "targetPort": "https"},
        {"port": 4647, "targetPort": 4647},
    ],
)


class Services:
    """The Services the API server holds: a GET of any other answers 404."""

    def __init__(self, *services: dict[str, Any]) -> None:
        self.services = {s["metadata"]["name"]: s for s in services}

    def get(self, path: str) -> dict[str, Any]:
        name = path.rsplit("/", 1)[-1]
        if name not in self.services:
            raise ApiError(404, "Not Found", '{"message": "services \\"x\\" not found"}')
        return self.services[name]


def _resolve(api: Services, remembered: list[dict[str, Any]] | tuple[()] = ()) -> Any:
    return resolve_components(
        api, NAMESPACE, compile_intent(make_spec(serverVersion="4.8")), remembered=remembered
    )  # type: ignore[arg-type]


def test_what_is_remembered_renders_exactly_the_allow_the_service_gave() -> None:
    intent = compile_intent(make_spec(serverVersion="4.8"))
    live, _, _ = _resolve(Services(PROXY))
    memory = list(KubernetesTarget(intent, OWNER, Services(PROXY), live).remembered)  # type: ignore[arg-type]
    assert {e["service"] for e in memory} == {"circleci-proxy"}

    recalled, findings, gone = _resolve(Services(), memory)

    assert gone == []
    assert render_network_policies(intent, NAMESPACE, OWNER, recalled) == (
        render_network_policies(intent, NAMESPACE, OWNER, live)
    )
    # One finding per Service (the metric counts Services), naming both components behind it.
    (missing,) = [f for f in findings if f.code is FindingCode.COMPONENT_SERVICE_MISSING]
    assert missing.message.startswith("frontend, nomadServer: Service circleci-proxy is gone")
    assert missing.objects == ("svh-allow-circleci-proxy",)
    assert not [f for f in findings if f.code is FindingCode.SERVICE_NOT_FOUND and
                "circleci-proxy" in f.message]  # fmt: skip
    # Still remembered while the Service is gone, so the next pass recalls it again.
    again = KubernetesTarget(intent, OWNER, Services(), recalled)  # type: ignore[arg-type]
    assert list(again.remembered) == memory


def test_without_a_memory_a_vanished_service_is_not_found() -> None:
    resolved, findings, gone = _resolve(Services())
    assert Component.FRONTEND not in resolved
    assert any(lookup.component is Component.FRONTEND for lookup in gone)
    assert any(f.code is FindingCode.SERVICE_NOT_FOUND for f in findings)


@pytest.mark.parametrize(
    "entry",
    [
        {"service": "another-service"},  # the spec now names another Service
        {"podSelector": {}},  # would select every pod
        {"ports": []},
        {"ports": [{"protocol": "TCP"}]},
        {"podSelector": "app=x"},
    ],
)
def test_a_memory_that_does_not_fit_is_not_trusted(entry: dict[str, Any]) -> None:
    live, _, _ = _resolve(Services(PROXY))
    intent = compile_intent(make_spec(serverVersion="4.8"))
    memory = [
        {**e, **entry}
        for e in KubernetesTarget(intent, OWNER, Services(PROXY), live).remembered  # type: ignore[arg-type]
    ]
    resolved, findings, _ = _resolve(Services(), memory)
    assert Component.FRONTEND not in resolved
    assert not any(f.code is FindingCode.COMPONENT_SERVICE_MISSING for f in findings)


def test_status_keeps_the_memory_when_the_cluster_could_not_be_read() -> None:
    entry = components.remembered_entry(
        components.ResolvedComponent(
            Component.FRONTEND,
            components.PodSelector.of_labels({"app": "circleci-proxy"}),
            (components.PodPort(8443),),
            source="service/circleci-proxy",
            service="circleci-proxy",
        )
    )
    import datetime as dt

    from server_hardening.reconcile import Phase, TargetReport

    def report(*targets: TargetReport) -> Report:
        return Report(OWNER, 1, "Enforce", Phase.ENFORCED, "Enforced", "",
                      dt.datetime(2026, 1, 1, tzinfo=dt.UTC), targets=list(targets))  # fmt: skip

    seen = report(TargetReport("kubernetes", observed=True, remembered=(entry,)))
    assert seen.status()["resolvedComponents"] == [entry]
    unread = report(TargetReport("kubernetes", observed=False))
    assert unread.status({"resolvedComponents": [entry]})["resolvedComponents"] == [entry]
