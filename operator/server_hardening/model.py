"""The ServerHardening API (``hardening.circleci.com/v1alpha1``). Pure: no I/O here.

This model is the single source of truth: the CRD's schema is generated from it
(:mod:`server_hardening.crd`), the operator parses every resource through :func:`parse_spec` once,
at the edge, and every later stage takes the typed object.

Errors name the field and the reason, e.g.
``spec.topology.nomadClients.cidrs[2]: '10.0.0.300/24' is not a valid CIDR``.

Why one module of this size: it *is* the API. Each field keeps its description, pattern and CEL
rule beside its siblings, in the order docs/resource.md and the CRD show them, and the
cross-field checks sit beside the fields they read; split by size, a reviewer of an API change
would read several files for one object.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from server_hardening import addresses, messages
from server_hardening.rules import Role

GROUP = "hardening.circleci.com"
VERSION = "v1alpha1"
KIND = "ServerHardening"
PLURAL = "serverhardenings"
SINGULAR = "serverhardening"
SHORT_NAMES = ("svh",)
API_VERSION = f"{GROUP}/{VERSION}"

CIDR_PATTERN = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"
SERVER_VERSION_PATTERN = r"^[34](\.(x|[0-9]+(\.[0-9]+)?))?$"
# A Go/Kubernetes duration of whole hours, minutes and seconds: "90s", "1m30s", "2h", "1h30m0s".
DURATION_PATTERN = r"^([0-9]+(h|m|s))+$"
_DURATION_UNITS = {"h": 3600, "m": 60, "s": 1}


def duration_seconds(text: str) -> int:
    """Seconds in a duration that matches :data:`DURATION_PATTERN` ("1m30s" -> 90)."""
    return sum(
        int(number) * _DURATION_UNITS[unit] for number, unit in re.findall(r"([0-9]+)(h|m|s)", text)
    )


def _at_least_a_second(text: str) -> str:
    if re.fullmatch(DURATION_PATTERN, text) and duration_seconds(text) < 1:
        raise ValueError(f"{text!r} is shorter than 1s")
    return text


WORLD = ("0.0.0.0/0", "::/0")
MAX_CIDRS = 64  # bounded lists keep the CRD's CEL rules within the API server's cost budget


def _cel(*rules: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """CEL rules for the CRD (``x-kubernetes-validations``), so the API server refuses what
    the model refuses before the operator ever sees it. Each is ``(rule, message)`` or
    ``(rule, message, fieldPath)``: the field path makes the API server name the same field
    the model names."""
    out = []
    for rule in rules:
        entry = {"rule": rule[0], "message": rule[1]}
        if len(rule) == 3:
            entry["fieldPath"] = rule[2]
        out.append(entry)
    return {"x-kubernetes-validations": out}


# Parsing a spec recorded before host bits were refused (status.lastValidSpec): its CIDRs are
# read as they were enforced then, host bits cleared, so an upgrade never stops enforcement.
RECORDED = "recorded"


def _normalise_cidr(value: str, info: ValidationInfo) -> str:
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{messages.shown(value)} is not a valid CIDR") from None
    recorded = isinstance(info.context, Mapping) and info.context.get(RECORDED)
    if network.network_address != ipaddress.ip_interface(value.strip()).ip and not recorded:
        if network.prefixlen == 0:
            raise ValueError(
                f"{messages.shown(value)} is the whole internet ({network}) with host bits set"
            )
        # Refused rather than cleared: 10.40.1.0/19 may mean 10.40.0.0/19 (32 times wider than
        # a /24) or a typo of 10.40.1.0/24, and a firewall must not guess which.
        raise ValueError(
            f"{messages.shown(value)} has host bits set: the /{network.prefixlen} network it "
            "lies in is "
            f"{network}; write that, or a longer prefix if you meant a smaller subnet"
        )
    return str(network)


Cidr = Annotated[
    str,
    Field(
        pattern=CIDR_PATTERN,
        max_length=43,
        description="An IPv4 or IPv6 CIDR in network form (10.0.0.0/24; 10.0.0.1/24, with host "
        "bits set, is refused).",
        json_schema_extra=_cel(
            ("isCIDR(self)", "is not a valid CIDR"),
            (
                "!isCIDR(self) || cidr(self) == cidr(self).masked()",
                "has host bits set: write the network address (10.0.0.0/24, not 10.0.0.1/24)",
            ),
        ),
    ),
    AfterValidator(_normalise_cidr),
]


class _Spec(BaseModel):
    """Base: camelCase on the wire, unknown fields refused, immutable once parsed. Booleans and
    integers are strict and strings are kept as written, as the API server takes them (one
    verdict: ``"yes"`` is no boolean and ``" 4.3"`` no version in either)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class Mode(enum.StrEnum):
    ENFORCE = "Enforce"
    AUDIT = "Audit"


class UnmanagedRules(enum.StrEnum):
    REPORT = "Report"
    REMOVE = "Remove"


class DeletionPolicy(enum.StrEnum):
    DELETE = "Delete"
    ORPHAN = "Orphan"


class PortRangeSpec(_Spec):
    """An inclusive port range."""

    model_config = ConfigDict(
        json_schema_extra=_cel(("self.from <= self.to", "from must not be greater than to"))
    )

    from_: StrictInt = Field(alias="from", ge=1, le=65535, description="First port.")
    to: StrictInt = Field(ge=1, le=65535, description="Last port (>= from).")

    @model_validator(mode="after")
    def _ordered(self) -> PortRangeSpec:
        if self.from_ > self.to:
            raise ValueError(f"from ({self.from_}) is greater than to ({self.to})")
        return self


class RoleTopology(_Spec):
    """The addresses of one kind of compute."""

    cidrs: list[Cidr] = Field(
        min_length=1, max_length=MAX_CIDRS, description="The role's subnets (CIDRs)."
    )


class NomadRuntime(enum.StrEnum):
    DOCKER = "docker"
    PODMAN = "podman"


class NomadClientsTopology(RoleTopology):
    """The Nomad clients: their subnets and the container runtime that runs the jobs."""

    runtime: NomadRuntime = Field(
        NomadRuntime.DOCKER,
        description="The runtime the Nomad clients run jobs with: docker, or podman "
        "(server-terraform's use_podman; CircleCI 4.10's docker_provisioner.use_podman). It "
        "picks the SSH-rerun range of NOMAD-IN-2: 64535-65535 with docker, 32768-65535 with "
        "podman (CHOICE-NOMAD-PODMAN).",
    )


class KubernetesPodsTopology(_Spec):
    """The pods' own addresses, when they are not in the node subnets."""

    cidrs: list[Cidr] = Field(
        min_length=1,
        max_length=MAX_CIDRS,
        description="The cluster's pod ranges (on VPC-native GKE the cluster's clusterIpv4Cidr, "
        "the pods' alias IPs; on EKS only with custom networking or a secondary CIDR). Every "
        "guide row whose peer is the Kubernetes nodes also admits them (CHOICE-K8S-PODS).",
    )


