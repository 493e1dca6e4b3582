"""NetworkPolicies on real packets: the operator (the chart's pod) hardens a v3 and a v4
CircleCI-like namespace of real pods behind the guide's Services; kube-router enforces what it
writes; TCP connections from pods, the node and outside stand-ins must match the truth table in
tests/field/site.py, which is written from the guide's rows. Then drift on the real dataplane."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from kubernetes import client

from cli_run import run
from field import site
from field.conftest import FieldCluster
from field.node import HOST_ADDR, OUTSIDE, wait_until
from field.workloads import (
    PodSpec,
    Source,
    connect_all,
    create_pods,
    create_services,
    ensure_namespace,
)

GROUP, VERSION, PLURAL = "hardening.circleci.com", "v1alpha1", "serverhardenings"


@dataclass
class Site:
    cluster: FieldCluster
    pod_ips: dict[str, dict[str, str]]  # namespace -> pod -> IP
    service_ips: dict[str, dict[str, str]]  # namespace -> Service -> ClusterIP
    before: dict[str, dict[tuple[str, int], bool]]  # source -> verdicts before hardening

    def source(self, name: str) -> Source:
        if name in OUTSIDE:
            return Source(name, outside_address=OUTSIDE[name])
        if name == "node":
            return Source(name)
        pod = {"stranger": (site.OTHER, "stranger"), "api-v3": (site.V3, "api"),
               "api-v4": (site.V4, "api")}[name]  # fmt: skip
        return Source(name, pod=pod)

    def address(self, case: site.Case) -> tuple[str, int]:
        if case.namespace == "outside":
            return OUTSIDE[case.destination], case.port
        return self.pod_ips[case.namespace][case.destination], case.port

    def measure(self, cases: list[site.Case]) -> dict[site.Case, bool]:
        by_source: dict[str, list[site.Case]] = defaultdict(list)
        for case in cases:
            by_source[case.source].append(case)
        out: dict[site.Case, bool] = {}
        for source, group in by_source.items():
            verdicts = connect_all(
                self.cluster.node, self.source(source), [self.address(c) for c in group]
            )
            out |= {c: verdicts[self.address(c)] for c in group}
        return out

    def connects(self, source: str, ip: str, port: int) -> bool:
        return connect_all(self.cluster.node, self.source(source), [(ip, port)])[(ip, port)]


def custom(cluster: FieldCluster) -> Any:
    return client.CustomObjectsApi(cluster.api)


def phase(cluster: FieldCluster, namespace: str) -> str:
    body = custom(cluster).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "circleci"
    )
    return str((body.get("status") or {}).get("phase", ""))


@pytest.fixture(scope="module")
def installation(release: FieldCluster) -> Any:
    cluster = release
    listener = cluster.node.serve_outside(site.OUTSIDE_PORTS)
    try:
        pod_ips = {
            site.V3: create_pods(cluster.api, site.V3, site.V3_PODS),
            site.V4: create_pods(cluster.api, site.V4, site.V4_PODS),
            site.OTHER: create_pods(cluster.api, site.OTHER, site.OTHER_PODS),
        }
        service_ips = {
            site.V3: create_services(cluster.api, site.V3, site.V3_SERVICES),
            site.V4: create_services(cluster.api, site.V4, site.V4_SERVICES),
        }
        installed = Site(cluster, pod_ips, service_ips, {})
        cases = site.truth_table()
        before = installed.measure(cases)
        for case, ok in before.items():
            installed.before.setdefault(case.source, {})[installed.address(case)] = ok
        port = int(urlparse(cluster.node.control_plane.url).port or 0)  # type: ignore[union-attr]
        for body in (site.v3_resource(port), site.v4_resource()):
            custom(cluster).create_namespaced_custom_object(
                GROUP, VERSION, body["metadata"]["namespace"], PLURAL, body
            )
        for ns in (site.V3, site.V4):
            wait_until(f"{ns} Enforced", lambda ns=ns: phase(cluster, ns) == "Enforced", 120)
        # kube-router applies policies asynchronously: wait for a flow that must end blocked.
        postgres = pod_ips[site.V4]["postgresql"]
        wait_until(
            "kube-router to enforce", lambda: not installed.connects("world", postgres, 5432), 60
        )
        cluster.figures["tcp_before"] = {c.id: before[c] for c in cases}
        yield installed
    finally:
        listener.stop()


def test_before_hardening_every_flow_connects(installation: Site) -> None:
    """The baseline that makes "blocked" mean something: every listener answers every source."""
    closed = [
        f"{s} -> {a}" for s, v in installation.before.items() for a, ok in v.items() if not ok
    ]
    assert closed == []


SOURCES = sorted({c.source for c in site.truth_table()})


@pytest.mark.parametrize("source", SOURCES)
def test_truth_table_on_real_tcp(installation: Site, source: str) -> None:
    cases = [c for c in site.truth_table() if c.source == source]
    measured = installation.measure(cases)
    installation.cluster.figures.setdefault("tcp_matrix", {}).update(
        {c.id: measured[c] for c in cases}
    )
    wrong = [f"{c.id} [{c.rows}] measured {'open' if measured[c] else 'closed'}"
             for c in cases if measured[c] is not c.expected]  # fmt: skip
    assert wrong == []


# ``hardening verify`` names an address endpoint by its label and stands for it with one address
# of its ranges; here each label is the stand-in outside the node with an address in them.
STAND_IN_FOR = {
    "external": "world", "the internet": "world", "vcs": "world",
    "nomadClients": "nomad", "externalVMs": "vm", "kubernetesNodes": "other-node",
}  # fmt: skip


def verify_namespace(installation: Site, namespace: str, tmp: Path) -> Any:
    """``hardening verify -o json`` on the node's API server for one of the installations."""
    cluster = installation.cluster
    port = int(urlparse(cluster.node.control_plane.url).port or 0)  # type: ignore[union-attr]
    body = site.v3_resource(port) if namespace == site.V3 else site.v4_resource()
    manifest = tmp / f"{namespace}.yaml"
    manifest.write_text(yaml.safe_dump(body))
    kubeconfig = str(cluster.node.control_plane.admin_kubeconfig)  # type: ignore[union-attr]
    done = run("verify", "-f", str(manifest), "-o", "json", "--kubeconfig", kubeconfig)
    assert done.returncode in (0, 3), done.stderr
    return done.returncode, json.loads(done.stdout)


