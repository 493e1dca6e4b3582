"""NetworkPolicy semantics (networking.k8s.io/v1), for truth tables over rendered policies.

A pod is isolated for a direction when any policy of its namespace selects it with that policy
type; an isolated pod accepts a connection when any selecting policy has a rule whose peers and
ports match. Policies add up: there is no deny.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Mapping[str, str]
    ip: str
    ports: Mapping[str, int] = field(default_factory=dict)  # named container ports


@dataclass(frozen=True)
class Outside:
    """A source or destination outside the cluster's pods (a node, a Nomad client, the world)."""

    ip: str


Party = Pod | Outside


def _selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _peer_matches(
    peer: Mapping[str, Any],
    party: Party,
    policy_namespace: str,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(party.ip)
        net = ipaddress.ip_network(block["cidr"])
        if address.version != net.version or address not in net:
            return False
        return not any(
            address in ipaddress.ip_network(e)
            for e in block.get("except") or []
            if ipaddress.ip_network(e).version == address.version
        )
    if not isinstance(party, Pod):
        return False
    if "namespaceSelector" in peer:
        ns_labels = namespace_labels.get(
            party.namespace, {"kubernetes.io/metadata.name": party.namespace}
        )
        if not _selects(peer["namespaceSelector"], ns_labels):
            return False
    elif party.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or _selects(peer["podSelector"], party.labels)


def _port_matches(
    ports: Sequence[Mapping[str, Any]] | None, port: int, proto: str, pod: Party
) -> bool:
    if not ports:
        return True
    for entry in ports:
        if (entry.get("protocol") or "TCP").upper() != proto.upper():
            continue
        value = entry.get("port")
        if value is None:
            return True
        if isinstance(value, str):
            if isinstance(pod, Pod) and pod.ports.get(value) == port:
                return True
            continue
        end = entry.get("endPort") or value
        if value <= port <= end:
            return True
    return False


def _policies_selecting(
    policies: Sequence[Mapping[str, Any]], pod: Pod, policy_type: str
) -> list[Mapping[str, Any]]:
    out = []
    for policy in policies:
        spec = policy["spec"]
        types = spec.get("policyTypes") or (
            ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
        )
        if (
            policy["metadata"].get("namespace") == pod.namespace
            and policy_type in types
            and _selects(spec.get("podSelector"), pod.labels)
        ):
            out.append(policy)
    return out


def allows(
    policies: Sequence[Mapping[str, Any]],
    source: Party,
    destination: Party,
    port: int,
    protocol: str = "TCP",
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> bool:
    """Both ends must allow: the source pod's egress (if it is a pod) and the destination pod's
    ingress (if it is a pod)."""
    ns_labels = namespace_labels or {}
    if isinstance(destination, Pod):
        selecting = _policies_selecting(policies, destination, "Ingress")
        if selecting and not any(
            any(_peer_matches(p, source, pol["metadata"]["namespace"], ns_labels)
                for p in rule.get("from") or [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}, {"namespaceSelector": {}}])
            and _port_matches(rule.get("ports"), port, protocol, destination)
            for pol in selecting
            for rule in pol["spec"].get("ingress") or []
        ):  # fmt: skip
            return False
    if isinstance(source, Pod):
        selecting = _policies_selecting(policies, source, "Egress")
        if selecting and not any(
            any(_peer_matches(p, destination, pol["metadata"]["namespace"], ns_labels)
                for p in rule.get("to") or [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}, {"namespaceSelector": {}}])
            and _port_matches(rule.get("ports"), port, protocol, destination)
            for pol in selecting
            for rule in pol["spec"].get("egress") or []
        ):  # fmt: skip
            return False
    return True