class ExternalVMsTopology(_Spec):
    """The subnets the external VMs (machine and remote-Docker jobs) run in."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "(has(self.enabled) && !self.enabled) || (has(self.cidrs) && size(self.cidrs) > 0)",
                "required when externalVMs is enabled",
                ".cidrs",
            )
        )
    )

    enabled: StrictBool = Field(
        True, description="False when the installation runs no external VMs."
    )
    cidrs: list[Cidr] = Field(
        default_factory=list, max_length=MAX_CIDRS, description="Required when enabled."
    )


class LoadBalancerTargets(enum.StrEnum):
    INSTANCE = "Instance"
    IP = "IP"


class LoadBalancersTopology(_Spec):
    """The load balancers in front of the cluster (LB-IN, LB-OUT, K8S-IN-1)."""

    transparent: StrictBool = Field(
        False,
        description="A transparent load balancer keeps client addresses and is no layer of its "
        "own: its LB-IN rows apply to the Kubernetes nodes (always so on GCP).",
    )
    cidrs: list[Cidr] = Field(
        default_factory=list,
        max_length=MAX_CIDRS,
        description="Where the load balancers' own addresses live (for K8S-IN-1 when there is "
        "no load-balancer security group). Empty: the Kubernetes node CIDRs.",
    )
    node_port_range: PortRangeSpec = Field(
        default_factory=lambda: PortRangeSpec.model_validate({"from": 30000, "to": 32767}),
        description="The cluster's NodePort range (LB-OUT-1, K8S-IN-1).",
    )
    target_type: LoadBalancerTargets | None = Field(
        None,
        description="How the load balancer reaches the pods, when known: Instance (NodePorts "
        "on the nodes, as the Kubernetes cloud provider's NLB does) or IP (the pods' own "
        "addresses, as the AWS Load Balancer Controller's ip targets do). Only used to warn "
        "where transparent and cidrs cannot be right for it (docs/aws.md).",
    )


class AddressSet(_Spec):
    """A named set of addresses."""

    cidrs: list[Cidr] = Field(
        min_length=1, max_length=MAX_CIDRS, description="The set's addresses (CIDRs)."
    )


class ExternalTopology(_Spec):
    """What "external" means (narrow it when all egress goes through a proxy)."""

    cidrs: list[Cidr] = Field(
        default_factory=lambda: ["0.0.0.0/0"],
        min_length=1,
        max_length=MAX_CIDRS,
        description="The addresses outside the installation (default: the whole internet).",
    )


class NomadServersTopology(_Spec):
    """Nomad servers outside the cluster (Server 4.8 and later)."""

    cidrs: list[Cidr] = Field(
        min_length=1,
        max_length=MAX_CIDRS,
        description="The servers' subnets, including their internal load balancer's addresses.",
    )


class Topology(_Spec):
    """Where each kind of compute lives (its subnets), and what is outside."""

    kubernetes_nodes: RoleTopology = Field(description="Required: the cluster's node subnets.")
    nomad_clients: NomadClientsTopology = Field(
        description="Required: the Nomad clients' subnets (and their runtime)."
    )
    kubernetes_pods: KubernetesPodsTopology | None = Field(
        None,
        description="The pods' ranges, when pods do not send from the node subnets (VPC-native "
        "GKE: required with spec.gcp.restrictEgress, whose egress floor would otherwise block "
        "pod traffic between nodes).",
    )
    nomad_servers: NomadServersTopology | None = Field(
        None,
        description="Set only when the Nomad servers run outside the cluster (4.8+): their "
        "rows move there (NOMAD-IN-1 from them, the clients' 4647 to them, the cluster's "
        "4646-4648 to them). Unset: the servers run in the cluster.",
    )
    external_vms: ExternalVMsTopology = Field(
        default_factory=ExternalVMsTopology, alias="externalVMs"
    )
    load_balancers: LoadBalancersTopology = Field(default_factory=LoadBalancersTopology)
    external: ExternalTopology = Field(default_factory=ExternalTopology)
    vcs: AddressSet | None = Field(None, description="The VCS's addresses; default: external.")
    dns: AddressSet | None = Field(
        None,
        description="The VPC resolver (on AWS the VPC CIDR base + 2, as a /32). Without it "
        "ALL-OUT-1 is not rendered (AWS security groups never filter the Amazon resolver).",
    )


# An admin SSH source: a CIDR that is not the world in any spelling (::0/0, 1.2.3.4/0).
AdminSource = Annotated[
    Cidr,
    Field(
        json_schema_extra=_cel(
            ("isCIDR(self)", "is not a valid CIDR"),
            (
                "!isCIDR(self) || cidr(self) == cidr(self).masked()",
                "has host bits set: write the network address (10.0.0.0/24, not 10.0.0.1/24)",
            ),
            (
                "!isCIDR(self) || cidr(self).prefixLength() != 0",
                "admin SSH from the whole internet is refused: scope the sources",
            ),
        )
    ),
]


class AdminSSH(_Spec):
    """ALL-IN-1: SSH to the instances, only if needed."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (  # the world as its two halves (linear: a pairwise rule exceeds CEL's budget)
                "!has(self.sources) || !("
                + " || ".join(
                    f"(self.sources.exists(s, isCIDR(s) && cidr(s).masked() == cidr('{a}')) && "
                    f"self.sources.exists(s, isCIDR(s) && cidr(s).masked() == cidr('{b}')))"
                    for a, b in (("0.0.0.0/1", "128.0.0.0/1"), ("::/1", "8000::/1"))
                )
                + ")",
                "admin SSH from the whole internet is refused: scope the sources",
            ),
            (
                "!(has(self.enabled) && self.enabled) || "
                "(has(self.sources) && size(self.sources) > 0)",
                "sources are required when adminSSH is enabled",
            ),
        )
    )

    enabled: StrictBool = Field(False, description="Allow admin SSH to the instances.")
    sources: list[AdminSource] = Field(
        default_factory=list,
        max_length=MAX_CIDRS,
        description="Who may SSH in (a bastion, a VPN): required when enabled; never the "
        "whole internet.",
    )


class SSHRerun(_Spec):
    """NOMAD-IN-2 / VM-IN-5: "rerun job with SSH"."""

    enabled: StrictBool = Field(True, description='Allow "rerun job with SSH".')
    sources: list[Cidr] = Field(
        default_factory=list,
        max_length=MAX_CIDRS,
        description="Who may SSH into jobs; empty: external.",
    )


class Access(_Spec):
    """SSH access: for administrators (ALL-IN-1) and into jobs (rerun with SSH)."""

    admin_ssh: AdminSSH = Field(default_factory=AdminSSH, alias="adminSSH")
    ssh_rerun: SSHRerun = Field(default_factory=SSHRerun, alias="sshRerun")


class NetworkPolicies(_Spec):
    """The NetworkPolicies written in the installation's namespace."""

    enabled: StrictBool = Field(
        True, description="Write the guide's NetworkPolicies (false: only the clouds' rules)."
    )
    restrict_egress: StrictBool = Field(
        False,
        description="Also deny egress from the namespace except DNS, the API server, the "
        "namespace itself and the guide's outbound rows for the Kubernetes nodes.",
    )


