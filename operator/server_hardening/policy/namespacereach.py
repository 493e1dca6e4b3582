"""The server's namespace as it is really reachable: the guide's Kubernetes checks answered on
every NetworkPolicy of the namespace (managed or not) and its real pods. Pure: no I/O here.

``verification.cluster_checks`` says what must be allowed and blocked; each check is answered
with the NetworkPolicy semantics of :mod:`server_hardening.policy.podreach` for every pair of
parties it stands for:

- a component's pods are the running pods its Service (or the spec) selects, on the pod ports
  the guide's Service ports map to; with none running, a pod with the selector's labels stands
  in, so a namespace before its first deployment is still answered;
- "pods of the namespace" are its pods (grouped by labels: NetworkPolicies select by labels),
  on every port each declares, less the component ports the guide opens to that source;
- an address endpoint is one representative address of its ranges, as for the clouds.

A check that must be allowed holds when every pair connects; one that must be blocked holds when
none does. The evidence names the pods and ports that went the other way and the policies that
decided it, each marked when it is not the operator's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server_hardening.components import PodPort, ResolvedComponent
from server_hardening.guide import Component
from server_hardening.machines import ClusterPod, DeclaredPort, NamespaceMachines
from server_hardening.policy.podreach import (
    Outside,
    Party,
    Pod,
    as_source,
    decide,
    in_block,
    selects,
)
from server_hardening.rules import Finding, FindingCode
from server_hardening.verification import AnswersOnce, Check, CheckResult, Endpoint, Pods

TARGET = "kubernetes"
NAMED = 5  # pods named in one message; the rest are counted
KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"}, "", name="kube-system/kube-dns")
OTHER_NAMESPACE = "another-namespace"
# With no pod running, a pod no component selects (no labels) stands in for the rest of the
# namespace (a data store, an API service), on a port such pods commonly serve.
ANY_POD_PORT = 8080


@dataclass(frozen=True)
class _Pair:
    source: Party
    destination: Party
    port: int
    protocol: str

    def describe(self) -> str:
        return f"{_party_name(self.source)} -> {_party_name(self.destination)}:{self.port}"


def _party_name(party: Party) -> str:
    if isinstance(party, Outside):
        return party.ip
    return party.name or f"{party.namespace}/{dict(party.labels)}"


def _as_pod(namespace: str, pod: ClusterPod) -> Pod:
    named = {p.name: p.port for p in pod.ports if p.name}
    return Pod(namespace, dict(pod.labels), pod.ip, named, name=pod.name)


def _stand_in(namespace: str, component: ResolvedComponent) -> tuple[Pod, tuple[int, ...]]:
    """A pod with the selector's labels, for a component with no pod running."""
    selector = component.pod_selector
    labels = dict(selector.match_labels)
    for expr in selector.match_expressions:
        if expr.operator == "In" and expr.values:
            labels[expr.key] = expr.values[0]
        elif expr.operator == "Exists":
            labels[expr.key] = "x"
    numbers = tuple(int(p.port) for p in component.ports if isinstance(p.port, int))
    name = f"{component.component.value} (no pod running; labels {selector})"
    return Pod(namespace, labels, "", name=name), numbers


ANY_POD = "a pod of the namespace (none running; no labels)"


