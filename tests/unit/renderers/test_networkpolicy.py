"""NetworkPolicies: their shape, their ownership marks, and, over a probe matrix, their meaning."""

from __future__ import annotations

from typing import Any

import pytest

from builders import OWNER, make_spec
from server_hardening.compiler import compile_intent
from server_hardening.components import PodPort, PodSelector, ResolvedComponent
from server_hardening.guide import Component
from server_hardening.model import ServerHardeningSpec
from server_hardening.plan import offline_components
from server_hardening.renderers.networkpolicy import (
    desired_items,
    normalise_spec,
    policy_fingerprint,
    render_network_policies,
)
from truth.np_eval import Outside, Pod, allows

NS = "circleci-server"


def render(spec: ServerHardeningSpec) -> list[dict[str, Any]]:
    intent = compile_intent(spec)
    resolved, _ = offline_components(intent)
    return render_network_policies(intent, NS, OWNER, resolved)


def by_name(policies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in policies}


def test_every_policy_is_marked_as_managed_and_cites_its_rows() -> None:
    for policy in render(make_spec()):
        meta = policy["metadata"]
        assert meta["namespace"] == NS
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "server-hardening"
        assert meta["labels"]["hardening.circleci.com/owner"] == "circleci-server.circleci"
        assert (
            meta["annotations"]["hardening.circleci.com/owner"]
            == "circleci-server/circleci/0000-test-uid"
        )
        assert meta["annotations"]["hardening.circleci.com/guide-rows"]
        assert meta["name"].startswith("svh-")


def test_v3_writes_one_policy_per_service_and_a_default_deny() -> None:
    names = set(by_name(render(make_spec())))
    assert names == {
        "svh-default-deny", "svh-allow-namespace", "svh-allow-circleci-server-traefik",
        "svh-allow-nomad-server-external", "svh-allow-output-processor", "svh-allow-vm-service",
    }  # fmt: skip


def test_v4_components_behind_the_proxy_share_one_policy() -> None:
    policies = by_name(render(make_spec(serverVersion="4.2")))
    proxy = policies["svh-allow-circleci-proxy"]
    assert proxy["spec"]["podSelector"] == {"matchLabels": {"app": "circleci-proxy"}}
    rows = proxy["metadata"]["annotations"]["hardening.circleci.com/guide-rows"].split(",")
    assert {"LB-IN-1", "LB-IN-2", "LB-IN-3", "LB-IN-4", "LB-IN-5", "CHOICE-NP-SNAT"} <= set(rows)
    assert len(policies) == 3


def test_pod_ports_come_from_the_resolution_not_the_service() -> None:
    intent = compile_intent(make_spec(serverVersion="4.3"))
    proxy = ResolvedComponent(
        Component.FRONTEND,
        PodSelector.of_labels({"app": "nginx"}),
        (PodPort(8080), PodPort(8443)),
        "service/circleci-proxy",
        "circleci-proxy",
    )
    nomad = ResolvedComponent(
        Component.NOMAD_SERVER,
        PodSelector.of_labels({"app": "nginx"}),
        (PodPort("nomad-rpc"),),
        "service/circleci-proxy",
        "circleci-proxy",
    )
    policies = by_name(
        render_network_policies(
            intent, NS, OWNER, {Component.FRONTEND: proxy, Component.NOMAD_SERVER: nomad}
        )
    )
    ingress = policies["svh-allow-circleci-proxy"]["spec"]["ingress"]
    assert [r["ports"] for r in ingress] == [
        [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8443}],
        [{"protocol": "TCP", "port": "nomad-rpc"}],
    ]


def test_restrict_egress_adds_dns_and_the_guide_outbound_rows() -> None:
    spec = make_spec(
        **{
            "kubernetes.networkPolicies": {"restrictEgress": True},
            "kubernetes.apiServer": {"cidrs": ["10.0.0.1/32"]},
        }
    )
    policies = by_name(render(spec))
    assert policies["svh-default-deny"]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    egress = policies["svh-allow-egress"]
    rows = egress["metadata"]["annotations"]["hardening.circleci.com/guide-rows"].split(",")
    assert {"CHOICE-NP-DNS", "CHOICE-NP-APISERVER", "K8S-OUT-1", "K8S-OUT-2", "ALL-OUT-3"} <= set(
        rows
    )


def test_disabled_network_policies_render_nothing() -> None:
    assert render(make_spec(**{"kubernetes.networkPolicies": {"enabled": False}})) == []