# Label keys and values as Kubernetes validates them (apimachinery's IsQualifiedName and
# IsValidLabelValue): an optional DNS-subdomain prefix (<= 253) and "/", then a name (<= 63).
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"  # noqa: E501
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PORT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_LABELS = 16
MAX_PORTS = 16

# The same label-key rule in CEL, for the CRD: RE2 has no look-around, so the lengths of the
# prefix and the name are checked apart.
_CEL_LABEL_KEY = (
    f"k.matches(r'{LABEL_KEY_PATTERN}') && (k.indexOf('/') < 0 ? size(k) <= 63 : "
    "(k.indexOf('/') <= 253 && size(k) - k.indexOf('/') - 1 <= 63))"
)


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a Kubernetes label key, or None."""
    prefix, _, name = key.rpartition("/")
    if not re.match(LABEL_KEY_PATTERN, key) or len(name) > 63 or len(prefix) > 253:
        return (
            f"{key!r} is not a valid label key (an optional DNS-subdomain prefix of at most 253 "
            "characters and '/', then a name of at most 63 alphanumerics, '-', '_' or '.')"
        )
    return None


def _check_label_keys(labels: dict[str, str]) -> dict[str, str]:
    for key in labels:
        problem = label_key_problem(key)
        if problem:
            raise ValueError(problem)
    return labels


LabelValue = Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, max_length=63)]


class SelectorOperator(enum.StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class LabelSelectorRequirement(_Spec):
    """One ``matchExpressions`` entry, as in a Kubernetes LabelSelector."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0)"
                " : (!has(self.values) || size(self.values) == 0)",
                "values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist",
                ".values",
            ),
            (
                _CEL_LABEL_KEY.replace("k.", "self.key.").replace("(k)", "(self.key)"),
                "is not a valid label key",
                ".key",
            ),
        )
    )

    key: str = Field(max_length=317, description="The label key the requirement applies to.")
    operator: SelectorOperator = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[LabelValue] = Field(
        default_factory=list,
        max_length=MAX_LABELS,
        validate_default=True,
        description="Non-empty for In and NotIn; empty for Exists and DoesNotExist.",
    )

    @field_validator("key")
    @classmethod
    def _valid_key(cls, key: str) -> str:
        problem = label_key_problem(key)
        if problem:
            raise ValueError(problem)
        return key

    @field_validator("values")
    @classmethod
    def _values_fit_the_operator(cls, values: list[str], info: ValidationInfo) -> list[str]:
        operator = info.data.get("operator")
        if operator in {SelectorOperator.IN, SelectorOperator.NOT_IN} and not values:
            raise ValueError(f"values must be non-empty for operator {operator}")
        if operator in {SelectorOperator.EXISTS, SelectorOperator.DOES_NOT_EXIST} and values:
            raise ValueError(f"values must be empty for operator {operator}")
        return values


