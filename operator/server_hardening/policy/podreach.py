"""NetworkPolicy semantics (``networking.k8s.io/v1``): may this connection happen? Pure.

A pod is isolated for a direction when any policy of its namespace selects it with that policy
type; an isolated pod accepts a connection when any selecting policy has a rule whose peers and
ports match. Policies add up: there is no deny. A connection needs both ends: the source pod's
egress (when the source is a pod) and the destination pod's ingress (when it is a pod).

The same semantics answer ``hardening verify``'s Kubernetes rows (on every policy of the
namespace, managed or not, and the namespace's real pods) and the tests' truth tables (on the
rendered policies); the field tier holds both to real packets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# A rule without ``from``/``to`` admits every peer: every address and every pod.
_EVERY_PEER: tuple[Mapping[str, Any], ...] = (
    {"ipBlock": {"cidr": "0.0.0.0/0"}},
    {"ipBlock": {"cidr": "::/0"}},
    {"namespaceSelector": {}},
)


@dataclass(frozen=True)
class Pod:
    """A pod as NetworkPolicies see it: its namespace, labels, address and named ports."""

    namespace: str
    labels: Mapping[str, str]
    ip: str
    ports: Mapping[str, int] = field(default_factory=dict)  # named container ports
    name: str = ""


@dataclass(frozen=True)
class Outside:
    """A source or destination outside the cluster's pods (a node, a Nomad client, the world)."""

    ip: str


Party = Pod | Outside


@dataclass(frozen=True)
class Decision:
    """Whether a connection is allowed, and the policies that decided it: those that admit it
    (allowed), or those that isolate the end that refuses it (blocked)."""

    allowed: bool
    decided_by: tuple[str, ...]


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A label selector (``matchLabels``, ``matchExpressions``) on a set of labels; an empty
    or absent selector selects everything."""
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


def in_block(block: Mapping[str, Any], ip: str) -> bool:
    """Whether ``ip`` is in an ``ipBlock`` (its ``cidr``, less its ``except``)."""
    if not ip:
        return False
    address = ipaddress.ip_address(ip)
    net = ipaddress.ip_network(block["cidr"], strict=False)
    if address.version != net.version or address not in net:
        return False
    return not any(
        address in ipaddress.ip_network(e, strict=False)
        for e in block.get("except") or []
        if ipaddress.ip_network(e, strict=False).version == address.version
    )


def _peer_matches(
    peer: Mapping[str, Any],
    party: Party,
    policy_namespace: str,
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> bool:
    if "ipBlock" in peer:
        return in_block(peer["ipBlock"], party.ip)
    if not isinstance(party, Pod):
        return False
    if "namespaceSelector" in peer:
        ns_labels = namespace_labels.get(
            party.namespace, {"kubernetes.io/metadata.name": party.namespace}
        )
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif party.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], party.labels)


def _port_matches(
    ports: Sequence[Mapping[str, Any]] | None, port: int, protocol: str, destination: Party
) -> bool:
    if not ports:
        return True
    for entry in ports:
        if (entry.get("protocol") or "TCP").upper() != protocol.upper():
            continue
        value = entry.get("port")
        if value is None:
            return True
        if isinstance(value, str):
            # A named port is the destination pod's container port of that name.
            if isinstance(destination, Pod) and destination.ports.get(value) == port:
                return True
            continue
        end = entry.get("endPort") or value
        if value <= port <= end:
            return True
    return False


def policy_types(spec: Mapping[str, Any]) -> list[str]:
    """The policy's types as the API server defaults them: Ingress always, Egress when the
    policy has egress rules."""
    return list(
        spec.get("policyTypes") or (["Ingress", "Egress"] if spec.get("egress") else ["Ingress"])
    )


def selecting(
    policies: Sequence[Mapping[str, Any]], pod: Pod, policy_type: str
) -> list[Mapping[str, Any]]:
    """The policies that isolate ``pod`` for ``policy_type`` ("Ingress" or "Egress")."""
    return [
        policy
        for policy in policies
        if policy["metadata"].get("namespace") == pod.namespace
        and policy_type in policy_types(policy["spec"])
        and selects(policy["spec"].get("podSelector"), pod.labels)
    ]


def _side(
    policies: Sequence[Mapping[str, Any]],
    isolated: Pod,
    other: Party,
    destination: Party,
    port: int,
    protocol: str,
    namespace_labels: Mapping[str, Mapping[str, str]],
    *,
    ingress: bool,
) -> Decision | None:
    """One end's answer; None when that end is not isolated for the direction."""
    policy_type, rules_key, peers_key = (
        ("Ingress", "ingress", "from") if ingress else ("Egress", "egress", "to")
    )
    isolating = selecting(policies, isolated, policy_type)
    if not isolating:
        return None
    admitting = [
        str(policy["metadata"]["name"])
        for policy in isolating
        if any(
            any(
                _peer_matches(peer, other, policy["metadata"]["namespace"], namespace_labels)
                for peer in rule.get(peers_key) or _EVERY_PEER
            )
            and _port_matches(rule.get("ports"), port, protocol, destination)
            for rule in policy["spec"].get(rules_key) or []
        )
    ]
    if admitting:
        return Decision(True, tuple(admitting))
    return Decision(False, tuple(str(p["metadata"]["name"]) for p in isolating))


def as_source(
    policies: Sequence[Mapping[str, Any]],
    pod: Pod,
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[tuple[int, int, int], ...]:
    """What decides every connection ``pod`` starts: the ingress peers it matches (policy,
    rule, peer) and the policies that isolate it for egress. Two pods with the same answer
    are the same source for :func:`decide`, whatever the destination."""
    labels = namespace_labels or {}
    out: list[tuple[int, int, int]] = []
    for p_index, policy in enumerate(policies):
        namespace = policy["metadata"].get("namespace", "")
        for r_index, rule in enumerate(policy["spec"].get("ingress") or []):
            for e_index, peer in enumerate(rule.get("from") or _EVERY_PEER):
                if _peer_matches(peer, pod, namespace, labels):
                    out.append((p_index, r_index, e_index))
        if selecting([policy], pod, "Egress"):
            out.append((p_index, -1, -1))
    return tuple(out)


def decide(
    policies: Sequence[Mapping[str, Any]],
    source: Party,
    destination: Party,
    port: int,
    protocol: str = "TCP",
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None,
) -> Decision:
    """Whether ``source`` may connect to ``destination`` on ``protocol``/``port``, and which
    policies decided it (none: neither end is isolated)."""
    labels = namespace_labels or {}
    decided: list[str] = []
    # The destination's ingress, then the source's egress: the first end that refuses decides.
    for end, other, ingress in ((destination, source, True), (source, destination, False)):
        if not isinstance(end, Pod):
            continue
        answer = _side(policies, end, other, destination, port, protocol, labels, ingress=ingress)
        if answer is not None:
            if not answer.allowed:
                return answer
            decided += answer.decided_by
    return Decision(True, tuple(dict.fromkeys(decided)))