def test_server_defaults_do_not_count_as_a_change() -> None:
    desired = render(make_spec())[2]
    served = {**desired, "spec": {**desired["spec"]}}
    served["spec"]["ingress"] = [
        {"from": list(reversed(r["from"])), "ports": [{"port": p["port"]} for p in r["ports"]]}
        for r in desired["spec"]["ingress"]
    ]
    assert policy_fingerprint(served) == policy_fingerprint(desired)
    widened = {**desired, "spec": {**desired["spec"], "ingress": [{}]}}
    assert normalise_spec(widened["spec"]) != normalise_spec(desired["spec"])


def test_desired_items_are_keyed_by_name_with_their_rows() -> None:
    items = desired_items(render(make_spec()))
    assert [i.key for i in items][:2] == ["svh-default-deny", "svh-allow-namespace"]
    assert items[0].rows == ("CHOICE-NP-DEFAULT-DENY",)


# -- truth table ------------------------------------------------------------------------------

NODE = Outside("10.0.0.10")
NOMAD = Outside("10.1.0.10")
VM = Outside("10.2.0.10")
WORLD = Outside("198.51.100.7")


def pods(spec: ServerHardeningSpec) -> dict[str, Pod]:
    v3 = spec.server_version.startswith("3")
    front = "circleci-server-traefik" if v3 else "circleci-proxy"
    nomad = "nomad-server-external" if v3 else "circleci-proxy"
    return {
        "frontend": Pod(NS, {"app": front}, "172.16.0.2"),
        "nomad-server": Pod(NS, {"app": nomad}, "172.16.0.3"),
        "postgres": Pod(NS, {"app": "postgresql", "layer": "data"}, "172.16.0.4"),
        "api": Pod(NS, {"app": "api-service"}, "172.16.0.5"),
        "stranger": Pod("other", {"app": "x"}, "172.16.9.9"),
    }


CASES = [
    ("world", "frontend", 443, True, "LB-IN-2"),
    ("world", "frontend", 80, True, "LB-IN-1"),
    ("nomad", "nomad-server", 4647, True, "LB-IN-4"),
    ("node", "nomad-server", 4647, True, "CHOICE-NP-SNAT: NodePort hop"),
    ("world", "nomad-server", 4647, False, "4647 only from Nomad clients"),
    ("world", "postgres", 5432, False, "default deny"),
    ("nomad", "postgres", 5432, False, "default deny"),
    ("vm", "api", 8080, False, "default deny"),
    ("api", "postgres", 5432, True, "CHOICE-NP-NAMESPACE"),
    ("stranger", "postgres", 5432, False, "other namespaces are denied"),
]


@pytest.mark.parametrize("version", ["3", "4.0", "4.3"])
@pytest.mark.parametrize(("source", "destination", "port", "expected", "why"), CASES)
def test_truth_table(
    version: str, source: str, destination: str, port: int, expected: bool, why: str
) -> None:
    spec = make_spec(serverVersion=version)
    policies = render(spec)
    everyone: dict[str, Pod | Outside] = {
        "world": WORLD,
        "nomad": NOMAD,
        "node": NODE,
        "vm": VM,
        **pods(spec),
    }
    verdict = allows(policies, everyone[source], everyone[destination], port)
    assert verdict is expected, f"{source} -> {destination}:{port} ({why}) on v{version}"


def test_truth_table_with_restricted_egress() -> None:
    spec = make_spec(**{"kubernetes.networkPolicies": {"restrictEgress": True}})
    policies = render(spec)
    p = pods(spec)
    kube_dns = Pod("kube-system", {"k8s-app": "kube-dns"}, "172.16.100.10")
    assert allows(policies, p["api"], kube_dns, 53, "UDP")
    assert allows(policies, p["api"], NOMAD, 4647)  # K8S-OUT-2
    assert allows(policies, p["api"], VM, 2376)  # K8S-OUT-1
    assert allows(policies, p["api"], WORLD, 443)  # ALL-OUT-3
    assert allows(policies, p["api"], p["postgres"], 5432)
    assert not allows(policies, p["api"], WORLD, 25)
    assert not allows(policies, p["api"], NOMAD, 64535)


