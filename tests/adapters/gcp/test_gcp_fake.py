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
    # A bare client has no retry: the shapes are checked on a calm fake that answers at once.
    with FakeCompute(
        chaos_rate=0,
        operation_polls=0,
        networks=((PROJECT, "default"), (PROJECT, "other")),
    ) as server:
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


# -- what the fake holds beyond firewalls, and where it is no kinder than the API ----------------

NOMAD_SA = "nomad@fidelity-proj-1.iam.gserviceaccount.com"


def instances_client(fake: FakeCompute) -> compute_v1.InstancesClient:
    return compute_v1.InstancesClient(
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        transport="rest",
        client_options=ClientOptions(api_endpoint=fake.url),
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"source_tags": ["a"], "target_service_accounts": [NOMAD_SA]}, "Service accounts"),
        (
            {"source_service_accounts": [NOMAD_SA], "target_tags": ["b"], "source_ranges": []},
            "Service accounts",
        ),
        ({"source_ranges": [f"10.{i // 256}.{i % 256}.0/24" for i in range(257)]}, "At most 256"),
        ({"target_tags": [f"t{i}" for i in range(71)]}, "At most 70"),
        ({"source_tags": [f"s{i}" for i in range(31)]}, "At most 30"),
        ({"description": "x" * 2049}, "resource.description"),
        ({"allowed": [compute_v1.Allowed(I_p_protocol="tcp", ports=["22-"])]}, "ports"),
        ({"network": "global/networks/nowhere"}, "networks/nowhere' was not found"),
    ],
)
def test_what_the_api_refuses_the_fake_refuses(
    client: compute_v1.FirewallsClient, fields: dict[str, object], reason: str
) -> None:
    with pytest.raises(exceptions.GoogleAPICallError, match=reason):
        client.insert(project=PROJECT, firewall_resource=firewall("fw-c", **fields))


def test_instances_are_listed_across_zones_by_tag_and_paged(fake: FakeCompute) -> None:
    for i in range(3):
        fake.seed_instance(
            PROJECT, f"nomad-{i}", zone=("us-central1-a", "us-east1-b")[i % 2],
            network="default", tags=["nomad-client", "extra"], service_accounts=[NOMAD_SA],
            alias_ranges=["10.4.0.0/24"] if i == 0 else (),
        )  # fmt: skip
    fake.seed_instance(PROJECT, "node-0", network="default", tags=["k8s-node"])
    instances = instances_client(fake)
    request = compute_v1.AggregatedListInstancesRequest(
        project=PROJECT, filter='tags.items = "nomad-client"', max_results=2
    )
    found = sorted(
        (zone, i.name)
        for zone, scoped in instances.aggregated_list(request=request)
        for i in scoped.instances
    )
    assert found == [
        ("zones/us-central1-a", "nomad-0"),
        ("zones/us-central1-a", "nomad-2"),
        ("zones/us-east1-b", "nomad-1"),
    ]
    assert len(fake.calls("instances.aggregatedList")) == 2  # 2 + 1
    got = instances.get(project=PROJECT, zone="us-central1-a", instance="nomad-0")
    nic = got.network_interfaces[0]
    assert nic.network.endswith(f"/projects/{PROJECT}/global/networks/default")
    assert nic.network_i_p and [r.ip_cidr_range for r in nic.alias_ip_ranges] == ["10.4.0.0/24"]
    assert list(got.tags.items) == ["nomad-client", "extra"]
    assert [sa.email for sa in got.service_accounts] == [NOMAD_SA]
    assert got.zone.endswith("/zones/us-central1-a")


def test_an_instance_on_an_unknown_network_is_refused(fake: FakeCompute) -> None:
    instance = compute_v1.Instance(
        name="vm-1",
        network_interfaces=[compute_v1.NetworkInterface(network="global/networks/nowhere")],
    )
    with pytest.raises(exceptions.NotFound, match="networks/nowhere"):
        instances_client(fake).insert(
            project=PROJECT, zone="us-central1-a", instance_resource=instance
        )


