"""Rules -> ``networking.k8s.io/v1`` NetworkPolicies for the server's namespace. Pure.

What is written (every policy is labelled as managed and annotated with its guide rows):

- ``svh-default-deny``: every pod of the namespace is isolated for ingress (and egress with
  ``restrictEgress``): CHOICE-NP-DEFAULT-DENY.
- ``svh-allow-namespace``: pods of the namespace reach each other: CHOICE-NP-NAMESPACE.
- ``svh-allow-<service>``: one per set of component pods, admitting the LB-IN rows' peers on the
  pods' own ports (CHOICE-NP-PORTS), and the node (and load-balancer) CIDRs when the load
  balancer is not transparent, because a NodePort hop SNATs to a node address (CHOICE-NP-SNAT).
- ``svh-allow-monitoring`` with ``spec.kubernetes.monitoring``: the scraper's namespaces (and
  pods) reach the listed pod ports of every pod of the namespace: CHOICE-NP-MONITORING.
- ``svh-allow-egress`` with ``restrictEgress``: cluster DNS, the API server, and the Kubernetes
  nodes' outbound rows of the guide.

NetworkPolicies add up, so an unmanaged policy that allows more undoes these:
:mod:`server_hardening.checks` judges those.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from server_hardening.compiler import CompiledIntent, ComponentAccess
from server_hardening.components import PodPort, PodSelector, ResolvedComponent
from server_hardening.drift import DesiredItem, fingerprint
from server_hardening.guide import Component
from server_hardening.model import Monitoring, ResourceRef
from server_hardening.ownership import (
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    OWNER_ANNOTATION,
    OWNER_LABEL,
    PROVENANCE_ANNOTATION,
    ROWS_ANNOTATION,
    Provenance,
    owner_annotation,
    owner_label,
)
from server_hardening.rules import Peer, Protocol

Manifest = Mapping[str, Any]
"""A NetworkPolicy as the API server takes it (networking.k8s.io/v1, camelCase)."""

NAME_PREFIX = "svh-"
KUBE_SYSTEM = {"kubernetes.io/metadata.name": "kube-system"}

EntryRows = dict[tuple[str, str, int], tuple[str, ...]]
"""The guide rows of each rule of each policy: ``(policy name, "ingress"|"egress", index)`` ->
rows. The policy's annotation holds the union; this says which rows one port/peer line serves
(``hardening plan`` prints it). Not written to the cluster: it is the renderer's provenance."""


def _metadata(name: str, namespace: str, owner: ResourceRef, rows: Sequence[str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, OWNER_LABEL: owner_label(owner)},
        "annotations": {
            OWNER_ANNOTATION: owner_annotation(owner),
            ROWS_ANNOTATION: ",".join(sorted(dict.fromkeys(rows))),
        },
    }


def _policy(
    name: str,
    namespace: str,
    owner: ResourceRef,
    rows: Sequence[str],
    spec: dict[str, Any],
) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, namespace, owner, rows),
        "spec": spec,
    }


def _ip_blocks(peers: Sequence[Peer]) -> list[dict[str, Any]]:
    cidrs = sorted({c for p in peers for c in p.cidrs})
    return [{"ipBlock": {"cidr": c}} for c in cidrs]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:50]


def policy_name_for(service_or_component: str) -> str:
    """The name of the allow policy of the pods behind a Service (or a pinned component)."""
    return NAME_PREFIX + "allow-" + _slug(service_or_component)


def _component_policies(
    namespace: str,
    owner: ResourceRef,
    cluster: Sequence[ComponentAccess],
    resolved: Mapping[Component, ResolvedComponent],
    entry_rows: EntryRows,
) -> list[dict[str, Any]]:
    """One policy per set of pods; components that share pods (v4's proxy) share a policy."""
    groups: dict[PodSelector, list[tuple[ComponentAccess, ResolvedComponent]]] = {}
    for access in cluster:
        component = resolved.get(access.component)
        if component is not None:
            groups.setdefault(component.pod_selector, []).append((access, component))
    policies = []
    for selector, members in groups.items():
        first = members[0][1]
        name = policy_name_for(first.service or first.component.value)
        ingress: list[dict[str, Any]] = []
        rows: list[str] = ["CHOICE-NP-PORTS"]
        for access, component in members:
            entry_rows[(name, "ingress", len(ingress))] = _sorted_rows(
                ["CHOICE-NP-PORTS", *access.rows]
            )
            ingress.append(
                {
                    "from": _ip_blocks(access.peers),
                    "ports": [p.as_manifest() for p in component.ports],
                }
            )
            rows.extend(access.rows)
        policies.append(
            _policy(
                name,
                namespace,
                owner,
                rows,
                {
                    "podSelector": selector.as_manifest(),
                    "policyTypes": ["Ingress"],
                    "ingress": ingress,
                },
            )
        )
    return policies