def test_a_spec_selector_is_written_as_the_kubernetes_label_selector_it_is() -> None:
    spec = make_spec(
        serverVersion="4.3",
        **{
            "kubernetes.components": {
                "frontend": {
                    "podSelector": {
                        "matchLabels": {"app": "kong"},
                        "matchExpressions": [
                            {"key": "track", "operator": "In", "values": ["stable"]},
                            {"key": "canary", "operator": "DoesNotExist"},
                        ],
                    },
                    "ports": [8000, "proxy-tls"],
                }
            }
        },
    )
    policies = render(spec)
    (frontend,) = [p for p in policies if "LB-IN-1" in p["metadata"]["annotations"][
        "hardening.circleci.com/guide-rows"]]  # fmt: skip
    assert frontend["spec"]["podSelector"] == {
        "matchLabels": {"app": "kong"},
        "matchExpressions": [
            {"key": "track", "operator": "In", "values": ["stable"]},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    assert frontend["spec"]["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": 8000},
        {"protocol": "TCP", "port": "proxy-tls"},
    ]
    world = Outside("198.51.100.7")
    kong = {"app": "kong", "track": "stable"}
    assert allows(policies, world, Pod(NS, kong, "10.0.5.5"), 8000)
    assert not allows(policies, world, Pod(NS, {**kong, "canary": "yes"}, "10.0.5.6"), 8000)
    assert not allows(policies, world, Pod(NS, {**kong, "track": "edge"}, "10.0.5.7"), 8000)


def test_with_external_nomad_servers_the_pods_reach_them_and_no_policy_admits_4647() -> None:
    spec = make_spec(
        serverVersion="4.8",
        **{
            "topology.nomadServers": {"cidrs": ["10.3.0.0/24"]},
            "kubernetes.networkPolicies": {"restrictEgress": True},
        },
    )
    policies = render(spec)
    pod = Pod(NS, {"app": "frontend"}, "10.0.5.5")
    server = Outside("10.3.0.10")
    assert all(allows(policies, pod, server, port) for port in (4646, 4647, 4648))
    assert not allows(policies, pod, Outside("10.1.0.10"), 4647)  # K8S-OUT-2 moved to the servers
    rows = {
        row
        for p in policies
        for row in p["metadata"]["annotations"]["hardening.circleci.com/guide-rows"].split(",")
    }
    assert "V48-K8S-OUT-1" in rows and "LB-IN-4" not in rows


MONITORING = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    "ports": [9273, "status"],
}


@pytest.mark.parametrize("restrict_egress", [False, True])
def test_the_monitoring_reference_reaches_the_listed_ports_and_nothing_else(
    restrict_egress: bool,
) -> None:
    """CHOICE-NP-MONITORING as a truth table: the scraper (namespace and pod selector together)
    on the listed pod ports of any pod in the namespace; nobody else, no other port."""
    spec = make_spec(
        **{
            "kubernetes.monitoring": MONITORING,
            "kubernetes.networkPolicies": {"restrictEgress": restrict_egress},
        }
    )
    policies = render(spec)
    monitoring = by_name(policies)["svh-allow-monitoring"]
    assert (
        monitoring["metadata"]["annotations"]["hardening.circleci.com/guide-rows"]
        == "CHOICE-NP-MONITORING"
    )
    assert monitoring["spec"]["ingress"] == [
        {
            "from": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }],
            "ports": [{"protocol": "TCP", "port": 9273}, {"protocol": "TCP", "port": "status"}],
        }
    ]  # fmt: skip
    ns = OWNER.namespace
    telegraf = Pod(ns, {"app.kubernetes.io/name": "telegraf"}, "10.0.5.1")
    kong = Pod(ns, {"app": "kong"}, "10.0.5.2", {"status": 8100})
    prometheus = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"}, "10.0.9.1")
    grafana = Pod("monitoring", {"app": "grafana"}, "10.0.9.2")
    stranger = Pod("team-x", {"app.kubernetes.io/name": "prometheus"}, "10.0.9.3")
    table = [
        (prometheus, telegraf, 9273, True),
        (prometheus, kong, 8100, True),  # the named port, on the pod that declares it
        (prometheus, telegraf, 8100, False),  # telegraf declares no "status" port
        (prometheus, telegraf, 8125, False),
        (grafana, telegraf, 9273, False),  # not the scraper's pods
        (stranger, telegraf, 9273, False),  # the scraper's labels in another namespace
        (Outside("198.51.100.7"), telegraf, 9273, False),
    ]
    for src, dst, port, expected in table:
        assert allows(policies, src, dst, port) is expected, (src, dst, port)
    without = render(make_spec())
    assert "svh-allow-monitoring" not in by_name(without)
    assert not allows(without, prometheus, telegraf, 9273)
