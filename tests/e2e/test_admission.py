"""One verdict for bad input: the real API server, through the generated CRD, refuses every
admission case of the bad-spec corpus (tests/bad_specs.py) naming the same fields as the model.

Requests are dry runs (validated like a create, stored nowhere) with strict field validation,
which is what kubectl sends by default.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from bad_specs import BadSpec, admission_cases, model_only_cases
from builders import example_body, example_names
from e2e.harness import GROUP, PLURAL, VERSION, ensure_namespace, install_crd
from server_hardening.model import SpecError, parse_resource, parse_spec

NAMESPACE = "admission"


@pytest.fixture(scope="module")
def objects(admin_api: Any) -> Any:
    install_crd(admin_api)
    ensure_namespace(admin_api, NAMESPACE)
    return client.CustomObjectsApi(admin_api)


def resource(spec: dict[str, Any], name: str = "circleci") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServerHardening",
        "metadata": {"name": name},
        "spec": spec,
    }


def api_server_paths(objects: Any, spec: dict[str, Any]) -> frozenset[str]:
    """The fields the API server names when it refuses ``spec`` (empty: it accepted it)."""
    try:
        objects.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, resource(spec),
            dry_run="All", field_validation="Strict",
        )  # fmt: skip
    except ApiException as exc:
        assert exc.status in {400, 422}, exc.body
        body = json.loads(exc.body)
        causes = (body.get("details") or {}).get("causes") or []
        # Strict field validation names an unknown field in the message, as a JSON path.
        if exc.status == 400 and not causes:
            return frozenset(_unknown_fields(body["message"]))
        # "<nil>": "some validation rules were not checked because the object was invalid".
        return frozenset(c["field"] for c in causes if c.get("field") not in {None, "<nil>"})
    return frozenset()


def _unknown_fields(message: str) -> list[str]:
    # e.g. 'strict decoding error: unknown field "spec.topology.nomadClient"'
    return [part.split('"')[1] for part in message.split("unknown field ")[1:]]


def model_paths(spec: dict[str, Any]) -> frozenset[str]:
    try:
        parse_spec(spec)
    except SpecError as exc:
        return frozenset(e.path for e in exc.errors)
    return frozenset()


@pytest.mark.parametrize("case", admission_cases(), ids=lambda c: c.name)
def test_the_api_server_and_the_model_name_the_same_field(objects: Any, case: BadSpec) -> None:
    assert model_paths(case.spec) == case.paths
    assert api_server_paths(objects, case.spec) == case.expected_api_paths, case.api_paths_reason


@pytest.mark.parametrize("case", model_only_cases(), ids=lambda c: c.name)
def test_what_the_crd_cannot_say_is_left_to_the_model(objects: Any, case: BadSpec) -> None:
    assert model_paths(case.spec) == case.paths
    assert api_server_paths(objects, case.spec) == frozenset(), (
        f"the API server now refuses {case.name!r}: move it to the admission cases"
    )


@pytest.mark.parametrize("name", example_names())
def test_every_example_is_admitted_and_parsed(objects: Any, name: str) -> None:
    body = example_body(name)
    parse_resource(body)
    created = objects.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, resource(body["spec"], f"example-{name}"),
        field_validation="Strict",
    )  # fmt: skip
    # What the API server stores parses to the same spec as the file.
    assert parse_spec(created["spec"]) == parse_spec(body["spec"])
