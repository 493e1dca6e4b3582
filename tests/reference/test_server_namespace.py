"""The CircleCI Server 4.x namespace with CircleCI's monitoring reference beside it
(tests/reference/namespace.py): the NetworkPolicies the product renders for it, with the
components resolved from the install's own Services, let every flow through (np_eval, the
NetworkPolicy semantics) and keep the monitoring opening to the scraper and the listed ports.
The real API server runs the same check after apply (tests/e2e/test_reference_namespace.py)."""

from __future__ import annotations

from typing import Any

import pytest

from builders import OWNER
from reference import namespace as ns
from reference.flows import Flow
from server_hardening.compiler import compile_intent
from server_hardening.components import ResolvedComponent, from_service, lookups
from server_hardening.guide import Component
from server_hardening.model import parse_spec
from server_hardening.renderers.networkpolicy import render_network_policies
from truth import np_eval

# A policy a team made by hand for the monitoring reference before the product had a field for
# it: with unmanagedRules Remove it goes; the monitoring field must carry the flow alone.
HAND_MADE = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-prometheus", "namespace": ns.NAMESPACE},
    "spec": {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "telegraf"}},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 9273}]}],
    },
}


def spec(*, monitoring: dict[str, Any] | None = ns.MONITORING_SPEC, in_cluster: bool = True) -> Any:
    topology: dict[str, Any] = {
        "kubernetesNodes": {"cidrs": ["10.10.0.0/20"]},
        "kubernetesPods": {"cidrs": ["10.8.0.0/14"]},
        "nomadClients": {"cidrs": ["10.20.0.0/20"]},
        "externalVMs": {"enabled": False},
    }
    if not in_cluster:
        topology["nomadServers"] = {"cidrs": ["10.20.16.0/24"]}
    kubernetes: dict[str, Any] = {
        "networkPolicies": {"restrictEgress": True},
        "apiServer": {"cidrs": ["172.16.0.2/32"]},
    }
    if monitoring is not None:
        kubernetes["monitoring"] = monitoring
    return parse_spec({"serverVersion": "4.10", "topology": topology, "kubernetes": kubernetes})


def rendered(parsed: Any, in_cluster: bool = True) -> list[dict[str, Any]]:
    """The policies the operator writes, with the components resolved from the Services as the
    Kubernetes target resolves them."""
    intent = compile_intent(parsed)
    pinned, pending = lookups(intent)
    resolved: dict[Component, ResolvedComponent] = {c.component: c for c in pinned}
    by_name = {s["metadata"]["name"]: s for s in ns.services(in_cluster)}
    for lookup in pending:
        name = next(n for n in lookup.names if n in by_name)
        outcome = from_service(lookup, by_name[name])
        assert isinstance(outcome, ResolvedComponent), outcome
        resolved[lookup.component] = outcome
    return render_network_policies(intent, ns.NAMESPACE, OWNER, resolved)


def _party(name: str, in_cluster: bool) -> np_eval.Party:
    return ns.pods(in_cluster).get(name) or ns.OUTSIDE[name]


def _allowed(policies: list[dict[str, Any]], flow: Flow, in_cluster: bool = True) -> bool:
    return np_eval.allows(
        policies,
        _party(flow.source, in_cluster),
        _party(flow.destination, in_cluster),
        flow.port,
        flow.protocol.upper(),
    )


@pytest.mark.parametrize("unmanaged", ["Report", "Remove"])
@pytest.mark.parametrize("in_cluster", [True, False], ids=["in-cluster-nomad", "external-nomad"])
def test_every_flow_of_the_namespace_and_the_monitoring_reference_passes(
    unmanaged: str, in_cluster: bool
) -> None:
    managed = rendered(spec(in_cluster=in_cluster), in_cluster)
    policies = managed + ([HAND_MADE] if unmanaged == "Report" else [])
    blocked = [str(f) for f in ns.flows(in_cluster) if not _allowed(policies, f, in_cluster)]
    assert blocked == []
    opened = [str(f) for f in ns.CLOSED if _allowed(managed, f)]
    assert opened == []


def test_without_the_monitoring_field_nothing_extra_is_opened() -> None:
    managed = rendered(spec(monitoring=None))
    assert "svh-allow-monitoring" not in {p["metadata"]["name"] for p in managed}
    scrapes = [f for f in ns.flows() if f.source == "prometheus"]
    assert scrapes and not [str(f) for f in scrapes if _allowed(managed, f)]
    others = [f for f in ns.flows() if f.source != "prometheus"]
    assert not [str(f) for f in others if not _allowed(managed, f)]


def test_a_named_port_opens_only_pods_that_declare_it() -> None:
    by_name = {**ns.MONITORING_SPEC, "ports": ["status"]}  # Kong's status listener, by name
    managed = rendered(spec(monitoring=by_name))
    telegraf, kong = ns.pods()["telegraf"], ns.pods()["kong"]
    prometheus = ns.pods()["prometheus"]
    assert np_eval.allows(managed, prometheus, kong, 8100)
    assert not np_eval.allows(managed, prometheus, telegraf, 9273)
    assert not np_eval.allows(managed, prometheus, telegraf, 8100)


def test_the_service_port_name_of_the_monitoring_reference_is_no_container_port_name() -> None:
    """The ServiceMonitor's endpoint port, prometheus-client, names the Service port: 17
    characters, more than a container port name may have, so the field refuses it and says why
    (the pods are reached on 9273 by number, the default)."""
    from server_hardening.model import SpecError

    with pytest.raises(SpecError, match="not a valid IANA service name"):
        spec(monitoring={**ns.MONITORING_SPEC, "ports": ["prometheus-client"]})
    assert spec(
        monitoring={"namespaceSelector": ns.MONITORING_SPEC["namespaceSelector"]}
    ).kubernetes.monitoring.ports == [9273]