class LabelSelector(_Spec):
    """A Kubernetes LabelSelector (``matchLabels`` and ``matchExpressions``, ANDed); it is
    written as such into the component's NetworkPolicy."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "(has(self.matchLabels) && size(self.matchLabels) > 0) || "
                "(has(self.matchExpressions) && size(self.matchExpressions) > 0)",
                "must not be empty (an empty selector selects every pod)",
            )
        )
    )

    match_labels: Annotated[dict[str, LabelValue], AfterValidator(_check_label_keys)] = Field(
        default_factory=dict,
        max_length=MAX_LABELS,
        description="Labels the pods carry, all of them (key: value).",
        json_schema_extra=_cel((f"self.all(k, {_CEL_LABEL_KEY})", "has an invalid label key")),
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list,
        max_length=MAX_LABELS,
        description="Requirements on the pods' labels, all of them.",
    )

    @model_validator(mode="after")
    def _not_empty(self) -> LabelSelector:
        if not self.match_labels and not self.match_expressions:
            raise ValueError("must not be empty (an empty selector selects every pod)")
        return self


def port_entry_problem(value: object) -> str | None:
    """Why one ``ports`` entry is not a pod port, or None: an entry is a container port number
    or a container port name (an IANA service name, as Kubernetes validates it)."""
    if isinstance(value, Mapping):
        port = value.get("port", value.get("containerPort", 8080))
        return (
            f"a port is a number or a container port name: write {port!r} rather than an object "
            "(every guide row a component serves is TCP)"
        )
    if isinstance(value, bool) or not isinstance(value, int | str):
        return f"{value!r} is not a port number or a port name"
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            return f"port {value} is outside 1-65535"
    elif (
        not re.match(PORT_NAME_PATTERN, value)
        or len(value) > 15
        or "--" in value
        or not re.search("[a-z]", value)
    ):
        return f"port name {value!r} is not a valid IANA service name"
    return None


def _port_entry(value: object) -> object:
    problem = port_entry_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# For the CRD: the API server applies minimum/maximum to a number and maxLength/pattern to a
# string of an int-or-string; CEL adds the rest of IsValidPortName.
_PORT_ENTRY_SCHEMA: dict[str, Any] = {
    "minimum": 1,
    "maximum": 65535,
    "maxLength": 15,
    "pattern": PORT_NAME_PATTERN,
    **_cel(
        (
            "type(self) == int || (self.matches('[a-z]') && !self.contains('--'))",
            "a port name needs a letter and no '--' (an IANA service name)",
        )
    ),
}

# Why not also {port, protocol} objects: a CRD list item that may be a number, a string or an
# object has no structural type, and an untyped item hides the whole list from CEL (the API
# server refuses such rules), so neither the port range nor the service/ports rules could be
# checked at admission. Every guide row a component serves is TCP, so protocol meant nothing.
PortEntry = Annotated[
    int | str,
    BeforeValidator(_port_entry),
    Field(
        description="A container port number (8000) or name (http); TCP.",
        json_schema_extra=_PORT_ENTRY_SCHEMA,
    ),
]


class Component(_Spec):
    """How to find the pods behind one of the guide's services.

    Either ``service`` (resolved in the cluster: the Service's selector and its targetPorts)
    or ``podSelector`` with ``ports``.
    """

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("has(self.service) != has(self.podSelector)", "set either service or podSelector"),
            (
                "!has(self.service) || has(self.podSelector) || !has(self.ports) || "
                "size(self.ports) == 0",
                "ports come from the Service's targetPorts: remove ports, or pin the pods with "
                "podSelector",
                ".ports",
            ),
            (
                "!has(self.podSelector) || has(self.service) || "
                "(has(self.ports) && size(self.ports) > 0)",
                "required with podSelector",
                ".ports",
            ),
        )
    )

    service: str | None = Field(
        None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="The component's Service in the namespace: its selector finds the pods and "
        "its targetPorts the ports.",
    )
    pod_selector: LabelSelector | None = Field(
        None, description="The component's pods (a Kubernetes LabelSelector)."
    )
    ports: list[PortEntry] = Field(
        default_factory=list,
        max_length=MAX_PORTS,
        validate_default=True,
        description="With podSelector: the pods' ports that receive the guide's traffic.",
    )

    @field_validator("ports")
    @classmethod
    def _ports_fit_the_way_to_find_it(
        cls, ports: list[int | str], info: ValidationInfo
    ) -> list[int | str]:
        # With both service and podSelector, the one error is "set either" (below).
        service, selector = info.data.get("service"), info.data.get("pod_selector")
        if service and selector is None and ports:
            raise ValueError(
                "ports come from the Service's targetPorts: remove ports, or pin the pods with "
                "podSelector"
            )
        if selector is not None and not service and not ports:
            raise ValueError("required with podSelector")
        return ports

    @model_validator(mode="after")
    def _one_way_to_find_it(self) -> Component:
        if self.service and self.pod_selector is not None:
            raise ValueError("set either service or podSelector, not both")
        if not self.service and self.pod_selector is None:
            raise ValueError("set service or podSelector")
        return self


class Components(_Spec):
    """Overrides of where the guide's services live; unset ones take the profile's default."""

    frontend: Component | None = None
    nomad_server: Component | None = None
    output_processor: Component | None = None
    vm_service: Component | None = None


class ApiServer(_Spec):
    """Where the Kubernetes API server is, for the egress allow-list."""

    cidrs: list[Cidr] = Field(
        default_factory=list,
        max_length=MAX_CIDRS,
        description="The API server's addresses; empty: read from the cluster.",
    )
    ports: list[Annotated[StrictInt, Field(ge=1, le=65535)]] = Field(
        default_factory=lambda: [443, 6443], max_length=16, description="The API server's ports."
    )


class Monitoring(_Spec):
    """A metrics scraper outside the namespace (CircleCI's monitoring reference: a Prometheus
    Operator in its own namespace scraping telegraf's prometheus-client port, 9273), admitted
    by the NetworkPolicies (CHOICE-NP-MONITORING). Absent: nothing extra is opened."""

    namespace_selector: LabelSelector = Field(
        description="The scraper's namespaces, e.g. {matchLabels: "
        "{kubernetes.io/metadata.name: monitoring}}."
    )
    pod_selector: LabelSelector | None = Field(
        None,
        description="The scraper's pods in those namespaces, e.g. {matchLabels: "
        "{app.kubernetes.io/name: prometheus}}; unset: every pod there.",
    )
    ports: list[PortEntry] = Field(
        default_factory=lambda: list[int | str]([9273]),
        min_length=1,
        max_length=MAX_PORTS,
        description="The pod ports scraped in the server's namespace (numbers or container "
        "port names): telegraf's prometheus-client listener is 9273; add 4646 for the "
        "in-cluster Nomad server's metrics, 8100 for Kong's status listener.",
    )
    nomad_clients: StrictBool = Field(
        False,
        description="Also let the cluster scrape the Nomad clients' metrics on their HTTP port "
        "4646 (telemetry prometheus_metrics): a cloud rule from the Kubernetes nodes (and "
        "pods) to the Nomad clients.",
    )


class KubernetesSpec(_Spec):
    """The Kubernetes target: NetworkPolicies in the installation's namespace."""

    network_policies: NetworkPolicies = Field(default_factory=NetworkPolicies)
    components: Components = Field(default_factory=Components)
    api_server: ApiServer = Field(default_factory=ApiServer)
    monitoring: Monitoring | None = Field(
        None,
        description="Opt-in: admit a metrics scraper from another namespace "
        "(CHOICE-NP-MONITORING). Absent: nothing extra is opened.",
    )


SG_PATTERN = r"^sg-[0-9a-f]{8,17}$"
# The timer's default with a cloud event source: events trigger the checks, the timer is the
# backstop against a lost event (SQS and Pub/Sub deliver at least once, but a rule or sink can
# be changed, a queue purged). Ten minutes keeps a lost event's drift short-lived and costs a
# tenth of the 60 s default's reads.
EVENTS_DRIFT_CHECK_SECONDS = 600
AWS_REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"
ENDPOINT_PATTERN = r"^https?://"
GCP_PROJECT_PATTERN = r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$"
INSTALLATION_ID_PATTERN = r"^([a-z0-9]{1,8})?$"
LOGGING_METADATA_PATTERN = r"^(EXCLUDE_ALL_METADATA|INCLUDE_ALL_METADATA)$"


class AwsSecurityGroups(_Spec):
    """The security group of each role (sg-...); a role without one gets no rules."""

    kubernetes_nodes: str | None = Field(
        None, pattern=SG_PATTERN, description="The Kubernetes nodes' security group."
    )
    nomad_clients: str | None = Field(
        None, pattern=SG_PATTERN, description="The Nomad clients' security group."
    )
    external_vms: str | None = Field(
        None,
        pattern=SG_PATTERN,
        alias="externalVMs",
        description="The external VMs' security group (machine and remote-Docker jobs).",
    )
    load_balancers: str | None = Field(
        None,
        pattern=SG_PATTERN,
        description="The load balancers' security group (not with transparent load balancers).",
    )
    nomad_servers: str | None = Field(
        None, pattern=SG_PATTERN, description="With topology.nomadServers: their security group."
    )


def configured_by_role(section: BaseModel) -> dict[Role, str]:
    """A per-role section of the spec (security groups, network tags) as ``{role: value}`` for
    the roles that have one. The spec's keys are the roles' own names, so the mapping from a
    role to its field is written once, here."""
    values = section.model_dump(by_alias=True)
    return {role: str(values[role.value]) for role in Role if values.get(role.value)}


class RuleQuota(_Spec):
    """Rules per security group and direction (AWS default 60; raise it if your account has)."""

    inbound: StrictInt = Field(60, ge=1, le=1000, description="Inbound rules per group.")
    outbound: StrictInt = Field(60, ge=1, le=1000, description="Outbound rules per group.")


ASG_NAME_PATTERN = r"^[^:]{1,255}$"


class AwsMachineSelector(_Spec):
    """Machines that belong to a role whether or not they carry its security group: they are
    read (never written) to judge each machine's real access."""

    auto_scaling_groups: list[Annotated[str, Field(pattern=ASG_NAME_PATTERN)]] = Field(
        default_factory=list,
        max_length=50,
        description="Auto Scaling group names whose instances are in the role (e.g. "
        "server-terraform's <basename>-circleci-nomad-clients-asg).",
    )
    instance_tags: dict[str, str] = Field(
        default_factory=dict,
        max_length=10,
        description="Instance tags (all must match) that put a running instance in the role.",
    )


class AwsMachineSelectors(_Spec):
    """Per role, how to find its machines beyond the interfaces that carry its configured
    group. externalVMs are also found by the machine provisioner's own ManagedBy tag."""

    kubernetes_nodes: AwsMachineSelector | None = None
    nomad_clients: AwsMachineSelector | None = None
    external_vms: AwsMachineSelector | None = Field(None, alias="externalVMs")
    nomad_servers: AwsMachineSelector | None = None


# An SQS queue URL: the endpoint, the account and the queue's name (standard or FIFO).
SQS_QUEUE_URL_PATTERN = r"^https?://[^/\s]+/[0-9]{12}/[A-Za-z0-9_-]{1,80}(\.fifo)?$"


class AwsEvents(_Spec):
    """Security-group changes heard as they happen: CloudTrail's records of the security-group
    calls, routed by an EventBridge rule to an SQS queue the operator reads (deploy/aws/events/).
    Each event makes the resources that manage the groups it names check at once; events are
    hints (each one triggers an ordinary check) and the timer stays as the backstop."""

    queue_url: str = Field(
        pattern=SQS_QUEUE_URL_PATTERN,
        max_length=512,
        description="The SQS queue's URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME); its "
        "scheme and host are the endpoint the operator reads it from. Resources naming the same "
        "queue share one reader.",
    )


class AwsSpec(_Spec):
    """The AWS target: rules in the roles' EC2 security groups."""

    region: str = Field(
        pattern=AWS_REGION_PATTERN, description="The AWS region of the security groups."
    )
    security_groups: AwsSecurityGroups = Field(
        description="The security group of each role (sg-...)."
    )
    events: AwsEvents | None = Field(
        None,
        description="Check at once when CloudTrail reports a change to a managed group (an SQS "
        "queue fed by EventBridge); with it the default driftCheckInterval is 10m.",
    )
    endpoint_url: str | None = Field(
        None,
        pattern=ENDPOINT_PATTERN,
        description="EC2 endpoint override (VPC endpoints, tests); else AWS_ENDPOINT_URL_EC2 or "
        "the regional endpoint.",
    )
    rule_quota: RuleQuota = Field(default_factory=RuleQuota)
    machines: AwsMachineSelectors | None = Field(
        None,
        description="Selectors for each role's machines (read-only), so every machine is judged "
        "by the union of all its security groups and its subnet's network ACL.",
    )


NETWORK_TAG_PATTERN = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"


class GcpTargetTags(_Spec):
    """The network tag of each role's instances; a role without one gets no rules."""

    kubernetes_nodes: str | None = Field(
        None, pattern=NETWORK_TAG_PATTERN, description="The Kubernetes nodes' network tag."
    )
    nomad_clients: str | None = Field(
        None, pattern=NETWORK_TAG_PATTERN, description="The Nomad clients' network tag."
    )
    external_vms: str | None = Field(
        None,
        pattern=NETWORK_TAG_PATTERN,
        alias="externalVMs",
        description="The external VMs' network tag.",
    )
    nomad_servers: str | None = Field(
        None,
        pattern=NETWORK_TAG_PATTERN,
        description="With topology.nomadServers: their network tag.",
    )


class LoggingMode(enum.StrEnum):
    KEEP = "Keep"
    ENABLED = "Enabled"
    DISABLED = "Disabled"


class FirewallLogging(_Spec):
    """``Keep`` leaves logging as it is on each rule (a repair never switches it off);
    ``Enabled``/``Disabled`` manage it."""

    mode: LoggingMode = Field(LoggingMode.KEEP, description="Keep, Enabled or Disabled.")
    metadata: str = Field(
        "EXCLUDE_ALL_METADATA",
        pattern=LOGGING_METADATA_PATTERN,
        description="With Enabled: what each log entry carries.",
    )


# projects/PROJECT/subscriptions/ID, as Pub/Sub names them: the ID starts with a letter, is 3-255
# characters of letters, digits and -._~%+, and does not start with "goog" (checked apart: the
# schema's regular expressions have no look-ahead).
PUBSUB_SUBSCRIPTION_PATTERN = (
    r"^projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/subscriptions/[A-Za-z][-A-Za-z0-9._~%+]{2,254}$"
)


def _not_reserved_subscription(path: str) -> str:
    if path.split("/subscriptions/", 1)[-1].startswith("goog"):
        raise ValueError("a subscription ID may not start with 'goog' (reserved by Google)")
    return path


class GcpEvents(_Spec):
    """Firewall changes heard as they happen: Admin Activity audit logs of compute.firewalls.*
    and of firewall policies, routed by a log sink to a Pub/Sub topic whose subscription the
    operator pulls (deploy/gcp/events/). Each entry makes the resources of the project and
    network it names check at once; entries are hints and the timer stays as the backstop."""

    subscription: Annotated[str, AfterValidator(_not_reserved_subscription)] = Field(
        pattern=PUBSUB_SUBSCRIPTION_PATTERN,
        max_length=300,
        description="The Pub/Sub subscription, projects/PROJECT/subscriptions/ID. Resources "
        "naming the same subscription share one reader.",
    )


class GcpSpec(_Spec):
    """The GCP target: VPC firewall rules for the roles' network tags."""

    project: str = Field(pattern=GCP_PROJECT_PATTERN, description="The GCP project ID.")
    network: str = Field(pattern=NETWORK_TAG_PATTERN, description="The VPC network's name.")
    target_tags: GcpTargetTags = Field(description="The network tag of each role.")
    events: GcpEvents | None = Field(
        None,
        description="Check at once when an audit log reports a firewall change in the project "
        "(a Pub/Sub subscription fed by a log sink); with it the default driftCheckInterval is "
        "10m.",
    )
    endpoint: str | None = Field(
        None, pattern=ENDPOINT_PATTERN, description="Compute API endpoint override (tests)."
    )
    restrict_egress: StrictBool = Field(
        True,
        description="Write the guide's outbound rows as EGRESS allows plus a lowest-priority "
        "EGRESS deny for the managed tags (GCP allows all egress by default).",
    )
    installation_id: str = Field(
        "",
        pattern=INSTALLATION_ID_PATTERN,
        description="Tells installations apart in one project: part of every firewall name and "
        "of the ownership mark. Set a different one per cluster when several clusters' "
        "resources share a namespace/name and a project.",
    )
    logging: FirewallLogging = Field(
        default_factory=FirewallLogging,
        description="Firewall Rules Logging on the rules this resource writes.",
    )


class Adoption(enum.StrEnum):
    ADOPT = "Adopt"
    NEVER = "Never"


class ExceptionTarget(enum.StrEnum):
    KUBERNETES = "kubernetes"
    AWS = "aws"
    GCP = "gcp"


# RFC 3339 with a time zone, as the API server checks ``format: date-time`` and more strictly:
# pydantic alone takes "2027-03-31" and zone-less times, which the CRD refuses (the pattern).
RFC3339_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"  # noqa: E501


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and not re.fullmatch(RFC3339_PATTERN, value):
        raise ValueError(
            f"{messages.shown(value)} is not a date-time: write it as RFC 3339, e.g. "
            '"2027-03-31T00:00:00Z"'
        )
    return value


class DeclaredExceptionSpec(_Spec):
    """A rule or policy this resource does not own that is there on purpose: not drift while
    it lasts, reported with its reason; past ``expires`` it is a finding again (and removable
    with ``unmanagedRules: Remove``). Also the break-glass path: open something for a time,
    with a reason on record."""

    target: ExceptionTarget = Field(description="kubernetes, aws or gcp.")
    name: str = Field(
        min_length=1,
        max_length=255,
        description="What it matches: a NetworkPolicy name, a security-group rule ID (sgr-...) "
        "or a firewall name; shell-style wildcards (*, ?) allowed.",
    )
    reason: str = Field(
        min_length=1, max_length=1024, description="Why it is there: reported with it."
    )
    expires: Annotated[dt.datetime | None, BeforeValidator(_rfc3339)] = Field(
        None,
        description="From then on the exception excuses nothing: an RFC 3339 date-time with a "
        'time zone, e.g. "2027-03-31T00:00:00Z".',
        json_schema_extra={"pattern": RFC3339_PATTERN},
    )


# Why a GCP spec that restricts egress must name the pod ranges (CHOICE-K8S-PODS): one message
# for the model and the CRD's CEL rule.
GCP_PODS_REQUIRED = (
    "required with spec.gcp.restrictEgress: on VPC-native GKE pods send from alias IPs outside "
    "the node subnets, and the egress floor would block pod traffic between nodes; set it to "
    "the cluster's pod range (gcloud container clusters describe CLUSTER "
    "--format='value(clusterIpv4Cidr)'), or set spec.gcp.restrictEgress: false"
)
# serverVersion values from which Nomad servers may run outside the cluster (4.8+, "4", "4.x"):
# one regular expression for the model and the CRD's CEL rule.
_EXTERNAL_NOMAD_VERSIONS = r"^4(\.(x|([89]|[1-9][0-9]+)(\.[0-9]+)?))?$"


class ServerHardeningSpec(_Spec):
    """The user's intent for one CircleCI Server installation (its namespace)."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.topology.nomadServers) || "
                f"self.serverVersion.matches(r'{_EXTERNAL_NOMAD_VERSIONS}')",
                "Nomad servers outside the cluster need serverVersion 4.8 or later",
                ".topology.nomadServers",
            ),
            (
                "!has(self.gcp) || (has(self.gcp.restrictEgress) && !self.gcp.restrictEgress) "
                "|| has(self.topology.kubernetesPods)",
                GCP_PODS_REQUIRED,
                ".topology.kubernetesPods",
            ),
        )
    )

    server_version: str = Field(
        pattern=SERVER_VERSION_PATTERN,
        max_length=16,
        description='"3", "3.x", "3.N", "4", "4.x", "4.N" or "4.N.P": picks the guide profile '
        '(3.x; 4.0-4.2; 4.3 and later). "4"/"4.x" and versions newer than the catalogue map to '
        "the newest profile, with a finding.",
    )
    mode: Mode = Field(Mode.ENFORCE, description="Enforce writes; Audit observes and reports.")
    topology: Topology
    access: Access = Field(default_factory=Access)
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)
    aws: AwsSpec | None = None
    gcp: GcpSpec | None = None
    unmanaged_rules: UnmanagedRules = Field(
        UnmanagedRules.REPORT, description="Report or Remove rules this resource does not own."
    )
    deletion_policy: DeletionPolicy = Field(
        DeletionPolicy.ORPHAN,
        description="What deleting this resource does to the rules it manages. Orphan (the "
        "default): every rule stays, its access unchanged, with this resource's ownership marks "
        "removed. Delete: the rules the operator created are removed; adopted rules (there "
        "before the operator) and rules marked before provenance was recorded stay, unmarked. "
        "In Audit mode nothing is written either way.",
    )
    drift_check_interval: Annotated[str, AfterValidator(_at_least_a_second)] = Field(
        "60s",
        pattern=DURATION_PATTERN,
        max_length=32,
        description="How often the clouds are checked for drift: a Go/Kubernetes duration of "
        'whole seconds ("90s", "1m30s", "2h"), at least 1s. Unset, it is 60s, or 10m when '
        "aws.events or gcp.events is set (events trigger the checks; the timer is the "
        "backstop), and 60s again while the event source cannot be read.",
        json_schema_extra=_cel(("duration(self) >= duration('1s')", "must be at least 1s")),
    )
    adoption: Adoption = Field(
        Adoption.ADOPT,
        description="Adopt: an unmarked rule or policy that is exactly a desired one is adopted "
        "(only the ownership marks are added; access never changes). Never: leave it unmanaged.",
    )
    exceptions: list[DeclaredExceptionSpec] = Field(
        default_factory=list,
        max_length=200,
        description="Rules and policies this resource does not own that are there on purpose.",
    )

    @property
    def events_configured(self) -> bool:
        """Whether a cloud event source (aws.events, gcp.events) triggers this resource's checks."""
        return bool(
            (self.aws is not None and self.aws.events is not None)
            or (self.gcp is not None and self.gcp.events is not None)
        )

    @property
    def drift_check_seconds(self) -> int:
        """The timer's interval: the spec's, else 60 s, or 10 min with an event source."""
        if "drift_check_interval" in self.model_fields_set or not self.events_configured:
            return duration_seconds(self.drift_check_interval)
        return EVENTS_DRIFT_CHECK_SECONDS

    @property
    def fallback_check_seconds(self) -> int:
        """The timer's interval while the event source cannot be read: the spec's, else 60 s."""
        return duration_seconds(self.drift_check_interval)


# --------------------------------------------------------------------------------------------
# Errors that name the field


@dataclass(frozen=True)
class FieldError:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class SpecError(ValueError):
    """The resource is invalid; ``errors`` each name a field and a reason."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def _path(loc: tuple[int | str, ...], root: str) -> str:
    out = root
    for part in messages.field_parts(loc):
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


# What each pattern accepts, in words (an error says "is not <form>" rather than the regex).
PATTERN_FORMS: dict[str, str] = {
    CIDR_PATTERN: "a CIDR (10.0.0.0/16, 2001:db8::/32)",
    SERVER_VERSION_PATTERN: 'a CircleCI Server version: "3", "3.x", "4", "4.x", "4.N" or "4.N.P" '
    '(e.g. "4.8"; quoted)',
    DURATION_PATTERN: "a duration in whole h, m and s (60s, 5m, 1h30m)",
    SG_PATTERN: "a security group ID (sg- and 8 or 17 hex digits, e.g. sg-0123456789abcdef0)",
    NETWORK_TAG_PATTERN: "a GCP name or network tag (lowercase letters, digits and '-', "
    "starting with a letter, at most 63 characters)",
    DNS_LABEL_PATTERN: "a DNS label (lowercase letters, digits and '-', at most 63 characters)",
    LABEL_VALUE_PATTERN: "a label value (at most 63 letters, digits, '-', '_' or '.', starting "
    "and ending with a letter or digit)",
    AWS_REGION_PATTERN: "an AWS region (us-east-1)",
    GCP_PROJECT_PATTERN: "a GCP project ID (6-30 lowercase letters, digits and '-', starting "
    "with a letter)",
    ENDPOINT_PATTERN: "an http:// or https:// URL",
    INSTALLATION_ID_PATTERN: "at most 8 lowercase letters and digits",
    LOGGING_METADATA_PATTERN: "EXCLUDE_ALL_METADATA or INCLUDE_ALL_METADATA",
}


def _reason(err: Mapping[str, Any]) -> str:
    return messages.reason(err, ServerHardeningSpec, PATTERN_FORMS)


def errors_from_validation(exc: ValidationError, root: str = "spec") -> list[FieldError]:
    seen: set[str] = set()
    out: list[FieldError] = []
    for err in exc.errors():
        error = FieldError(_path(tuple(err["loc"]), root), _reason(err))
        if str(error) not in seen:
            seen.add(str(error))
            out.append(error)
    return _without_missing_meant(out)


def _without_missing_meant(errors: list[FieldError]) -> list[FieldError]:
    """``server_version: did you mean serverVersion?`` says it all: serverVersion is not also
    "missing" (the API server, too, names only the unknown field)."""
    meant = set()
    for error in errors:
        match = re.search(r"did you mean (\S+)\?$", error.reason)
        if match and error.reason.startswith("unknown field"):
            parent = error.path.rpartition(".")[0]
            meant.add(f"{parent}.{match[1]}" if parent else match[1])
    return [e for e in errors if not (e.path in meant and e.reason == "required field is missing")]


def _overlaps(spec: ServerHardeningSpec) -> list[FieldError]:
    """The guide's premise is distinct subnets per role: say which two overlap."""
    roles: list[tuple[str, list[str]]] = [
        ("kubernetesNodes", spec.topology.kubernetes_nodes.cidrs),
        ("nomadClients", spec.topology.nomad_clients.cidrs),
    ]
    if spec.topology.external_vms.enabled:
        roles.append(("externalVMs", spec.topology.external_vms.cidrs))
    if spec.topology.nomad_servers is not None:
        roles.append(("nomadServers", spec.topology.nomad_servers.cidrs))
    if spec.topology.kubernetes_pods is not None:
        roles.append(("kubernetesPods", spec.topology.kubernetes_pods.cidrs))
    roles.append(("loadBalancers", spec.topology.load_balancers.cidrs))
    # Each CIDR parsed once, not once per pair it is compared in.
    networks = {role: [ipaddress.ip_network(c) for c in cidrs] for role, cidrs in roles}
    errors: list[FieldError] = []
    for i, (role_a, cidrs_a) in enumerate(roles):
        for role_b, cidrs_b in roles[i + 1 :]:
            if role_b == "loadBalancers" and role_a in {
                "kubernetesNodes",
                "nomadServers",
                "kubernetesPods",
            }:
                continue  # a load balancer may live in the node (or server, or pod) subnets
            if {role_a, role_b} == {"kubernetesNodes", "kubernetesPods"}:
                continue  # EKS's VPC CNI gives pods addresses in the node subnets
            for ia, (a, na) in enumerate(zip(cidrs_a, networks[role_a], strict=True)):
                for ib, (b, nb) in enumerate(zip(cidrs_b, networks[role_b], strict=True)):
                    if na.version == nb.version and na.overlaps(nb):
                        errors.append(
                            FieldError(
                                f"spec.topology.{role_b}.cidrs[{ib}]",
                                f"{b} overlaps spec.topology.{role_a}.cidrs[{ia}] ({a}); "
                                "the guide requires distinct subnets per role",
                            )
                        )
    return errors


def _admin_ssh_from_the_world(sources: list[str]) -> list[FieldError]:
    """ALL-IN-1 from the whole internet in any spelling: one source that is the world
    (``::0/0``, ``1.2.3.4/0``), or sources whose union is (``0.0.0.0/1`` + ``128.0.0.0/1``)."""
    field, why = "spec.access.adminSSH.sources", "the guide says to scope it as tightly as possible"
    alone = [
        FieldError(f"{field}[{i}]", f"{s} opens SSH to the world; {why}")
        for i, s in enumerate(sources)
        if addresses.AddressSet.of([s]).covers_internet()
    ]
    if alone:
        return alone
    return [
        FieldError(
            field,
            ", ".join(
                f"[{i}] {s}" for i, s in enumerate(sources) if addresses.parse(s).version == family
            )
            + f" together open SSH to the whole IPv{family} internet; {why}",
        )
        for family in addresses.world_coverage(sources)
    ]


# The roles whose isolation rows (NOMAD-ISO-1, VM-ISO-1) a shared security group would break:
# the guide's rows name the other role's group as a peer (NOMAD-IN-1: 4647 from the nodes'
# group), so in one group the machines of the isolated role would reach each other too.
_ISOLATED_ROLES = (Role.NOMAD_CLIENTS, Role.EXTERNAL_VMS)


def _shared_groups(spec: ServerHardeningSpec) -> list[FieldError]:
    """One security group (or GCP target tag) for two roles, where the guide's rows for them
    conflict: security groups only allow, so what the guide opens to one role from the other
    would open the isolated role's machines to each other."""
    errors: list[FieldError] = []
    sections: list[tuple[str, dict[Role, str]]] = []
    if spec.aws is not None:
        sections.append(("spec.aws.securityGroups", configured_by_role(spec.aws.security_groups)))
    if spec.gcp is not None:
        sections.append(("spec.gcp.targetTags", configured_by_role(spec.gcp.target_tags)))
    for field, by_role in sections:
        for isolated in _ISOLATED_ROLES:
            value = by_role.get(isolated)
            if value is None:
                continue
            for other, shared in sorted(by_role.items()):
                if (
                    other is not isolated
                    and shared == value
                    and (other not in _ISOLATED_ROLES or other.value < isolated.value)
                ):
                    errors.append(
                        FieldError(
                            f"{field}.{isolated.value}",
                            f"{value} is also {field}.{other.value}: in one group the guide's "
                            f"rows for {other.value} would let {isolated.value} machines reach "
                            f"each other, which {_ISOLATION_ROW[isolated]} forbids; give each "
                            "role its own group",
                        )
                    )
    return errors


_ISOLATION_ROW = {Role.NOMAD_CLIENTS: "NOMAD-ISO-1", Role.EXTERNAL_VMS: "VM-ISO-1"}


def semantic_errors(spec: ServerHardeningSpec) -> list[FieldError]:
    """Rules that span fields (and so are not field validators)."""
    errors = _overlaps(spec) + _shared_groups(spec)
    if spec.topology.nomad_servers is not None and not re.fullmatch(
        _EXTERNAL_NOMAD_VERSIONS, spec.server_version
    ):
        errors.append(
            FieldError(
                "spec.topology.nomadServers",
                "Nomad servers outside the cluster need serverVersion 4.8 or later",
            )
        )
    vms = spec.topology.external_vms
    if vms.enabled and not vms.cidrs:
        errors.append(
            FieldError("spec.topology.externalVMs.cidrs", "required when externalVMs is enabled")
        )
    admin = spec.access.admin_ssh
    errors.extend(_admin_ssh_from_the_world(admin.sources))
    if admin.enabled and not admin.sources:
        errors.append(
            FieldError("spec.access.adminSSH.sources", "required when adminSSH is enabled")
        )
    for i, cidr in enumerate(spec.topology.external.cidrs):
        if ipaddress.ip_network(cidr).prefixlen == 0 and cidr not in WORLD:
            errors.append(FieldError(f"spec.topology.external.cidrs[{i}]", "invalid"))
    if spec.gcp is not None and spec.gcp.restrict_egress and spec.topology.kubernetes_pods is None:
        errors.append(FieldError("spec.topology.kubernetesPods", GCP_PODS_REQUIRED))
    return errors


def parse_spec(spec: object, *, recorded: bool = False) -> ServerHardeningSpec:
    """Parse and validate a resource's ``spec`` once; raise :class:`SpecError` naming fields.

    Keys are read by their wire names only (``serverVersion``; ``server_version`` is an unknown
    field, as the API server says). ``recorded``: a spec the operator enforced before, read as
    it was read then (see :data:`RECORDED`)."""
    if spec is None:
        raise SpecError([FieldError("spec", "required field is missing")])
    if not isinstance(spec, Mapping):
        raise SpecError(
            [FieldError("spec", f"{messages.shown(spec)} is not an object (key: value pairs)")]
        )
    try:
        parsed = ServerHardeningSpec.model_validate(
            dict(spec), by_alias=True, by_name=False, context={RECORDED: recorded}
        )
    except ValidationError as exc:
        raise SpecError(errors_from_validation(exc)) from None
    errors = semantic_errors(parsed)
    if errors:
        raise SpecError(errors)
    return parsed


@dataclass(frozen=True)
class ResourceRef:
    """Which ServerHardening this is: ownership marks and events name it."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


# A resource as the API server decodes it: these top-level fields and ObjectMeta's, nothing else
# (strict field validation refuses the rest; ``status`` is ignored on create).
RESOURCE_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
OBJECT_META_FIELDS = (
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
    "annotations", "ownerReferences", "finalizers", "managedFields",
)  # fmt: skip
# apimachinery's IsDNS1123Subdomain: what the API server requires of a custom resource's name.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MAX_ANNOTATIONS_BYTES = 256 * 1024


def suggested_name(name: str) -> str:
    """A DNS-subdomain spelling of ``name`` (``Circle CI Ü`` -> ``circle-ci-u``)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9.]+", "-", ascii_name.lower()).strip("-.")[:253].strip("-.")


def name_problem(name: object) -> str | None:
    """Why ``name`` is no name the API server takes for a ServerHardening, or None."""
    if not isinstance(name, str):
        return f"{messages.shown(name)} is {messages.what(name)}; expected a string"
    if len(name) <= 253 and re.fullmatch(DNS_SUBDOMAIN_PATTERN, name):
        return None
    guess = suggested_name(name)
    hint = f": did you mean {guess}?" if guess and guess != name and len(guess) <= 253 else ""
    return (
        f"{messages.shown(name)} is not a valid name: lowercase letters, digits, '-' and '.', "
        f"starting and ending with a letter or digit, at most 253 characters{hint}"
    )


def _metadata_errors(metadata: object) -> list[FieldError]:
    if not isinstance(metadata, Mapping):
        return [
            FieldError(
                "metadata", f"{messages.shown(metadata)} is not an object; write name: under it"
            )
        ]
    errors = [
        FieldError(f"metadata.{key}", messages.unknown_field(str(key), list(OBJECT_META_FIELDS)))
        for key in metadata
        if key not in OBJECT_META_FIELDS
    ]
    name = metadata.get("name")
    if name is None or name == "":
        errors.append(FieldError("metadata.name", "required field is missing"))
    else:
        problem = name_problem(name)
        if problem:
            errors.append(FieldError("metadata.name", problem))
    namespace = metadata.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str)
        or len(namespace) > 63
        or not re.fullmatch(DNS_LABEL_PATTERN, namespace)
    ):
        errors.append(
            FieldError(
                "metadata.namespace",
                f"{messages.shown(namespace)} is not {PATTERN_FORMS[DNS_LABEL_PATTERN]}",
            )
        )
    for field in ("labels", "annotations"):
        errors.extend(
            _string_map_errors(f"metadata.{field}", metadata.get(field), field == "labels")
        )
    return errors