MONITORING_POLICY = NAME_PREFIX + "allow-monitoring"


def _monitoring_policy(
    namespace: str, owner: ResourceRef, monitoring: Monitoring
) -> dict[str, Any]:
    """CHOICE-NP-MONITORING: one peer that needs both the namespace and (if given) the pod
    selector, on the listed pod ports of any pod here (a named port matches only pods that
    declare it, such as telegraf's prometheus-client)."""
    scraper: dict[str, Any] = {
        "namespaceSelector": PodSelector.of_spec(monitoring.namespace_selector).as_manifest()
    }
    if monitoring.pod_selector is not None:
        scraper["podSelector"] = PodSelector.of_spec(monitoring.pod_selector).as_manifest()
    return _policy(
        MONITORING_POLICY,
        namespace,
        owner,
        ["CHOICE-NP-MONITORING"],
        {
            "podSelector": {},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [scraper],
                    "ports": [PodPort(port).as_manifest() for port in monitoring.ports],
                }
            ],
        },
    )


def _sorted_rows(rows: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(dict.fromkeys(rows)))


def _egress_policy(
    namespace: str, owner: ResourceRef, intent: CompiledIntent, entry_rows: EntryRows
) -> dict[str, Any]:
    name = NAME_PREFIX + "allow-egress"
    rows = ["CHOICE-NP-DNS"]
    entry_rows[(name, "egress", 0)] = ("CHOICE-NP-DNS",)
    egress: list[dict[str, Any]] = [
        {
            "to": [{"namespaceSelector": {"matchLabels": KUBE_SYSTEM}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }
    ]
    api = intent.spec.kubernetes.api_server
    if api.cidrs:
        rows.append("CHOICE-NP-APISERVER")
        entry_rows[(name, "egress", len(egress))] = ("CHOICE-NP-APISERVER",)
        egress.append(
            {
                "to": [{"ipBlock": {"cidr": c}} for c in api.cidrs],
                "ports": [{"protocol": "TCP", "port": p} for p in api.ports],
            }
        )
    for rule in intent.node_egress_allows():
        entry: dict[str, Any] = {"to": _ip_blocks([rule.peer])}
        if rule.protocol is not Protocol.ALL and rule.ports is not None:
            port: dict[str, Any] = {
                "protocol": rule.protocol.value.upper(),
                "port": rule.ports.first,
            }
            if rule.ports.last != rule.ports.first:
                port["endPort"] = rule.ports.last
            entry["ports"] = [port]
        entry_rows[(name, "egress", len(egress))] = _sorted_rows(
            [r for r in rule.rows if not r.startswith("CHOICE-AWS-")]
        )
        egress.append(entry)
        # How a security group names the peer is no concern of a NetworkPolicy's provenance.
        rows.extend(sorted(r for r in rule.rows if not r.startswith("CHOICE-AWS-")))
    return _policy(
        name,
        namespace,
        owner,
        rows,
        {"podSelector": {}, "policyTypes": ["Egress"], "egress": egress},
    )


def render_network_policies(
    intent: CompiledIntent,
    namespace: str,
    owner: ResourceRef,
    resolved: Mapping[Component, ResolvedComponent],
) -> list[dict[str, Any]]:
    """The NetworkPolicies the namespace must hold, in a stable order."""
    return render_network_policies_with_rows(intent, namespace, owner, resolved)[0]


def render_network_policies_with_rows(
    intent: CompiledIntent,
    namespace: str,
    owner: ResourceRef,
    resolved: Mapping[Component, ResolvedComponent],
) -> tuple[list[dict[str, Any]], EntryRows]:
    """The NetworkPolicies and the guide rows of each of their rules (:data:`EntryRows`)."""
    entry_rows: EntryRows = {}
    if not intent.spec.kubernetes.network_policies.enabled:
        return [], entry_rows
    restrict_egress = intent.spec.kubernetes.network_policies.restrict_egress
    types = ["Ingress", "Egress"] if restrict_egress else ["Ingress"]
    namespace_spec: dict[str, Any] = {
        "podSelector": {},
        "policyTypes": types,
        "ingress": [{"from": [{"podSelector": {}}]}],
    }
    entry_rows[(NAME_PREFIX + "allow-namespace", "ingress", 0)] = ("CHOICE-NP-NAMESPACE",)
    if restrict_egress:
        namespace_spec["egress"] = [{"to": [{"podSelector": {}}]}]
        entry_rows[(NAME_PREFIX + "allow-namespace", "egress", 0)] = ("CHOICE-NP-NAMESPACE",)
    policies = [
        _policy(
            NAME_PREFIX + "default-deny",
            namespace,
            owner,
            ["CHOICE-NP-DEFAULT-DENY"],
            {"podSelector": {}, "policyTypes": types},
        ),
        _policy(
            NAME_PREFIX + "allow-namespace",
            namespace,
            owner,
            ["CHOICE-NP-NAMESPACE"],
            namespace_spec,
        ),
        *_component_policies(namespace, owner, intent.cluster, resolved, entry_rows),
    ]
    if intent.spec.kubernetes.monitoring is not None:
        policies.append(_monitoring_policy(namespace, owner, intent.spec.kubernetes.monitoring))
        entry_rows[(MONITORING_POLICY, "ingress", 0)] = ("CHOICE-NP-MONITORING",)
    if restrict_egress:
        policies.append(_egress_policy(namespace, owner, intent, entry_rows))
    return policies, entry_rows


# ------------------------------------------------------------------------------------------
# Normalising for the diff: the API server defaults fields we leave out.


def _normalise_port(port: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": port.get("protocol") or "TCP"}
    if port.get("port") is not None:
        out["port"] = port["port"]
    if port.get("endPort") is not None:
        out["endPort"] = port["endPort"]
    return out


def _normalise_peer(peer: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("podSelector", "namespaceSelector"):
        if peer.get(key) is not None:
            selector = peer[key] or {}
            out[key] = {
                "matchLabels": dict(sorted((selector.get("matchLabels") or {}).items())),
                "matchExpressions": selector.get("matchExpressions") or [],
            }
    if peer.get("ipBlock") is not None:
        block = peer["ipBlock"]
        out["ipBlock"] = {"cidr": block.get("cidr"), "except": sorted(block.get("except") or [])}
    return out


def _normalise_rule(rule: Mapping[str, Any], peers_key: str) -> dict[str, Any]:
    return {
        peers_key: sorted((_normalise_peer(p) for p in rule.get(peers_key) or []), key=fingerprint),
        "ports": sorted((_normalise_port(p) for p in rule.get("ports") or []), key=fingerprint),
    }


def normalise_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A NetworkPolicy spec with server defaults applied and order that carries no meaning
    removed, so a desired and an observed policy compare equal exactly when they mean the same."""
    types = spec.get("policyTypes") or (
        ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
    )
    selector = spec.get("podSelector") or {}
    return {
        "podSelector": {
            "matchLabels": dict(sorted((selector.get("matchLabels") or {}).items())),
            "matchExpressions": selector.get("matchExpressions") or [],
        },
        "policyTypes": sorted(types),
        "ingress": sorted(
            (_normalise_rule(r, "from") for r in spec.get("ingress") or []), key=fingerprint
        ),
        "egress": sorted(
            (_normalise_rule(r, "to") for r in spec.get("egress") or []), key=fingerprint
        ),
    }


def policy_fingerprint(manifest: Mapping[str, Any]) -> str:
    annotations = manifest.get("metadata", {}).get("annotations") or {}
    return fingerprint(
        {
            "spec": normalise_spec(manifest.get("spec") or {}),
            "rows": annotations.get(ROWS_ANNOTATION),
        }
    )


def with_provenance(manifest: Manifest, provenance: Provenance) -> dict[str, Any]:
    """A copy of ``manifest`` whose marks record ``provenance`` (none for ``unknown``): what the
    adapter writes when it creates (``created``), adopts or takes a policy back."""
    body: dict[str, Any] = json.loads(json.dumps(manifest))
    annotations = body.setdefault("metadata", {}).setdefault("annotations", {})
    annotations.pop(PROVENANCE_ANNOTATION, None)
    if provenance.recorded:
        annotations[PROVENANCE_ANNOTATION] = provenance.recorded
    return body


def desired_items(policies: Sequence[Manifest]) -> list[DesiredItem[Manifest]]:
    items = []
    for policy in policies:
        annotations = policy["metadata"]["annotations"]
        items.append(
            DesiredItem(
                key=policy["metadata"]["name"],
                fingerprint=policy_fingerprint(policy),
                payload=policy,
                rows=tuple(annotations[ROWS_ANNOTATION].split(",")),
            )
        )
    return items