def test_effective_firewalls_of_an_instance_are_the_rules_that_target_it(
    fake: FakeCompute,
) -> None:
    fake.seed_instance(
        PROJECT, "nomad-0", network="default", tags=["nomad-client"],
        service_accounts=[NOMAD_SA], secure_tags=["tagValues/123"],
    )  # fmt: skip
    rule = {"network": "global/networks/default", "sourceRanges": ["0.0.0.0/0"],
            "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]}  # fmt: skip
    fake.seed(PROJECT, {**rule, "name": "everyone"})
    fake.seed(PROJECT, {**rule, "name": "by-tag", "targetTags": ["nomad-client"]})
    fake.seed(PROJECT, {**rule, "name": "other-tag", "targetTags": ["k8s-node"]})
    fake.seed(PROJECT, {**rule, "name": "by-sa", "targetServiceAccounts": [NOMAD_SA]})
    fake.seed(PROJECT, {**rule, "name": "elsewhere", "network": "global/networks/other"})
    deny_443 = {
        "priority": 100, "direction": "EGRESS", "action": "deny",
        "match": {"destIpRanges": ["0.0.0.0/0"],
                  "layer4Configs": [{"ipProtocol": "tcp", "ports": ["443"]}]},
    }  # fmt: skip
    fake.seed_firewall_policy(
        PROJECT, "default",
        {"name": "net-policy", "type": "NETWORK", "rules": [
            {**deny_443, "targetSecureTags": [{"name": "tagValues/123", "state": "EFFECTIVE"}]},
            {**deny_443, "priority": 200, "targetServiceAccounts": ["someone@else"]},
        ]},
    )  # fmt: skip
    fake.seed_firewall_policy(
        PROJECT, "default", {"name": "1234567", "type": "HIERARCHY", "shortName": "org",
                             "rules": [{**deny_443, "action": "goto_next"}]},
    )  # fmt: skip
    answer = instances_client(fake).get_effective_firewalls(
        project=PROJECT, zone="us-central1-a", instance="nomad-0", network_interface="nic0"
    )
    assert sorted(f.name for f in answer.firewalls) == ["by-sa", "by-tag", "everyone"]
    policies = [(p.name, p.type_, [r.priority for r in p.rules]) for p in answer.firewall_policys]
    assert policies == [("1234567", "HIERARCHY", [100]), ("net-policy", "NETWORK", [100])]
    kept = answer.firewall_policys[1].rules[0]
    assert (kept.action, kept.direction, list(kept.match.dest_ip_ranges)) == (
        "deny", "EGRESS", ["0.0.0.0/0"],
    )  # fmt: skip
    assert [(c.ip_protocol, list(c.ports)) for c in kept.match.layer4_configs] == [("tcp", ["443"])]
    networks = compute_v1.NetworksClient(
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        transport="rest",
        client_options=ClientOptions(api_endpoint=fake.url),
    )
    whole = networks.get_effective_firewalls(project=PROJECT, network="default")
    assert [len(p.rules) for p in whole.firewall_policys] == [1, 2]
    with pytest.raises(exceptions.NotFound, match="networks/nowhere"):
        networks.get_effective_firewalls(project=PROJECT, network="nowhere")


def test_a_policy_rule_the_api_would_refuse_is_refused_when_seeded(fake: FakeCompute) -> None:
    bad = {"priority": 1, "direction": "INGRESS", "action": "permit",
           "match": {"layer4Configs": [{"ipProtocol": "tcp"}]}}  # fmt: skip
    with pytest.raises(Exception, match=r"rules\[0\]\.action"):
        fake.seed_firewall_policy(PROJECT, "default", {"name": "p", "rules": [bad]})


def test_by_default_operations_finish_later_and_requests_are_refused_unasked() -> None:
    with FakeCompute(networks=((PROJECT, "default"),), operation_polls=2, seed=0) as fake:
        base = f"{fake.url}/compute/v1/projects/{PROJECT}/global"
        body = {"name": "fw-late", "network": "global/networks/default",
                "sourceRanges": ["10.0.0.0/8"], "allowed": [{"IPProtocol": "tcp"}]}  # fmt: skip
        first_read = requests.get(f"{base}/firewalls", timeout=5)
        assert first_read.status_code == 429
        first_write = requests.post(f"{base}/firewalls", json=body, timeout=5)
        assert first_write.json()["error"]["errors"][0]["reason"] == "resourceNotReady"
        op = requests.post(f"{base}/firewalls", json=body, timeout=5).json()
        assert op["status"] == "RUNNING"
        assert "fw-late" not in fake.rules(PROJECT)  # not in effect before DONE
        statuses = [
            requests.post(f"{base}/operations/{op['name']}/wait", timeout=5).json().get("status")
            for _ in range(4)
        ]
        assert statuses[-1] == "DONE" and statuses[0] != "DONE"
        assert "fw-late" in fake.rules(PROJECT)
        assert fake.chaos_count() >= 2