def tcp_pairs(
    installation: Site, namespace: str, check: dict[str, Any]
) -> list[tuple[Source, tuple[str, int]]]:
    """The connections a verify check's evidence names, as the field can make them: TCP only;
    cluster DNS has no stand-in here."""
    if check["protocol"] != "tcp":
        return []
    pods = installation.pod_ips[namespace]
    out = []
    for machine in check["machines"]:
        source_name, rest = machine.split(" -> ")
        destination, port = rest.rsplit(":", 1)
        if source_name in pods:
            source = Source(source_name, pod=(namespace, source_name))
        elif source_name.startswith("another-namespace/"):
            source = installation.source("stranger")
        else:
            source = installation.source(STAND_IN_FOR[check["from"]])
        if destination in pods:
            address = pods[destination]
        elif destination == HOST_ADDR:  # the API server, by its own address
            address = destination
        elif destination.startswith("kube-system/"):
            continue
        else:
            address = OUTSIDE[STAND_IN_FOR[check["to"]]]
        out.append((source, (address, int(port))))
    return out


def measured_against_verify(
    installation: Site, namespace: str, document: Any
) -> tuple[int, list[str]]:
    """Every connection a Kubernetes check's evidence names, made on the node: how many, and
    those whose real outcome differs from the check's result."""
    cluster = installation.cluster
    made, wrong = 0, []
    for row in document["rows"]:
        if row["target"] != "kubernetes":
            continue
        for check in row["checks"]:
            by_source: dict[Source, list[tuple[str, int]]] = defaultdict(list)
            for source, address in tcp_pairs(installation, namespace, check):
                by_source[source].append(address)
            for source, addresses in by_source.items():
                verdicts = connect_all(cluster.node, source, addresses)
                made += len(addresses)
                # A check's evidence lists the connections that went against it, or (holding)
                # all of them: each must really go the way verify says.
                expected = check["result"] == "allow"
                if check["verdict"] == "violated":
                    expected = check["expect"] != "allow"
                wrong += [
                    f"{row['row']}: {source.label} -> {a[0]}:{a[1]} verify says "
                    f"{'open' if expected else 'closed'}, TCP {'open' if ok else 'closed'}"
                    for a, ok in verdicts.items()
                    if ok is not expected
                ]
    return made, wrong


