"""The NetworkPolicy and Service watches keep only what matters: the versions of objects in
namespaces that have a ServerHardening. The watches are cluster-wide; what other namespaces
hold is dropped on arrival and forgotten when a namespace's last resource goes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from builders import make_spec
from server_hardening import handlers, service
from server_hardening.service import OperatorState

WITH, WITHOUT = "circleci-server", "team-a"


def _state() -> OperatorState:
    return OperatorState(factory=None, resources=None)  # type: ignore[arg-type]


def _event(namespace: str, name: str, version: str, type_: str | None) -> dict[str, Any]:
    return {
        "type": type_,
        "object": {"metadata": {"namespace": namespace, "name": name, "resourceVersion": version}},
    }


def _deliver(state: OperatorState, index: dict[str, list[str]], event: dict[str, Any]) -> None:
    namespace = event["object"]["metadata"]["namespace"]
    memo = SimpleNamespace(state=state)
    kwargs = {"by_namespace": index}
    asyncio.run(handlers._watched("service", namespace, event, memo, kwargs))  # type: ignore[arg-type]


def test_services_of_namespaces_without_a_resource_are_not_kept() -> None:
    state = _state()
    index = {WITH: ["circleci"]}
    for namespace in (WITH, WITHOUT):  # the initial listing
        for name in ("circleci-proxy", "web", "db"):
            _deliver(state, index, _event(namespace, name, "1", None))
    _deliver(state, index, _event(WITHOUT, "web", "2", "MODIFIED"))  # no resource: no reconcile
    assert state.versions.namespaces() == {WITH}


def test_a_namespaces_objects_are_forgotten_with_its_last_resource() -> None:
    state = _state()
    spec = make_spec().model_dump(by_alias=True, mode="json")
    service.register(state, WITH, "a", "uid-a", spec, 1)
    service.register(state, WITH, "b", "uid-b", spec, 1)
    state.versions.seen(WITH, "service", "circleci-proxy", "1")
    service.unregister(state, WITH, "a")
    assert state.versions.namespaces() == {WITH}  # "b" still needs them
    service.unregister(state, WITH, "b")
    assert state.versions.namespaces() == set()
