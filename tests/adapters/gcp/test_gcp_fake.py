"""The fake's fidelity: the real google-cloud-compute REST clients against it.

The client keeps an ``http://`` scheme given in ``client_options.api_endpoint`` (the REST
transport only prepends ``https://`` when the host has no scheme), so the fake needs no TLS.
Shapes are compared with the v1 REST reference (Firewall, FirewallList, Operation resources).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests
from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

from fakes.gcp_compute import FakeCompute

PROJECT = "fidelity-proj-1"


@pytest.fixture
def fake() -> Iterator[FakeCompute]:
    with FakeCompute() as server:
        yield server


@pytest.fixture
def client(fake: FakeCompute) -> compute_v1.FirewallsClient:
    return compute_v1.FirewallsClient(
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        transport="rest",
        client_options=ClientOptions(api_endpoint=fake.url),
    )


def firewall(name: str, **fields: object) -> compute_v1.Firewall:
    base: dict[str, object] = {
        "name": name,
        "network": "global/networks/default",
        "source_ranges": ["10.0.0.0/8"],
        "allowed": [compute_v1.Allowed(I_p_protocol="tcp", ports=["22", "80-81"])],
    }
    base.update(fields)
    return compute_v1.Firewall(**base)


def test_insert_get_patch_delete_round_trip(
    fake: FakeCompute, client: compute_v1.FirewallsClient
) -> None:
    op = client.insert(project=PROJECT, firewall_resource=firewall("fw-a"))
    op.result(timeout=5)  # DONE on return: no polling (which would go to the public endpoint)
    got = client.get(project=PROJECT, firewall="fw-a")
    assert got.kind == "compute#firewall"
    assert got.id and got.creation_timestamp
    assert got.self_link.endswith(f"/projects/{PROJECT}/global/firewalls/fw-a")
    assert got.network == (
        f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/global/networks/default"
    )
    assert got.priority == 1000 and got.direction == "INGRESS"
    assert [(a.I_p_protocol, list(a.ports)) for a in got.allowed] == [("tcp", ["22", "80-81"])]

    client.patch(
        project=PROJECT,
        firewall="fw-a",
        firewall_resource=compute_v1.Firewall(description="patched"),
    ).result(timeout=5)
    patched = client.get(project=PROJECT, firewall="fw-a")
    assert patched.description == "patched"
    assert list(patched.source_ranges) == ["10.0.0.0/8"]  # merge patch keeps the rest
    assert patched.id == got.id

    client.update(
        project=PROJECT,
        firewall="fw-a",
        firewall_resource=firewall("fw-a", source_tags=["t"], source_ranges=[]),
    ).result(timeout=5)
    replaced = client.get(project=PROJECT, firewall="fw-a")
    assert list(replaced.source_ranges) == [] and list(replaced.source_tags) == ["t"]

    client.delete(project=PROJECT, firewall="fw-a").result(timeout=5)
    with pytest.raises(exceptions.NotFound, match="was not found"):
        client.get(project=PROJECT, firewall="fw-a")


def test_duplicate_insert_is_a_conflict(client: compute_v1.FirewallsClient) -> None:
    client.insert(project=PROJECT, firewall_resource=firewall("fw-a")).result(timeout=5)
    with pytest.raises(exceptions.Conflict, match="already exists") as caught:
        client.insert(project=PROJECT, firewall_resource=firewall("fw-a"))
    assert caught.value.errors[0]["reason"] == "alreadyExists"


def test_same_request_id_returns_the_same_operation(
    fake: FakeCompute, client: compute_v1.FirewallsClient
) -> None:
    request_id = str(uuid.uuid4())
    first = client.insert_unary(
        request=compute_v1.InsertFirewallRequest(
            project=PROJECT, firewall_resource=firewall("fw-a"), request_id=request_id
        )
    )
    second = client.insert_unary(
        request=compute_v1.InsertFirewallRequest(
            project=PROJECT, firewall_resource=firewall("fw-a"), request_id=request_id
        )
    )
    assert first.name == second.name
    assert len(fake.rules(PROJECT)) == 1


@pytest.mark.parametrize(
    ("name", "fields", "reason"),
    [
        ("Bad_Name", {}, "Must be a match of regex"),
        ("a" * 64, {}, "Must be a match of regex"),
        ("fw-b", {"priority": 70000}, "resource.priority"),
        ("fw-b", {"source_ranges": ["10.0.0.300/8"]}, "resource.sourceRanges"),
        ("fw-b", {"source_ranges": ["10.0.0.0/8", "::/0"]}, "Cannot mix IPv4 and IPv6"),
        ("fw-b", {"direction": "EGRESS", "source_tags": ["a"]}, "Not allowed for EGRESS"),
        ("fw-b", {"denied": [compute_v1.Denied(I_p_protocol="all")]}, "both allowed and denied"),
    ],
)
def test_invalid_firewalls_are_refused(
    client: compute_v1.FirewallsClient, name: str, fields: dict[str, object], reason: str
) -> None:
    with pytest.raises(exceptions.BadRequest, match=reason):
        client.insert(project=PROJECT, firewall_resource=firewall(name, **fields))


def test_list_pages_and_filters(fake: FakeCompute, client: compute_v1.FirewallsClient) -> None:
    for i in range(5):
        client.insert(project=PROJECT, firewall_resource=firewall(f"svh-{i}")).result(timeout=5)
    client.insert(
        project=PROJECT, firewall_resource=firewall("other", network="global/networks/other")
    )
    request = compute_v1.ListFirewallsRequest(
        project=PROJECT, max_results=2, filter='network eq ".*/global/networks/default$"'
    )
    names = [f.name for f in client.list(request=request)]
    assert names == [f"svh-{i}" for i in range(5)]
    assert len(fake.calls("firewalls.list")) == 3  # 2 + 2 + 1

    by_name = compute_v1.ListFirewallsRequest(project=PROJECT, filter='name eq "svh-[13]"')
    assert [f.name for f in client.list(request=by_name)] == ["svh-1", "svh-3"]
    anded = compute_v1.ListFirewallsRequest(
        project=PROJECT, filter='(name ne "svh-.*") (network eq ".*/other$")'
    )
    assert [f.name for f in client.list(request=anded)] == ["other"]

    too_many = compute_v1.ListFirewallsRequest(project=PROJECT, max_results=501)
    with pytest.raises(exceptions.BadRequest, match="maxResults"):
        list(client.list(request=too_many))


def test_raw_shapes_match_the_reference(fake: FakeCompute) -> None:
    """Field names and kinds as the REST reference shows them (checked over plain HTTP)."""
    base = f"{fake.url}/compute/v1/projects/{PROJECT}/global"
    body = {
        "name": "fw-raw",
        "network": "global/networks/default",
        "sourceRanges": ["0.0.0.0/0"],
        "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
    }
    op = requests.post(f"{base}/firewalls", json=body, timeout=5).json()
    assert {
        "kind", "id", "name", "operationType", "targetLink", "targetId", "status", "progress",
        "insertTime", "startTime", "endTime", "selfLink", "user",
    } <= set(op)  # fmt: skip
    assert (op["kind"], op["operationType"], op["status"]) == (
        "compute#operation",
        "insert",
        "DONE",
    )
    waited = requests.post(f"{base}/operations/{op['name']}/wait", timeout=5).json()
    assert waited["name"] == op["name"] and waited["status"] == "DONE"
    listed = requests.get(f"{base}/firewalls", timeout=5).json()
    assert listed["kind"] == "compute#firewallList" and listed["items"][0]["name"] == "fw-raw"
    assert listed["id"] == f"projects/{PROJECT}/global/firewalls"
    err = requests.get(f"{base}/firewalls/nope", timeout=5)
    assert err.status_code == 404
    assert err.json()["error"]["errors"][0]["reason"] == "notFound"
    unknown = requests.post(f"{base}/firewalls", json={**body, "name": "x", "bogus": 1}, timeout=5)
    assert unknown.status_code == 400 and "Unknown name" in unknown.json()["error"]["message"]


def test_faults_answer_as_the_api_does(
    fake: FakeCompute, client: compute_v1.FirewallsClient
) -> None:
    fake.throttle("firewalls.get")
    with pytest.raises(exceptions.TooManyRequests):
        client.get(project=PROJECT, firewall="x", retry=None)
    fake.unavailable("firewalls.get")
    with pytest.raises(exceptions.ServiceUnavailable):
        client.get(project=PROJECT, firewall="x", retry=None)
    fake.deny_permission("firewalls.get", "compute.firewalls.get")
    with pytest.raises(exceptions.Forbidden, match=r"Required 'compute\.firewalls\.get'"):
        client.get(project=PROJECT, firewall="x", retry=None)
