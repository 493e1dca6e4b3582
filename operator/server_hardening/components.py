"""Where the guide's in-cluster services live: pod selectors and pod ports. Pure: no I/O here.

The guide names Services (``circleci-proxy``, ``nomad-server-external``, ...). A NetworkPolicy
selects pods and matches *pod* ports, so a Service is resolved through its own ``spec.selector``
and each port's ``targetPort`` (a number or a container-port name; both are valid NetworkPolicy
ports). The Kubernetes adapter reads the Services; this module only interprets them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server_hardening.compiler import CompiledIntent
from server_hardening.guide import Component
from server_hardening.model import LabelSelector
from server_hardening.rules import Finding, FindingCode


@dataclass(frozen=True, order=True)
class PodPort:
    port: int | str
    protocol: str = "TCP"

    def as_manifest(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "port": self.port}


@dataclass(frozen=True, order=True)
class SelectorRequirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def as_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "operator": self.operator}
        if self.values:
            out["values"] = list(self.values)
        return out


@dataclass(frozen=True)
class PodSelector:
    """A Kubernetes LabelSelector, hashable: components whose pods are the same share a policy.

    A Service's selector is labels only; a spec's ``podSelector`` may add expressions."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[SelectorRequirement, ...] = ()

    @classmethod
    def of_labels(cls, labels: Mapping[str, Any]) -> PodSelector:
        return cls(tuple(sorted((str(k), str(v)) for k, v in labels.items())))

    @classmethod
    def of_spec(cls, selector: LabelSelector) -> PodSelector:
        return cls(
            tuple(sorted(selector.match_labels.items())),
            tuple(
                SelectorRequirement(e.key, e.operator.value, tuple(e.values))
                for e in selector.match_expressions
            ),
        )

    def as_manifest(self) -> dict[str, Any]:
        """As a NetworkPolicy's ``podSelector`` (and as the API server returns it)."""
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [e.as_manifest() for e in self.match_expressions]
        return out

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for e in self.match_expressions:
            values = ",".join(e.values)
            parts.append(f"{e.key} {e.operator}" + (f" ({values})" if values else ""))
        return ",".join(parts)


@dataclass(frozen=True)
class ResolvedComponent:
    """The pods behind a component and the pod ports for each guide (Service) port."""

    component: Component
    pod_selector: PodSelector
    ports: tuple[PodPort, ...]
    source: str  # "service/<name>", "spec.kubernetes.components.<c>" or "assumed"
    service: str = ""


@dataclass(frozen=True)
class ServiceLookup:
    """A component to resolve from a Service: try ``names`` in order; keep ``service_ports``."""

    component: Component
    names: tuple[str, ...]
    service_ports: tuple[int, ...]
    from_spec: bool


def lookups(intent: CompiledIntent) -> tuple[list[ResolvedComponent], list[ServiceLookup]]:
    """Split the components the intent needs into those the spec pins by pod selector and those
    to resolve from a Service (the spec's or the profile's default)."""
    pinned: list[ResolvedComponent] = []
    pending: list[ServiceLookup] = []
    overrides = intent.spec.kubernetes.components
    for access in intent.cluster:
        override = getattr(overrides, _field(access.component))
        if override is not None and override.pod_selector is not None:
            pinned.append(
                ResolvedComponent(
                    component=access.component,
                    pod_selector=PodSelector.of_spec(override.pod_selector),
                    ports=tuple(PodPort(p) for p in override.ports),
                    source=f"spec.kubernetes.components.{access.component.value}",
                )
            )
            continue
        default = intent.component_default(access.component)
        if override is not None and override.service:
            names: tuple[str, ...] = (override.service,)
        elif default is not None:
            names = default.services
        else:
            continue
        pending.append(
            ServiceLookup(
                component=access.component,
                names=names,
                service_ports=access.service_ports,
                from_spec=override is not None,
            )
        )
    return pinned, pending


def _field(component: Component) -> str:
    return {
        Component.FRONTEND: "frontend",
        Component.NOMAD_SERVER: "nomad_server",
        Component.OUTPUT_PROCESSOR: "output_processor",
        Component.VM_SERVICE: "vm_service",
    }[component]


