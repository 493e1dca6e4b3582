"""Figures of the product as deployed, on the field tier's real node (tests/field, docs/field.md).

    sudo .venv/bin/python bench/field.py [--runs N] [--json PATH]

Brings up the node (root; scripts/fieldprep first), then measures:

- node up: control plane, containerd (image import), kubelet, kube-proxy, kube-router -> Ready;
- helm install -> the operator Deployment Ready (restricted Pod Security Standard);
- the TCP matrix of tests/field/site.py, before and after hardening (expected vs measured);
- repair of a deleted managed NetworkPolicy: delete -> the object is back, and -> the real
  dataplane lets the flow through again (a TCP connect from the internet stand-in);
- operator pod stop: delete -> the pod object is gone, with the container's exit code;
- HA failover (2 replicas, leader election on a Lease): ten leader changes, alternately the
  leader's pod deleted (it releases the Lease) and its container SIGKILLed through containerd
  (nothing released: the standby waits out the lease); each time a policy deleted at that
  moment, until the new holder holds the Lease and until the policy is back (p50 = median).

Nothing here is asserted: the tests assert behaviour, this prints what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "dev"), str(ROOT / "tests")]

from kubernetes import client  # noqa: E402

from field import site  # noqa: E402
from field.conftest import (  # noqa: E402
    CHART,
    RELEASE,
    RELEASE_NAMESPACE,
    RESTRICTED,
    FieldCluster,
)
from field.lifecycle import (  # noqa: E402
    change_leader,
    delete_and_watch,
    lease_holder,
    pod_of,
)
from field.node import OUTSIDE, preflight, running_node, wait_until  # noqa: E402
from field.workloads import (  # noqa: E402
    Source,
    connect_all,
    create_pods,
    create_services,
    ensure_namespace,
)

GROUP, VERSION, PLURAL = "hardening.circleci.com", "v1alpha1", "serverhardenings"
POLICY = "svh-allow-circleci-server-traefik"
WORLD = Source("world", outside_address=OUTSIDE["world"])


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "runs": len(values)}  # fmt: skip


def matrix(cluster: FieldCluster, pod_ips: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    cases = site.truth_table()
    rows = []
    by_source: dict[str, list[site.Case]] = {}
    for case in cases:
        by_source.setdefault(case.source, []).append(case)
    for source, group in by_source.items():
        if source in OUTSIDE:
            src = Source(source, outside_address=OUTSIDE[source])
        elif source == "node":
            src = Source(source)
        else:
            pod = {"stranger": (site.OTHER, "stranger"), "api-v3": (site.V3, "api"),
                   "api-v4": (site.V4, "api")}[source]  # fmt: skip
            src = Source(source, pod=pod)

        def address(c: site.Case) -> tuple[str, int]:
            if c.namespace == "outside":
                return OUTSIDE[c.destination], c.port
            return pod_ips[c.namespace][c.destination], c.port

        verdicts = connect_all(cluster.node, src, [address(c) for c in group])
        rows += [{"source": c.source, "destination": f"{c.namespace}/{c.destination}",
                  "port": c.port, "expected": c.expected, "measured": verdicts[address(c)],
                  "rows": c.rows} for c in group]  # fmt: skip
    return rows


def install(node: Any) -> tuple[FieldCluster, dict[str, Any]]:
    home = tempfile.mkdtemp(prefix="bench-field-")
    kubeconfig = str(node.control_plane.admin_kubeconfig)
    cluster = FieldCluster(node, node.api_client(), {**os.environ, "HOME": home,
                                                     "KUBECONFIG": kubeconfig})  # fmt: skip
    for ns in (site.V3, site.V4, site.OTHER):
        ensure_namespace(cluster.api, ns)
    ensure_namespace(cluster.api, RELEASE_NAMESPACE, RESTRICTED)
    t0 = time.monotonic()
    cluster.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
                 "--values", str(cluster.values()))  # fmt: skip
    cluster.wait_rollout(1)
    return cluster, {"helm_install_to_ready_seconds": time.monotonic() - t0}


def harden(cluster: FieldCluster) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    node = cluster.node
    pod_ips = {
        site.V3: create_pods(cluster.api, site.V3, site.V3_PODS),
        site.V4: create_pods(cluster.api, site.V4, site.V4_PODS),
        site.OTHER: create_pods(cluster.api, site.OTHER, site.OTHER_PODS),
    }
    create_services(cluster.api, site.V3, site.V3_SERVICES)
    create_services(cluster.api, site.V4, site.V4_SERVICES)
    figures: dict[str, Any] = {"tcp_before": matrix(cluster, pod_ips)}
    port = int(urlparse(node.control_plane.url).port or 0)
    custom = client.CustomObjectsApi(cluster.api)
    t0 = time.monotonic()
    for body in (site.v3_resource(port), site.v4_resource()):
        custom.create_namespaced_custom_object(
            GROUP, VERSION, body["metadata"]["namespace"], PLURAL, body
        )
    postgres = (pod_ips[site.V4]["postgresql"], 5432)
    wait_until("enforcement", lambda: not connect_all(node, WORLD, [postgres])[postgres], 120)
    figures["resource_to_enforced_on_the_dataplane_seconds"] = time.monotonic() - t0
    figures["tcp_after"] = matrix(cluster, pod_ips)
    return pod_ips, figures


def recreated(net: Any, old_uid: str) -> bool:
    items = net.list_namespaced_network_policy(site.V3).items
    return any(p.metadata.name == POLICY and p.metadata.uid != old_uid for p in items)


def repair(cluster: FieldCluster, pod_ips: dict[str, dict[str, str]], runs: int) -> dict[str, Any]:
    net = client.NetworkingV1Api(cluster.api)
    traefik = (pod_ips[site.V3]["traefik"], 8443)
    objects, dataplane = [], []
    for _ in range(runs):
        old = net.read_namespaced_network_policy(POLICY, site.V3).metadata.uid
        t0 = time.monotonic()
        net.delete_namespaced_network_policy(POLICY, site.V3)
        wait_until("recreated", lambda old=old: recreated(net, old), 60)
        objects.append(time.monotonic() - t0)
        # kube-router may apply the deletion after the repair: the flow is what counts.
        wait_until("flow", lambda: connect_all(cluster.node, WORLD, [traefik], 0.5)[traefik], 60)
        dataplane.append(time.monotonic() - t0)
    return {"repair_deleted_policy_object_seconds": spread(objects),
            "repair_deleted_policy_dataplane_seconds": spread(dataplane)}  # fmt: skip


def pod_stops(cluster: FieldCluster, runs: int) -> dict[str, Any]:
    stops, codes = [], []
    for _ in range(runs):
        [pod] = cluster.wait_rollout(1)
        stop = delete_and_watch(cluster, pod.metadata.name)
        stops.append(stop.seconds)
        codes.append(stop.exit_code)
    cluster.wait_rollout(1)
    return {"pod_stop_seconds": spread(stops), "pod_stop_exit_codes": codes}


def takeovers(cluster: FieldCluster, changes: int) -> dict[str, Any]:
    """Two replicas with leader election; ``changes`` leader changes, alternately a deleted
    leader pod and a SIGKILLed leader container, each with the policy deleted at that moment
    (after a pod delete: once the old leader has released the Lease)."""
    cluster.helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
                 "--values", str(cluster.values(ha=True)))  # fmt: skip
    pods = {p.metadata.name for p in cluster.wait_rollout(2)}
    wait_until("a leader among the HA pods",
               lambda: pod_of(lease_holder(cluster)) in pods or None, 60)  # fmt: skip
    net = client.NetworkingV1Api(cluster.api)

    def uid() -> str | None:
        return next((p.metadata.uid for p in net.list_namespaced_network_policy(site.V3).items
                     if p.metadata.name == POLICY), None)  # fmt: skip

    done = []
    for turn in range(changes):
        how = "pod delete" if turn % 2 == 0 else "SIGKILL"
        done.append(change_leader(cluster, how, site.V3, POLICY, uid))
        cluster.wait_rollout(2)
    figures: dict[str, Any] = {}
    for how in ("pod delete", "SIGKILL"):
        key = how.replace(" ", "_")
        figures[f"ha_{key}_to_new_leader_seconds"] = spread(
            [c.lease_seconds for c in done if c.how == how])  # fmt: skip
        figures[f"ha_{key}_to_repair_seconds"] = spread(
            [c.repair_seconds for c in done if c.how == how])  # fmt: skip
    return figures


def report(figures: dict[str, Any]) -> None:
    after = figures["tcp_after"]
    print(json.dumps({k: v for k, v in figures.items() if not k.startswith("tcp_")}, indent=2))
    connected = sum(r["measured"] for r in after)
    wrong = [r for r in after if r["expected"] != r["measured"]]
    opened = sum(r["measured"] for r in figures["tcp_before"])
    print(f"\nTCP matrix: {len(after)} flows; before hardening {opened} connected; after: "
          f"{connected} connected, {len(after) - connected} blocked, "
          f"{len(wrong)} differ from the guide's expectation")  # fmt: skip
    print("\n| source | destination | port | expected | measured | rows |")
    print("|---|---|---|---|---|---|")
    for r in after:
        verdicts = ("allow" if r["expected"] else "block", "open" if r["measured"] else "closed")
        print(f"| {r['source']} | {r['destination']} | {r['port']} | {verdicts[0]} | "
              f"{verdicts[1]} | {r['rows']} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the timed steps")
    parser.add_argument("--leader-changes", type=int, default=10,
                        help="HA: leader changes (alternately pod delete and SIGKILL)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    problem = preflight()
    if problem:
        print(f"cannot run the field node here: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with running_node() as node:
        figures: dict[str, Any] = dict(node.timings)
        cluster, installed = install(node)
        figures |= installed
        listener = node.serve_outside(site.OUTSIDE_PORTS)
        try:
            pod_ips, hardened = harden(cluster)
            figures |= hardened
            figures |= repair(cluster, pod_ips, args.runs)
            figures |= pod_stops(cluster, args.runs)
            figures |= takeovers(cluster, args.leader_changes)
            cluster.helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait")
        finally:
            listener.stop()
            cluster.api.close()
    figures["total_seconds"] = time.monotonic() - started
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
