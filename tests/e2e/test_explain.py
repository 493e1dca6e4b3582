"""``kubectl explain serverhardening`` on a real kube-apiserver: kubectl reads the group's
OpenAPI v3 document, so every property of the spec and the status must carry its description
there, as the generated CRD wrote it."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from e2e.harness import GROUP, VERSION, install_crd, wait_for
from server_hardening.crd import crd
from unit.crd.test_crd_schema import properties


@pytest.fixture(scope="module")
def published(admin_api: Any) -> dict[str, Any]:
    """The ServerHardening schema as the API server publishes it (what kubectl explain reads)."""
    install_crd(admin_api)
    generated = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def current() -> dict[str, Any] | None:
        # Published a moment after the CRD is established, and again after it changes.
        try:
            document = admin_api.call_api(
                f"/openapi/v3/apis/{GROUP}/{VERSION}",
                "GET",
                response_type="object",
                _return_http_data_only=True,
            )
        except ApiException:
            return None  # not published yet
        schemas = document["components"]["schemas"]
        (name,) = [n for n in schemas if n.endswith(".ServerHardening")]
        schema: dict[str, Any] = schemas[name]
        served = dict(properties(schema))
        return schema if ".status.findingsTotal" in served or not generated else None

    return wait_for("the group's OpenAPI v3 document", current)


def test_kubectl_explain_describes_every_field_of_spec_and_status(
    published: dict[str, Any],
) -> None:
    generated = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    expected = {
        path: schema["description"]
        for path, schema in properties(generated)
        if path.startswith((".spec", ".status"))
    }
    served = dict(properties(published))
    missing = [path for path in expected if not served.get(path, {}).get("description")]
    assert missing == []
    assert {path: served[path]["description"] for path in expected} == expected
    assert len(expected) > 150
