"""The guide's Kubernetes rows verified on a namespace's pods under every NetworkPolicy in it
(``verification.cluster_checks`` answered by ``policy.namespacereach``)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from builders import OWNER, make_spec
from server_hardening.compiler import compile_intent
from server_hardening.machines import ClusterPod, DeclaredPort, NamespaceMachines
from server_hardening.model import ServerHardeningSpec
from server_hardening.plan import offline_components
from server_hardening.policy.namespacereach import NamespaceReach, pods_of
from server_hardening.policy.podreach import Outside, Pod, as_source, decide
from server_hardening.renderers.networkpolicy import render_network_policies
from server_hardening.rules import FindingCode, Role
from server_hardening.verification import Check, Pods, Verdict, cluster_checks, guide_checks, verify

NS = "circleci-server"
EXAMPLES = Path(__file__).parents[3] / "examples"


def _pods(spec: ServerHardeningSpec) -> tuple[ClusterPod, ...]:
    v3 = spec.server_version.startswith("3")
    front = "circleci-server-traefik" if v3 else "circleci-proxy"
    nomad = "nomad-server-external" if v3 else "circleci-proxy"
    tcp = DeclaredPort
    return (
        ClusterPod("frontend-0", {"app": front}, "172.16.0.2", (tcp(80), tcp(443), tcp(9000))),
        ClusterPod("nomad-0", {"app": nomad}, "172.16.0.3", (tcp(4647), tcp(4646))),
        ClusterPod("vm-service-0", {"app": "vm-service"}, "172.16.0.6", (tcp(3000),)),
        ClusterPod("output-0", {"app": "output-processor"}, "172.16.0.7", (tcp(8585),)),
        ClusterPod("postgres-0", {"app": "postgresql", "layer": "data"}, "172.16.0.4", (tcp(5432),)),
        ClusterPod("api-0", {"app": "api-service"}, "172.16.0.5", (tcp(8080),)),
    )  # fmt: skip


def _reach(
    spec: ServerHardeningSpec,
    *,
    extra: list[dict[str, Any]] | None = None,
    drop: str = "",
    pods: tuple[ClusterPod, ...] | None = None,
) -> tuple[NamespaceReach, list[Check]]:
    intent = compile_intent(spec)
    resolved, _ = offline_components(intent)
    rendered = render_network_policies(intent, NS, OWNER, resolved)
    present = [p for p in rendered if p["metadata"]["name"] != drop] + list(extra or [])
    machines = NamespaceMachines(NS, _pods(spec) if pods is None else pods, tuple(present))
    managed = frozenset(p["metadata"]["name"] for p in rendered)
    return NamespaceReach(machines, resolved, managed), cluster_checks(intent)


def _verdicts(spec: ServerHardeningSpec, **kwargs: Any) -> dict[str, Verdict]:
    reach, checks = _reach(spec, **kwargs)
    return {row.row: row.verdict for row in verify(checks, [reach])}


@pytest.mark.parametrize("version", ["3", "4.0", "4.3"])
@pytest.mark.parametrize("restrict_egress", [False, True])
def test_every_kubernetes_row_holds_on_the_rendered_policies(
    version: str, restrict_egress: bool
) -> None:
    spec = make_spec(
        serverVersion=version, **{"kubernetes.networkPolicies": {"restrictEgress": restrict_egress}}
    )
    verdicts = _verdicts(spec)
    assert verdicts and set(verdicts.values()) == {Verdict.HOLDS}, verdicts
    assert "LB-IN-2" in verdicts and "CHOICE-NP-DEFAULT-DENY" in verdicts
    assert ("ALL-OUT-3" in verdicts) is restrict_egress


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_holds_on_its_own_policies_with_pods_not_yet_running(example: str) -> None:
    body = yaml.safe_load((EXAMPLES / example).read_text())
    spec = ServerHardeningSpec.model_validate(body["spec"])
    if not spec.kubernetes.network_policies.enabled:
        pytest.skip("no NetworkPolicies")
    verdicts = _verdicts(spec, pods=())
    assert verdicts and set(verdicts.values()) == {Verdict.HOLDS}, verdicts


def test_without_network_policies_there_is_nothing_to_check() -> None:
    spec = make_spec(**{"kubernetes.networkPolicies": {"enabled": False}})
    assert cluster_checks(compile_intent(spec)) == []


ALLOW_ALL = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-everything", "namespace": NS},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]},
}


def test_an_unmanaged_allow_all_violates_the_default_deny_and_names_itself() -> None:
    spec = make_spec(serverVersion="4.3")
    reach, checks = _reach(spec, extra=[ALLOW_ALL])
    rows = {r.row: r for r in verify(checks, [reach])}
    deny = rows["CHOICE-NP-DEFAULT-DENY"]
    assert deny.verdict is Verdict.VIOLATED
    violated = [c for c in deny.checks if c.verdict is Verdict.VIOLATED]
    assert any("postgres-0:5432" in m for c in violated for m in c.machines)
    # Only the policy that decided it, and no word of pod addresses: it admits every peer.
    assert all(d == "NetworkPolicy allow-everything (not managed)" for c in violated
               for d in c.decided_by)  # fmt: skip
    # 4647 is for Nomad clients only: from the internet it is now open too.
    assert rows["LB-IN-4"].verdict is Verdict.VIOLATED
    # The frontend's rows still hold: the internet may reach it.
    assert rows["LB-IN-2"].verdict is Verdict.HOLDS


def test_a_policy_admitting_other_namespaces_to_the_data_stores_violates_the_default_deny() -> None:
    widening = copy.deepcopy(ALLOW_ALL)
    widening["metadata"]["name"] = "db-from-anywhere-in-cluster"
    widening["spec"] = {
        "podSelector": {"matchLabels": {"layer": "data"}},
        "ingress": [{"from": [{"namespaceSelector": {}}]}],
    }
    reach, checks = _reach(make_spec(serverVersion="3"), extra=[widening])
    results = {
        (c.check.source.pods, c.verdict)
        for r in verify(checks, [reach])
        if r.row == "CHOICE-NP-DEFAULT-DENY"
        for c in r.checks
    }
    assert (Pods.OTHER_NAMESPACE, Verdict.VIOLATED) in results
    # From the internet the data stores stay closed: the policy admits pods only.
    assert (None, Verdict.HOLDS) in results


def test_a_missing_allow_leaves_its_rows_violated_and_is_drift_not_a_blocked_row() -> None:
    spec = make_spec(serverVersion="3")
    reach, checks = _reach(spec, drop="svh-allow-vm-service")
    verdicts = {r.row: r.verdict for r in verify(checks, [reach])}
    assert verdicts["LB-IN-3"] is Verdict.VIOLATED
    assert verdicts["LB-IN-2"] is Verdict.HOLDS
    # The missing managed policy is reported (and repaired) as drift, not as GuideRowBlocked.
    assert reach.findings(checks) == []


def test_a_pod_without_the_named_port_its_service_targets_leaves_its_row_unknown_saying_why() -> (
    None
):
    spec = make_spec(
        serverVersion="3",
        **{
            "kubernetes.components": {
                "vmService": {
                    "podSelector": {"matchLabels": {"app": "vm-service"}},
                    "ports": ["http"],
                }
            }
        },
    )
    reach, checks = _reach(spec)
    row = next(r for r in verify(checks, [reach]) if r.row == "LB-IN-3")
    assert row.verdict is Verdict.UNKNOWN
    assert any("no container port named http" in d for c in row.checks for d in c.decided_by)


def test_a_guide_flow_another_policy_isolates_while_ours_are_in_place_is_a_blocked_row() -> None:
    # An egress isolation the operator did not write, on pods the operator does not restrict:
    # the pods may no longer reach each other (CHOICE-NP-NAMESPACE), with every managed policy
    # present. That is GuideRowBlocked, naming the policy.
    lockdown = copy.deepcopy(ALLOW_ALL)
    lockdown["metadata"]["name"] = "lockdown"
    lockdown["spec"] = {"podSelector": {}, "policyTypes": ["Egress"]}
    reach, checks = _reach(make_spec(serverVersion="4.3"), extra=[lockdown])
    blocked = [f for f in reach.findings(checks) if f.code is FindingCode.GUIDE_ROW_BLOCKED]
    assert blocked and {f.row for f in blocked} >= {"CHOICE-NP-NAMESPACE"}
    assert all("lockdown (not managed)" in f.message for f in blocked)


def test_restricted_egress_that_an_unmanaged_policy_reopens_is_violated() -> None:
    spec = make_spec(**{"kubernetes.networkPolicies": {"restrictEgress": True}})
    egress_all = copy.deepcopy(ALLOW_ALL)
    egress_all["metadata"]["name"] = "egress-anywhere"
    egress_all["spec"] = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}
    verdicts = _verdicts(spec, extra=[egress_all])
    assert verdicts["CHOICE-NP-DEFAULT-DENY"] is Verdict.VIOLATED
    assert verdicts["ALL-OUT-3"] is Verdict.HOLDS


def test_pods_are_read_as_network_policies_see_them() -> None:
    listing = {
        "items": [
            {
                "metadata": {"name": "api-0", "labels": {"app": "api"}},
                "spec": {"containers": [{"ports": [{"containerPort": 8080, "name": "http"}]}]},
                "status": {"podIP": "10.0.0.5", "phase": "Running"},
            },
            {
                "metadata": {"name": "node-exporter"},
                "spec": {"hostNetwork": True, "containers": [{"ports": [{"containerPort": 9100}]}]},
                "status": {"podIP": "10.0.0.1", "phase": "Running"},
            },
            {
                "metadata": {"name": "migrate-1"},
                "spec": {"containers": []},
                "status": {"phase": "Succeeded"},
            },
        ]
    }
    pods = pods_of(listing)
    assert [p.name for p in pods] == ["api-0"]
    assert pods[0].ports == (DeclaredPort(8080, "TCP", "http"),)


def test_pods_every_policy_treats_alike_are_one_source_and_decide_alike() -> None:
    spec = make_spec(serverVersion="3", **{"kubernetes.networkPolicies": {"restrictEgress": True}})
    reach, _ = _reach(spec, extra=[ALLOW_ALL])
    pods = reach.pods
    targets = [*pods, Outside("198.51.100.7"), Outside("10.0.0.1")]
    by_signature: dict[Any, list[Pod]] = {}
    for pod in pods:
        by_signature.setdefault(as_source(reach.policies, pod), []).append(pod)
    assert len(by_signature) < len(pods)  # the rendered policies treat most pods alike
    for alike in by_signature.values():
        for target in targets:
            for port in (22, 443, 5432, 8080):
                answers = {decide(reach.policies, p, target, port).allowed for p in alike}
                assert len(answers) == 1, (alike, target, port)


@pytest.mark.parametrize(("runtime", "port"), [("docker", 64535), ("podman", 32768)])
def test_the_ssh_rerun_row_is_checked_on_the_runtime_s_range(runtime: str, port: int) -> None:
    spec = make_spec(**{"topology.nomadClients": {"cidrs": ["10.20.0.0/20"], "runtime": runtime}})
    rerun = [c for c in guide_checks(compile_intent(spec)) if c.row == "NOMAD-IN-2"]
    assert [(c.destination.role, c.port, c.expect) for c in rerun] == [
        (Role.NOMAD_CLIENTS, port, True)
    ]


def test_pods_with_node_subnet_addresses_are_admitted_where_the_nodes_are_and_verify_says_so() -> (
    None
):
    # The AWS VPC CNI gives pods addresses in the node subnets (10.0.0.0/16 here). The NodePort
    # hop's allow (CHOICE-NP-SNAT: the nodes' ranges on the component ports) then admits pods
    # of every namespace to the Nomad server, which only Nomad clients may reach.
    spec = make_spec(serverVersion="3")
    in_node_subnets = tuple(
        dataclasses.replace(p, ip=p.ip.replace("172.16.", "10.0.")) for p in _pods(spec)
    )
    reach, checks = _reach(spec, pods=in_node_subnets)
    deny = next(r for r in verify(checks, [reach]) if r.row == "CHOICE-NP-DEFAULT-DENY")
    violated = [c for c in deny.checks if c.verdict is Verdict.VIOLATED]
    assert [c.check.source.pods for c in violated] == [Pods.OTHER_NAMESPACE]
    assert any("nomad-0:4647" in m for m in violated[0].machines)
    assert any(d.startswith("NetworkPolicy svh-allow-") for d in violated[0].decided_by)
    assert any("such as 10.0.0.2" in d for d in violated[0].decided_by)
    # With addresses of their own (the pods' ranges), the same policies keep them out.
    reach, checks = _reach(spec)
    assert {r.verdict for r in verify(checks, [reach])} == {Verdict.HOLDS}
