"""What ``kubectl explain`` and ``kubectl get -o wide`` show comes from the generated CRD: every
property of the spec and the status described, the status with a schema (open only for the
recorded spec), and the wide columns readable in a status the operator really writes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from builders import make_spec
from server_hardening import service
from server_hardening.crd import PRINTER_COLUMNS, crd
from server_hardening.status import ServerHardeningStatus
from unit.service.test_idle_operator import NAME, NS, Policies, make_state, resources


def root_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def properties(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property under ``node``, with its path (``.spec.topology``, ``.status.targets[]``)."""
    for name, child in (node.get("properties") or {}).items():
        yield f"{path}.{name}", child
        yield from properties(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from properties(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from properties(node["additionalProperties"], f"{path}.<key>")


def test_every_property_of_the_crd_is_described() -> None:
    found = dict(properties(root_schema()))
    assert len([p for p in found if p.startswith(".status.")]) >= 30
    assert len([p for p in found if p.startswith(".spec.")]) >= 100
    undescribed = [path for path, schema in found.items() if not schema.get("description")]
    # metadata is ObjectMeta: the API server describes it and refuses a CRD that does.
    assert undescribed == [".metadata"]


def test_only_the_recorded_spec_in_status_is_open() -> None:
    open_paths = [
        path for path, schema in properties(root_schema())
        if schema.get("x-kubernetes-preserve-unknown-fields")
    ]  # fmt: skip
    assert open_paths == [".status.lastValidSpec.spec"]


def written_statuses() -> list[dict[str, Any]]:
    """Statuses the operator writes: a clean pass, a drifted one, a refused spec."""
    statuses = []
    state = make_state(Policies({"a": "1"}))
    service.reconcile_resource(state, NS, NAME)
    drifted = make_state(Policies({"a": "1", "b": "1"}, held={"a": "2"}))
    service.reconcile_resource(drifted, NS, NAME)
    spec = make_spec().model_dump(by_alias=True, mode="json")
    spec["mode"] = "audit"
    invalid = make_state(Policies({}), spec=spec)
    service.reconcile_resource(invalid, NS, NAME)
    for each in (state, drifted, invalid):
        statuses.extend(resources(each).patches)
    return statuses


@pytest.mark.parametrize("status", written_statuses(), ids=["clean", "drifted", "invalid"])
def test_a_status_the_operator_writes_fits_the_schema(status: dict[str, Any]) -> None:
    ServerHardeningStatus.model_validate(status)


def _at(document: dict[str, Any], json_path: str) -> Any:
    """The value at a printer column's simple JSON path (``.status.x``, or the Ready
    condition's filter)."""
    if "[?(@.type==" in json_path:
        head, rest = json_path.split("[?(@.type==", 1)
        wanted, field = rest.split(")]", 1)
        items = _at(document, head)
        match = next(i for i in items if i["type"] == wanted.strip('"'))
        return match[field.lstrip(".")]
    node: Any = document
    for part in json_path.strip(".").split("."):
        node = node.get(part)
    return node


def test_the_wide_columns_show_findings_last_check_and_the_ready_message() -> None:
    wide = {c["name"]: c for c in PRINTER_COLUMNS if c.get("priority") == 1}
    assert set(wide) == {"Findings", "Last Check", "Message"}
    drifted = make_state(Policies({"a": "1", "b": "1"}, held={"a": "2"}))
    service.reconcile_resource(drifted, NS, NAME)
    (status,) = resources(drifted).patches
    document = {"status": status, "spec": {}}
    assert isinstance(_at(document, wide["Findings"]["jsonPath"]), int)
    assert _at(document, wide["Last Check"]["jsonPath"]) == status["lastDriftCheckTime"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert _at(document, wide["Message"]["jsonPath"]) == ready["message"]