@pytest.mark.parametrize("namespace", [site.V3, site.V4])
def test_verify_agrees_with_real_tcp_on_every_kubernetes_check(
    installation: Site, namespace: str, tmp_path: Path
) -> None:
    """The Kubernetes rows of ``hardening verify`` (every NetworkPolicy of the namespace and its
    real pods, evaluated) against the same connections made through kube-router."""
    code, document = verify_namespace(installation, namespace, tmp_path)
    verdicts = {r["row"]: r["verdict"] for r in document["rows"] if r["target"] == "kubernetes"}
    assert "LB-IN-2" in verdicts and "CHOICE-NP-DEFAULT-DENY" in verdicts
    assert set(verdicts.values()) == {"holds"}, verdicts
    assert code == 0
    made, wrong = measured_against_verify(installation, namespace, document)
    checks = sum(len(r["checks"]) for r in document["rows"] if r["target"] == "kubernetes")
    print(
        f"verify vs real TCP, {namespace}: {len(verdicts)} rows, {checks} checks, {made} connections"
    )
    assert made > 20 and wrong == []


def test_verify_sees_an_unmanaged_allow_all_as_the_packets_do(
    installation: Site, tmp_path: Path
) -> None:
    """A NetworkPolicy the operator did not write admits everything into the v4 namespace
    (``unmanagedRules: Report`` keeps it): verify says the default deny and LB-IN-4 are violated,
    naming the pods, the ports and the policy, and each connection it names really opens."""
    cluster = installation.cluster
    postgres = installation.pod_ips[site.V4]["postgresql"]
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "field-allow-everything"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]},
    }
    policy_api(cluster).create_namespaced_network_policy(site.V4, policy)
    try:
        wait_until(
            "the policy to open 5432", lambda: installation.connects("world", postgres, 5432), 60
        )
        code, document = verify_namespace(installation, site.V4, tmp_path)
        verdicts = {r["row"]: r["verdict"] for r in document["rows"] if r["target"] == "kubernetes"}
        assert code == 3
        assert verdicts["CHOICE-NP-DEFAULT-DENY"] == "violated"
        assert verdicts["LB-IN-4"] == "violated"
        assert verdicts["LB-IN-2"] == "holds"
        evidence = [
            d for r in document["rows"] for c in r["checks"] if c["verdict"] == "violated"
            for d in c["decidedBy"]
        ]  # fmt: skip
        assert evidence and all("field-allow-everything (not managed)" in d for d in evidence)
        made, wrong = measured_against_verify(installation, site.V4, document)
        print(f"verify vs real TCP, an unmanaged allow-all: {made} connections named as evidence")
        assert made > 5 and wrong == []
    finally:
        policy_api(cluster).delete_namespaced_network_policy("field-allow-everything", site.V4)
        wait_until(
            "5432 closed again", lambda: not installation.connects("world", postgres, 5432), 60
        )


def test_the_named_services_reach_what_their_pods_allow(installation: Site) -> None:
    """Through the Services' virtual IPs (kube-proxy DNAT), as a client in the cluster uses them."""
    v3, v4 = installation.service_ips[site.V3], installation.service_ips[site.V4]
    flows = {
        ("stranger", v4["circleci-proxy"], 80): True,  # LB-IN-1 on the pod's 8080
        ("stranger", v4["circleci-proxy"], 443): True,  # LB-IN-2 on the pod's 8443
        ("stranger", v4["circleci-proxy"], 4647): False,  # LB-IN-4: Nomad clients only
        ("stranger", v4["postgresql"], 5432): False,  # default deny
        ("stranger", v3["circleci-server-traefik"], 443): True,
        ("stranger", v3["nomad-server-external"], 4647): False,
        ("api-v4", v4["postgresql"], 5432): True,  # CHOICE-NP-NAMESPACE
        ("api-v3", v3["postgresql"], 5432): True,
    }
    measured = {flow: installation.connects(*flow) for flow in flows}
    assert measured == flows


def policy_api(cluster: FieldCluster) -> Any:
    return client.NetworkingV1Api(cluster.api)


def set_mode(cluster: FieldCluster, namespace: str, mode: str) -> None:
    custom(cluster).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "circleci", {"spec": {"mode": mode}}
    )


