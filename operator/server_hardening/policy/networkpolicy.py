"""Checks on NetworkPolicies the operator does not own. Pure: no I/O here.

NetworkPolicies add up: one extra policy that allows more undoes the managed ones. The chain
first asks what every target asks (:func:`.exposure.world_open_sensitive_port`: does it open a
sensitive port to the whole internet?), then the NetworkPolicy-specific checks, each a named
pure function over one unmanaged policy and the managed set that returns why it widens access,
or None. :func:`judge_policy` returns the first finding, or None when the policy only allows what
the managed policies allow already (or less).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server_hardening.addresses import AddressSet
from server_hardening.components import ResolvedComponent
from server_hardening.drift import Claim, Claimer, DesiredItem, ObservedItem, UnmanagedJudge
from server_hardening.guide import Component
from server_hardening.machines import NamespaceMachines
from server_hardening.ownership import ROWS_ANNOTATION
from server_hardening.policy.exposure import WORLD, Access, world_open_sensitive_port
from server_hardening.policy.namespacereach import NamespaceReach
from server_hardening.renderers.networkpolicy import Manifest, desired_items, normalise_spec
from server_hardening.rules import Direction, Finding, FindingCode, PortRange

TARGET = "kubernetes"


@dataclass(frozen=True)
class ManagedView:
    """What the managed policies allow, reduced to what the checks compare against."""

    # (matchLabels of the component pods, allowed CIDRs, allowed ports as (protocol, port))
    components: tuple[tuple[dict[str, str], tuple[str, ...], tuple[tuple[str, str], ...]], ...]
    restrict_egress: bool


def managed_view(policies: Sequence[Mapping[str, Any]], *, restrict_egress: bool) -> ManagedView:
    components = []
    for policy in policies:
        spec = policy.get("spec") or {}
        labels = (spec.get("podSelector") or {}).get("matchLabels") or {}
        if not labels:
            continue
        for rule in spec.get("ingress") or []:
            cidrs = tuple(p["ipBlock"]["cidr"] for p in rule.get("from") or [] if "ipBlock" in p)
            ports = tuple(
                ((p.get("protocol") or "TCP").upper(), str(p.get("port")))
                for p in rule.get("ports") or []
            )
            components.append((dict(labels), cidrs, ports))
    return ManagedView(tuple(components), restrict_egress)


Check = Callable[[str, Mapping[str, Any], ManagedView], str | None]


def _peers(rule: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    return list(rule.get(key) or [])


def allows_every_source(name: str, spec: Mapping[str, Any], view: ManagedView) -> str | None:
    for rule in spec.get("ingress") or []:
        if not _peers(rule, "from"):
            ports = rule.get("ports")
            where = (
                "every port"
                if not ports
                else "ports " + ", ".join(str(p.get("port")) for p in ports)
            )
            return f"allows ingress from every source on {where}"
    return None


def admits_other_namespaces(name: str, spec: Mapping[str, Any], view: ManagedView) -> str | None:
    for rule in spec.get("ingress") or []:
        for peer in _peers(rule, "from"):
            if "namespaceSelector" in peer:
                return "admits pods from other namespaces (namespaceSelector)"
    return None


def admits_addresses_beyond_the_guide(
    name: str, spec: Mapping[str, Any], view: ManagedView
) -> str | None:
    """An ipBlock is fine only where a managed component policy admits the same addresses on
    the same ports to the same pods (the unmanaged policy then adds nothing)."""
    labels = (spec.get("podSelector") or {}).get("matchLabels") or {}
    has_expressions = bool((spec.get("podSelector") or {}).get("matchExpressions"))
    for rule in spec.get("ingress") or []:
        blocks = [p["ipBlock"]["cidr"] for p in _peers(rule, "from") if "ipBlock" in p]
        if not blocks:
            continue
        ports = {
            ((p.get("protocol") or "TCP").upper(), str(p.get("port")))
            for p in rule.get("ports") or []
        }
        covered = False
        for comp_labels, cidrs, comp_ports in view.components:
            selects_subset = not has_expressions and all(
                labels.get(k) == v for k, v in comp_labels.items()
            )
            if (
                selects_subset
                and ports
                and ports <= set(comp_ports)
                and AddressSet.of(cidrs).covers(AddressSet.of(blocks))
            ):
                covered = True
                break
        if not covered:
            return (
                "admits " + ", ".join(blocks) + " to "
                + (",".join(f"{k}={v}" for k, v in labels.items()) or "every pod")
                + " beyond what the guide's rows allow"
            )  # fmt: skip
    return None


def opens_egress_when_restricted(
    name: str, spec: Mapping[str, Any], view: ManagedView
) -> str | None:
    if not view.restrict_egress:
        return None
    for rule in spec.get("egress") or []:
        peers = _peers(rule, "to")
        if not peers or any("podSelector" not in p or "namespaceSelector" in p for p in peers):
            return "allows egress beyond the namespace while restrictEgress is on"
    return None


CHAIN: tuple[Check, ...] = (
    allows_every_source,
    admits_other_namespaces,
    admits_addresses_beyond_the_guide,
    opens_egress_when_restricted,
)


def accesses(policy: Mapping[str, Any]) -> list[Access]:
    """The policy's ingress rules as Accesses: a rule with no ``from`` admits every source (the
    whole internet too, through a load balancer or NodePort); ``ipBlock`` peers are their CIDRs;
    pod and namespace selectors are cluster-internal and name no addresses. Named ports cannot
    be resolved here and match no numbered port."""
    name = str((policy.get("metadata") or {}).get("name", ""))
    spec = policy.get("spec") or {}
    out = []
    for rule in spec.get("ingress") or []:
        peers = _peers(rule, "from")
        cidrs = WORLD if not peers else tuple(p["ipBlock"]["cidr"] for p in peers if "ipBlock" in p)
        if not cidrs:
            continue
        by_protocol: dict[str, list[PortRange]] = {}
        every_port: set[str] = set()
        for port in rule.get("ports") or [{}]:
            protocol = str(port.get("protocol") or "TCP").lower()
            number = port.get("port")
            if number is None:
                every_port.add(protocol if port else "all")
            elif isinstance(number, int):
                last = int(port.get("endPort") or number)
                by_protocol.setdefault(protocol, []).append(PortRange(number, last))
        where = f"NetworkPolicy {name} (not managed)"
        for protocol in sorted(every_port):
            out.append(Access(Direction.INGRESS, cidrs, protocol, None, where))
        for protocol, ranges in sorted(by_protocol.items()):
            out.append(Access(Direction.INGRESS, cidrs, protocol, tuple(ranges), where))
    return out


def judge_policy(policy: Mapping[str, Any], view: ManagedView) -> Finding | None:
    for access in accesses(policy):
        exposed = world_open_sensitive_port(access, TARGET)
        if exposed is not None:
            return exposed
    name = str((policy.get("metadata") or {}).get("name", ""))
    spec = policy.get("spec") or {}
    for check in CHAIN:
        reason = check(name, spec, view)
        if reason is not None:
            return Finding.of(
                FindingCode.UNMANAGED_WIDENING,
                f"NetworkPolicy {name} (not managed) {reason} [{check.__name__}]",
                row="CHOICE-NP-DEFAULT-DENY",
                target=TARGET,
            )
    return None


class KubernetesPolicy:
    """The ``kubernetes`` target's judgement (:class:`~server_hardening.policy.base.TargetPolicy`):
    the rendered NetworkPolicies are desired; an unmarked policy under one of our names is
    adopted when its spec is exactly the desired one, taken back when it still carries our
    guide-rows annotation (an orphaning release, or stripped ownership marks), so an Orphan then
    re-create converges; other policies go through :func:`judge_policy`. No other controller's
    NetworkPolicies are known: they are declared as exceptions."""

    def __init__(
        self,
        policies: Sequence[Manifest],
        *,
        restrict_egress: bool,
        remove_unmanaged: bool = False,
        resolved: Mapping[Component, ResolvedComponent] | None = None,
    ) -> None:
        self.policies = tuple(policies)
        self._remove_unmanaged = remove_unmanaged
        self._view = managed_view(self.policies, restrict_egress=restrict_egress)
        self._resolved = dict(resolved or {})

    def effective(self, machines: NamespaceMachines) -> NamespaceReach:
        """The namespace as it is really reachable: the guide's Kubernetes checks answered on
        every policy in it and its pods (``policy.namespacereach``)."""
        managed = frozenset(str(p["metadata"]["name"]) for p in self.policies)
        return NamespaceReach(machines, self._resolved, managed)

    @property
    def remove_unmanaged(self) -> bool:
        return self._remove_unmanaged

    def desired(self) -> Sequence[DesiredItem[Manifest]]:
        return desired_items(self.policies)

    def judge_unmanaged(
        self, observed: Sequence[ObservedItem[Manifest]]
    ) -> UnmanagedJudge[Manifest]:
        def judge(item: ObservedItem[Manifest]) -> Finding | None:
            return judge_policy(item.payload, self._view)

        return judge

    def judge_foreign(self) -> UnmanagedJudge[Manifest]:
        return lambda item: None

    def claimer(self) -> Claimer[Manifest]:
        def claim(item: ObservedItem[Manifest], desired: DesiredItem[Manifest]) -> Claim | None:
            observed_spec = normalise_spec(item.payload.get("spec") or {})
            if observed_spec == normalise_spec(desired.payload.get("spec") or {}):
                return Claim.ADOPT
            annotations = (item.payload.get("metadata") or {}).get("annotations") or {}
            return Claim.TAKE_BACK if ROWS_ANNOTATION in annotations else None

        return claim