def from_service(lookup: ServiceLookup, service: Mapping[str, Any]) -> ResolvedComponent | Finding:
    """Interpret one Service body (as the API returns it, camelCase)."""
    name = str(service.get("metadata", {}).get("name", ""))
    spec = service.get("spec") or {}
    selector = spec.get("selector") or {}
    if not selector:
        return Finding.of(
            FindingCode.SERVICE_WITHOUT_SELECTOR,
            f"Service {name} has no selector: the pods behind {lookup.component.value} cannot "
            f"be found; pin them with spec.kubernetes.components.{lookup.component.value}"
            ".podSelector",
            target="kubernetes",
        )
    ports: list[PodPort] = []
    for port in spec.get("ports") or []:
        if int(port.get("port", 0)) in lookup.service_ports:
            target = port.get("targetPort", port.get("port"))
            ports.append(PodPort(target, str(port.get("protocol") or "TCP")))
    if not ports:
        wanted = ", ".join(str(p) for p in lookup.service_ports)
        return Finding.of(
            FindingCode.SERVICE_PORT_MISSING,
            f"Service {name} does not serve port {wanted} that the guide routes to "
            f"{lookup.component.value}",
            target="kubernetes",
        )
    return ResolvedComponent(
        component=lookup.component,
        pod_selector=PodSelector.of_labels(selector),
        ports=tuple(sorted(set(ports), key=lambda p: (str(p.port), p.protocol))),
        source=f"service/{name}",
        service=name,
    )


def assumed(lookup: ServiceLookup) -> tuple[ResolvedComponent, Finding]:
    """Offline (``hardening plan`` without a cluster): assume pods labelled ``app=<service>``
    listening on the Service's port numbers, and say so."""
    name = lookup.names[0]
    resolved = ResolvedComponent(
        component=lookup.component,
        pod_selector=PodSelector.of_labels({"app": name}),
        ports=tuple(PodPort(p) for p in lookup.service_ports),
        source="assumed",
        service=name,
    )
    finding = Finding.of(
        FindingCode.COMPONENT_ASSUMED,
        f"{lookup.component.value}: assumed pods labelled app={name} on ports "
        + ", ".join(str(p) for p in lookup.service_ports)
        + "; the operator resolves the Service's selector and targetPort in the cluster",
        target="kubernetes",
    )
    return resolved, finding


# What the resource remembers of each component resolved from a Service (``status.
# resolvedComponents``), so a Service that vanishes does not take its pods' allow with it: the
# allow is rendered from the last selector and ports, and re-created if its policy is deleted,
# until the Service is back. Status, not the policy's own annotations: the policy is exactly
# what can be deleted, and the status is written only by the operator.


def remembered_entry(resolved: ResolvedComponent) -> dict[str, Any]:
    """One entry of ``status.resolvedComponents`` (camelCase, as the status stores it)."""
    return {
        "component": resolved.component.value,
        "service": resolved.service,
        "podSelector": resolved.pod_selector.as_manifest(),
        "ports": [p.as_manifest() for p in resolved.ports],
    }


def recalled(lookup: ServiceLookup, entry: Mapping[str, Any] | None) -> ResolvedComponent | None:
    """The component as last resolved, from its ``status.resolvedComponents`` entry: None when
    there is none, it names a Service the lookup no longer tries (the spec changed), or it
    cannot be read (a status edited by hand is never trusted to widen anything)."""
    if not entry or entry.get("component") != lookup.component.value:
        return None
    service = str(entry.get("service") or "")
    if service not in lookup.names:
        return None
    try:
        selector = entry.get("podSelector") or {}
        labels = selector.get("matchLabels") or {}
        expressions = tuple(
            SelectorRequirement(str(e["key"]), str(e["operator"]), tuple(e.get("values") or ()))
            for e in selector.get("matchExpressions") or ()
        )
        ports = tuple(
            PodPort(
                p["port"] if isinstance(p["port"], int) else str(p["port"]),
                str(p.get("protocol") or "TCP"),
            )
            for p in entry.get("ports") or ()
        )
    except (KeyError, TypeError, AttributeError):
        return None
    if not (labels or expressions) or not ports:
        return None
    return ResolvedComponent(
        component=lookup.component,
        pod_selector=PodSelector(
            tuple(sorted((str(k), str(v)) for k, v in labels.items())), expressions
        ),
        ports=ports,
        source=f"remembered:service/{service}",
        service=service,
    )