class NamespaceReach(AnswersOnce):
    """The ``kubernetes`` target's evaluator (``verification.Evaluator``)."""

    target = TARGET

    def __init__(
        self,
        machines: NamespaceMachines,
        resolved: Mapping[Component, ResolvedComponent],
        managed: frozenset[str],
    ) -> None:
        super().__init__()
        self.namespace = machines.namespace
        self.policies = machines.policies
        self.resolved = dict(resolved)
        self.managed = managed
        self.pods = [_as_pod(self.namespace, p) for p in machines.pods]
        self._declared: dict[str, tuple[DeclaredPort, ...]] = {
            p.name: p.ports for p in machines.pods
        }
        # Another namespace's pods send from the same ranges as this namespace's (one CNI). On
        # the AWS VPC CNI those are the node subnets, and most plugins (Calico, kube-router, the
        # VPC CNI's own agent) match pod addresses in an ``ipBlock``: a policy admitting the
        # nodes then admits every pod of the cluster, which the default-deny check must see.
        self._pod_address = next((p.ip for p in machines.pods if p.ip), "")
        # The parties, found once: each component's pods with their ports (a stand-in when none
        # runs), and the namespace's pods, one per set of labels (NetworkPolicies select by
        # labels), or the stand-ins when nothing runs.
        self._components = {c: self._pods_of(r) for c, r in self.resolved.items()}
        if self.pods:
            by_labels: dict[tuple[tuple[str, str], ...], Pod] = {}
            for pod in self.pods:
                by_labels.setdefault(tuple(sorted(pod.labels.items())), pod)
            self._namespace = list(by_labels.values())
        else:
            anyone = Pod(self.namespace, {}, "", name=ANY_POD)
            self._declared[ANY_POD] = (DeclaredPort(ANY_POD_PORT),)
            stand_ins = [pod for pods in self._components.values() for pod, _ in pods]
            self._namespace = [anyone, *stand_ins]

    # -- the parties a check stands for ----------------------------------------------------------

    def _pods_of(self, resolved: ResolvedComponent) -> list[tuple[Pod, tuple[int, ...]]]:
        selector = resolved.pod_selector.as_manifest()
        running = [p for p in self.pods if selects(selector, p.labels)]
        if not running:
            pod, numbers = _stand_in(self.namespace, resolved)
            self._declared[pod.name] = tuple(DeclaredPort(n) for n in numbers)
            return [(pod, numbers)]
        return [(p, self._ports_of(p, resolved.ports)) for p in running]

    def _component_pods(self, component: Component) -> list[tuple[Pod, tuple[int, ...]]]:
        return self._components.get(component, [])

    @staticmethod
    def _ports_of(pod: Pod, ports: Sequence[PodPort]) -> tuple[int, ...]:
        out = []
        for port in ports:
            if isinstance(port.port, int):
                out.append(port.port)
            elif port.port in pod.ports:
                out.append(pod.ports[port.port])
        return tuple(out)

    def _declared_ports(self, pod: Pod, protocol: str) -> tuple[int, ...]:
        return tuple(
            p.port
            for p in self._declared.get(pod.name, ())
            if p.protocol.upper() == protocol.upper()
        )

    def _opened(self, pod: Pod, check: Check) -> set[int]:
        """The pod's ports the guide opens to the check's source (left out of a default deny)."""
        out: set[int] = set()
        for component, _service_port in check.guide_opens:
            resolved = self.resolved.get(component)
            if resolved is not None and selects(resolved.pod_selector.as_manifest(), pod.labels):
                out |= set(self._ports_of(pod, resolved.ports))
        return out

    def _sources(self, endpoint: Endpoint) -> list[Party]:
        if endpoint.pods is Pods.NAMESPACE:
            # As sources, pods that every policy treats alike are one (podreach.as_source).
            distinct: dict[tuple[tuple[int, int, int], ...], Pod] = {}
            for pod in self._namespace:
                distinct.setdefault(as_source(self.policies, pod), pod)
            return list(distinct.values())
        if endpoint.pods is Pods.OTHER_NAMESPACE:
            return [Pod(OTHER_NAMESPACE, {}, self._pod_address, name=f"{OTHER_NAMESPACE}/a pod")]
        if endpoint.component is not None:
            return [pod for pod, _ in self._component_pods(endpoint.component)]
        return [Outside(endpoint.address())]

    def _pairs(self, check: Check) -> list[_Pair]:
        sources = self._sources(check.source)
        destination = check.destination
        targets: list[tuple[Party, tuple[int, ...]]]
        if destination.component is not None:
            targets = list(self._component_pods(destination.component))
        elif destination.pods is Pods.NAMESPACE:
            targets = []
            for pod in self._namespace:
                opened = self._opened(pod, check)
                if check.port:
                    ports: tuple[int, ...] = (check.port,)
                else:
                    ports = self._declared_ports(pod, check.protocol)
                targets.append((pod, tuple(p for p in ports if p not in opened)))
        elif destination.pods is Pods.CLUSTER_DNS:
            targets = [(KUBE_DNS, (check.port,))]
        else:
            targets = [(Outside(destination.address()), (check.port,))]
        return [
            _Pair(source, target, port, check.protocol)
            for source in sources
            for target, ports in targets
            for port in ports
            if source != target
        ]

    # -- answers ---------------------------------------------------------------------------------

    def _why_no_port(self, check: Check) -> str:
        component = check.destination.component or check.source.component
        resolved = self.resolved.get(component) if component is not None else None
        if resolved is None:
            return "no pod of the namespace declares a port to check"
        named = ", ".join(str(p.port) for p in resolved.ports if isinstance(p.port, str))
        return (
            f"the pods of {resolved.component.value} ({resolved.pod_selector}) declare no "
            f"container port named {named}: nothing can reach them on it"
        )

    def _by_address(self, names: Iterable[str]) -> bool:
        """Whether one of these policies admits the pods' own addresses by an ``ipBlock``."""
        wanted = set(names)
        return bool(self._pod_address) and any(
            in_block(peer["ipBlock"], self._pod_address)
            for policy in self.policies
            if policy["metadata"]["name"] in wanted
            for rule in policy["spec"].get("ingress") or []
            for peer in rule.get("from") or []
            if "ipBlock" in peer
        )

    def _mark(self, names: Sequence[str]) -> list[str]:
        return [
            f"NetworkPolicy {n}" + ("" if n in self.managed else " (not managed)") for n in names
        ]

    def _evaluate(self, check: Check) -> CheckResult:
        pairs = self._pairs(check)
        if not pairs:
            return CheckResult(check, None, decided_by=(self._why_no_port(check),))
        decisions = [
            (pair, decide(self.policies, pair.source, pair.destination, pair.port, pair.protocol))
            for pair in pairs
        ]
        against = [(p, d) for p, d in decisions if d.allowed != check.expect]
        shown = against or decisions
        decided = dict.fromkeys(name for _, d in shown for name in d.decided_by)
        evidence = self._mark(list(decided)) or ["no NetworkPolicy isolates these pods"]
        if against and check.source.pods is Pods.OTHER_NAMESPACE and self._by_address(decided):
            evidence.append(
                f"pods send from this namespace's pods' ranges (such as {self._pod_address}), "
                "which an ipBlock of those policies admits (the nodes' ranges hold the pods, as "
                "on the AWS VPC CNI): when the load balancer keeps client addresses or targets "
                "pods, set topology.loadBalancers.transparent; otherwise every pod of the "
                "cluster reaches these ports"
            )
        allowed = any(d.allowed for _, d in decisions)
        if check.expect:
            allowed = all(d.allowed for _, d in decisions)
        return CheckResult(
            check,
            allowed,
            machines=tuple(dict.fromkeys(p.describe() for p, _ in shown)),
            decided_by=tuple(evidence),
        )

    def findings(self, checks: Sequence[Check]) -> list[Finding]:
        """A flow a guide row needs, blocked although every policy the operator writes is in
        place (a pod without the named port its Service targets, another policy's isolation):
        ``GuideRowBlocked``. What widens is judged per policy by the target's policy
        (``UnmanagedWidening``) and shows here as a violated row."""
        present = {str(p["metadata"]["name"]) for p in self.policies}
        if not self.managed <= present:
            return []  # the missing managed policy is drift, reported and repaired as such
        out = []
        for check, result in self.blocked_allows(checks):
            out.append(
                Finding.of(
                    FindingCode.GUIDE_ROW_BLOCKED,
                    f"{check.describe()}, but it is blocked for "
                    f"{', '.join(result.machines[:NAMED])}"
                    + (
                        f" (+{len(result.machines) - NAMED})"
                        if len(result.machines) > NAMED
                        else ""
                    )
                    + f": {'; '.join(result.decided_by)} isolate the pods and none admits it",
                    row=check.row,
                    target=TARGET,
                    objects=tuple(result.machines[:NAMED]),
                )
            )
        return out


def pods_of(listing: Mapping[str, Any]) -> tuple[ClusterPod, ...]:
    """The pods of a ``list pods`` answer, as NetworkPolicies see them: pods on the host's
    network are left out (no NetworkPolicy applies to them), and so are finished ones."""
    out = []
    for item in listing.get("items") or []:
        spec = item.get("spec") or {}
        status = item.get("status") or {}
        if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        ports = tuple(
            DeclaredPort(
                int(port["containerPort"]),
                str(port.get("protocol") or "TCP"),
                str(port.get("name") or ""),
            )
            for container in spec.get("containers") or []
            for port in container.get("ports") or []
            if port.get("containerPort")
        )
        meta = item.get("metadata") or {}
        out.append(
            ClusterPod(
                name=str(meta.get("name", "")),
                labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
                ip=str(status.get("podIP") or ""),
                ports=ports,
            )
        )
    return tuple(out)
