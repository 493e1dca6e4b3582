"""What the real kube-apiserver refuses at admission with the project's CRD (its CEL rules),
and what only the operator's model can refuse (it always does, naming the field)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from e2e.harness import GROUP, PLURAL, VERSION, custom, install_crd
from server_hardening.model import SpecError, parse_spec

pytestmark = pytest.mark.e2e

MESSAGE = "admin SSH from the whole internet is refused: scope the sources"


def body(name: str, sources: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServerHardening",
        "metadata": {"name": name},
        "spec": {
            "serverVersion": "4.3",
            "topology": {
                "kubernetesNodes": {"cidrs": ["10.0.0.0/16"]},
                "nomadClients": {"cidrs": ["10.1.0.0/16"]},
                "externalVMs": {"enabled": False},
            },
            "access": {"adminSSH": {"enabled": True, "sources": sources}},
        },
    }


def create(api: Any, namespace: str, name: str, sources: list[str]) -> ApiException | None:
    try:
        custom(api).create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body(name, sources), field_validation="Strict"
        )
    except ApiException as exc:
        return exc
    return None


@pytest.fixture(scope="module")
def crd(admin_api: Any) -> None:
    install_crd(admin_api)


@pytest.mark.parametrize(
    "sources",
    [
        ["::0/0"],
        ["1.2.3.4/0"],
        ["192.0.2.0/24", "0.0.0.0/0"],
        ["0.0.0.0/1", "128.0.0.0/1"],
        ["::/1", "8000::/1"],
        ["10.9.0.0/16", "128.0.0.1/1", "0.0.0.0/1"],  # halves with host bits set
    ],
)
def test_the_api_server_refuses_admin_ssh_from_the_world(
    admin_api: Any, namespace: str, crd: None, sources: list[str]
) -> None:
    refused = create(admin_api, namespace, "world", sources)
    assert refused is not None, f"admitted {sources}"
    assert refused.status == 422
    assert "spec.access.adminSSH" in refused.body
    assert MESSAGE in json.loads(refused.body)["message"]


def test_a_scoped_source_and_half_the_internet_are_admitted(
    admin_api: Any, namespace: str, crd: None
) -> None:
    assert create(admin_api, namespace, "scoped", ["192.0.2.0/24", "2001:db8::/48"]) is None
    assert create(admin_api, namespace, "half", ["0.0.0.0/1"]) is None


def test_the_world_in_more_than_two_pieces_passes_cel_and_the_model_refuses_it(
    admin_api: Any, namespace: str, crd: None
) -> None:
    """CEL in CRDs has no way to add up an arbitrary union; the operator's model does."""
    pieces = ["::/1", "8000::/2", "c000::/2"]
    assert create(admin_api, namespace, "pieces", pieces) is None
    stored = custom(admin_api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "pieces"
    )
    with pytest.raises(SpecError) as caught:
        parse_spec(stored["spec"])
    assert str(caught.value).startswith("spec.access.adminSSH.sources: ")
    assert "whole IPv6 internet" in str(caught.value)