def _string_map_errors(path: str, values: object, labels: bool) -> list[FieldError]:
    if values is None:
        return []
    if not isinstance(values, Mapping):
        return [FieldError(path, f"{messages.shown(values)} is not an object of key: value")]
    errors: list[FieldError] = []
    for key, value in values.items():
        problem = label_key_problem(str(key))
        if problem:
            errors.append(FieldError(f"{path}.{key}", problem))
        if not isinstance(value, str):
            errors.append(
                FieldError(
                    f"{path}.{key}",
                    f"{messages.shown(value)} is {messages.what(value)}; expected a string "
                    f'(quote it: "{value}")',
                )
            )
        elif labels and (len(value) > 63 or not re.fullmatch(LABEL_VALUE_PATTERN, value)):
            errors.append(
                FieldError(
                    f"{path}.{key}",
                    f"{messages.shown(value)} is not {PATTERN_FORMS[LABEL_VALUE_PATTERN]}",
                )
            )
    if not labels:
        size = sum(len(str(k)) + len(str(v)) for k, v in values.items())
        if size > MAX_ANNOTATIONS_BYTES:
            errors.append(FieldError(path, f"{size} bytes in all, more than 256 KiB"))
    return errors


def parse_resource(body: Mapping[str, Any]) -> tuple[ResourceRef, ServerHardeningSpec]:
    """Parse a whole ``ServerHardening`` document (as from a file or the API): every error the
    API server would name at admission, then the spec's."""
    errors: list[FieldError] = []
    if body.get("apiVersion") != API_VERSION:
        errors.append(
            FieldError(
                "apiVersion",
                f"{messages.shown(body.get('apiVersion'))}: a ServerHardening is {API_VERSION}",
            )
        )
    if body.get("kind") != KIND:
        errors.append(FieldError("kind", f"{messages.shown(body.get('kind'))}: expected {KIND}"))
    errors.extend(
        FieldError(str(key), messages.unknown_field(str(key), list(RESOURCE_FIELDS)))
        for key in body
        if key not in RESOURCE_FIELDS
    )
    metadata = body.get("metadata")
    errors.extend(_metadata_errors(metadata if metadata is not None else {}))
    try:
        spec = parse_spec(body.get("spec"))
    except SpecError as exc:
        errors.extend(exc.errors)
    if errors:
        raise SpecError(_without_missing_meant(errors))
    assert isinstance(metadata, Mapping)
    ref = ResourceRef(
        namespace=str(metadata.get("namespace") or "default"),
        name=str(metadata["name"]),
        uid=str(metadata.get("uid") or ""),
    )
    return ref, spec