def test_drift_on_the_real_dataplane(installation: Site) -> None:
    """Audit shows a widened policy opening the real dataplane and leaves it; Enforce closes it."""
    cluster = installation.cluster
    proxy = installation.pod_ips[site.V4]["proxy"]
    assert not installation.connects("world", proxy, 4647)
    set_mode(cluster, site.V4, "Audit")
    wait_until("Auditing", lambda: phase(cluster, site.V4) == "Auditing", 60)
    policy_api(cluster).patch_namespaced_network_policy(
        "svh-allow-circleci-proxy", site.V4, {"spec": {"ingress": [{}]}}
    )
    wait_until(
        "the widened policy to open 4647", lambda: installation.connects("world", proxy, 4647), 60
    )
    wait_until("Drifted", lambda: phase(cluster, site.V4) == "Drifted", 60)
    assert installation.connects("world", proxy, 4647)  # Audit writes nothing
    set_mode(cluster, site.V4, "Enforce")
    wait_until("Enforce to close 4647", lambda: not installation.connects("world", proxy, 4647), 60)
    wait_until("Enforced", lambda: phase(cluster, site.V4) == "Enforced", 60)
    assert installation.connects("world", proxy, 8080)
    assert installation.connects("nomad", proxy, 4647)


def test_a_deleted_policy_is_repaired_on_the_real_node(installation: Site) -> None:
    cluster = installation.cluster
    traefik = installation.pod_ips[site.V3]["traefik"]
    old = policy_api(cluster).read_namespaced_network_policy(
        "svh-allow-circleci-server-traefik", site.V3
    )
    policy_api(cluster).delete_namespaced_network_policy(
        "svh-allow-circleci-server-traefik", site.V3
    )

    def recreated() -> bool:
        new = policy_api(cluster).read_namespaced_network_policy(
            "svh-allow-circleci-server-traefik", site.V3
        )
        return bool(new.metadata.uid != old.metadata.uid)

    wait_until("the policy to be recreated", recreated, 60)
    wait_until(
        "the frontend to answer again", lambda: installation.connects("world", traefik, 8443), 60
    )
    assert not installation.connects("world", installation.pod_ips[site.V3]["postgresql"], 5432)


MONITORING_NS = "monitoring"
TELEGRAF = PodSpec(
    "telegraf",
    {"app.kubernetes.io/instance": "circleci-server", "app.kubernetes.io/name": "telegraf"},
    (9273, 8125),
)
PROMETHEUS = PodSpec("prometheus", {"app.kubernetes.io/name": "prometheus"}, (9090,))
GRAFANA = PodSpec("grafana", {"app": "grafana"}, (3000,))
MONITORING = {  # CircleCI's monitoring reference, as spec.kubernetes.monitoring admits it
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING_NS}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    "ports": [9273],
}


def test_the_monitoring_reference_scrapes_telegraf_through_the_policies(
    installation: Site,
) -> None:
    """CHOICE-NP-MONITORING on real packets: a Prometheus in its own namespace scrapes telegraf's
    9273 in the hardened v4 namespace once spec.kubernetes.monitoring names it; Grafana beside it
    and every other port stay closed; without the field the scrape is cut (opt-in)."""
    cluster = installation.cluster
    ensure_namespace(cluster.api, MONITORING_NS)
    telegraf = create_pods(cluster.api, site.V4, [TELEGRAF])["telegraf"]
    create_pods(cluster.api, MONITORING_NS, [PROMETHEUS, GRAFANA])
    prometheus = Source("prometheus", pod=(MONITORING_NS, "prometheus"))
    grafana = Source("grafana", pod=(MONITORING_NS, "grafana"))

    def scrape(source: Source, port: int = 9273) -> bool:
        return connect_all(cluster.node, source, [(telegraf, port)])[(telegraf, port)]

    try:
        # Hardened without the field: the default deny already cuts the scrape.
        wait_until("the default deny to cover telegraf", lambda: not scrape(prometheus), 60)
        custom(cluster).patch_namespaced_custom_object(
            GROUP, VERSION, site.V4, PLURAL, "circleci",
            {"spec": {"kubernetes": {"monitoring": MONITORING}}},
        )  # fmt: skip
        wait_until("Prometheus to scrape telegraf", lambda: scrape(prometheus), 90)
        assert phase(cluster, site.V4) == "Enforced"
        assert not scrape(grafana)  # not the scraper's pods
        assert not scrape(prometheus, 8125)  # not a listed port
        assert not installation.connects("world", telegraf, 9273)
    finally:
        custom(cluster).patch_namespaced_custom_object(
            GROUP, VERSION, site.V4, PLURAL, "circleci",
            {"spec": {"kubernetes": {"monitoring": None}}},
        )  # fmt: skip
        wait_until("the scrape to be cut again", lambda: not scrape(prometheus), 90)
        core = client.CoreV1Api(cluster.api)
        core.delete_namespaced_pod("telegraf", site.V4, grace_period_seconds=0)
        for pod in (PROMETHEUS, GRAFANA):
            core.delete_namespaced_pod(pod.name, MONITORING_NS, grace_period_seconds=0)
