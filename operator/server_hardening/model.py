"""The ServerHardening API (``hardening.circleci.com/v1alpha1``). Pure: no I/O here.

This model is the single source of truth: the CRD's schema is generated from it
(:mod:`server_hardening.crd`), the operator parses every resource through :func:`parse_spec` once,
at the edge, and every later stage takes the typed object.

Errors name the field and the reason, e.g.
``spec.topology.nomadClients.cidrs[2]: '10.0.0.300/24' is not a valid CIDR``.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from server_hardening import addresses

GROUP = "hardening.circleci.com"
VERSION = "v1alpha1"
KIND = "ServerHardening"
PLURAL = "serverhardenings"
SINGULAR = "serverhardening"
SHORT_NAMES = ("svh",)
API_VERSION = f"{GROUP}/{VERSION}"

CIDR_PATTERN = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"
SERVER_VERSION_PATTERN = r"^(3|3\.[0-9]+|4\.([0-9]|10))$"
DURATION_PATTERN = r"^[0-9]+(s|m|h)$"
WORLD = ("0.0.0.0/0", "::/0")
MAX_CIDRS = 64  # bounded lists keep the CRD's CEL rules within the API server's cost budget


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """CEL rules for the CRD (``x-kubernetes-validations``), so the API server refuses what
    the model refuses before the operator ever sees it. Each is ``(rule, message)``."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


def _normalise_cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not a valid CIDR") from None


Cidr = Annotated[
    str,
    Field(
        pattern=CIDR_PATTERN,
        max_length=43,
        description="An IPv4 or IPv6 CIDR; host bits are cleared (10.0.0.1/24 -> 10.0.0.0/24).",
        json_schema_extra=_cel(("isCIDR(self)", "is not a valid CIDR")),
    ),
    AfterValidator(_normalise_cidr),
]


class _Spec(BaseModel):
    """Base: camelCase on the wire, unknown fields refused, immutable once parsed."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
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

    from_: int = Field(alias="from", ge=1, le=65535, description="First port.")
    to: int = Field(ge=1, le=65535, description="Last port (>= from).")

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


class ExternalVMsTopology(_Spec):
    """The subnets the external VMs (machine and remote-Docker jobs) run in."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "(has(self.enabled) && !self.enabled) || (has(self.cidrs) && size(self.cidrs) > 0)",
                "cidrs are required when externalVMs is enabled",
            )
        )
    )

    enabled: bool = Field(True, description="False when the installation runs no external VMs.")
    cidrs: list[Cidr] = Field(
        default_factory=list, max_length=MAX_CIDRS, description="Required when enabled."
    )


class LoadBalancersTopology(_Spec):
    """The load balancers in front of the cluster (LB-IN, LB-OUT, K8S-IN-1)."""

    transparent: bool = Field(
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


class AddressSet(_Spec):
    """A named set of addresses."""

    cidrs: list[Cidr] = Field(min_length=1, max_length=MAX_CIDRS)


class ExternalTopology(_Spec):
    """What "external" means (narrow it when all egress goes through a proxy)."""

    cidrs: list[Cidr] = Field(
        default_factory=lambda: ["0.0.0.0/0"], min_length=1, max_length=MAX_CIDRS
    )


class Topology(_Spec):
    kubernetes_nodes: RoleTopology = Field(description="Required: the cluster's node subnets.")
    nomad_clients: RoleTopology = Field(description="Required: the Nomad clients' subnets.")
    external_v_ms: ExternalVMsTopology = Field(
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

    enabled: bool = False
    sources: list[AdminSource] = Field(default_factory=list, max_length=MAX_CIDRS)


class SSHRerun(_Spec):
    """NOMAD-IN-2 / VM-IN-5: "rerun job with SSH"."""

    enabled: bool = True
    sources: list[Cidr] = Field(
        default_factory=list,
        max_length=MAX_CIDRS,
        description="Who may SSH into jobs; empty: external.",
    )


class Access(_Spec):
    admin_ssh: AdminSSH = Field(default_factory=AdminSSH, alias="adminSSH")
    ssh_rerun: SSHRerun = Field(default_factory=SSHRerun, alias="sshRerun")


class NetworkPolicies(_Spec):
    enabled: bool = True
    restrict_egress: bool = Field(
        False,
        description="Also deny egress from the namespace except DNS, the API server, the "
        "namespace itself and the guide's outbound rows for the Kubernetes nodes.",
    )


LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"  # noqa: E501
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PORT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _check_label_keys(labels: dict[str, str]) -> dict[str, str]:
    for key in labels:
        if not re.match(LABEL_KEY_PATTERN, key) or len(key) > 253:
            raise ValueError(f"{key!r} is not a valid label key")
    return labels


class ComponentPort(_Spec):
    """A pod port: a number or a named container port (a Service port is not a pod port)."""

    port: int | str = Field(description="Container port number or name.")
    protocol: str = Field("TCP", pattern=r"^(TCP|UDP)$")

    @model_validator(mode="after")
    def _valid_port(self) -> ComponentPort:
        if isinstance(self.port, int):
            if not 1 <= self.port <= 65535:
                raise ValueError(f"port {self.port} is outside 1-65535")
        elif not re.match(PORT_NAME_PATTERN, self.port) or len(self.port) > 15:
            raise ValueError(f"port name {self.port!r} is not a valid IANA service name")
        return self


class Component(_Spec):
    """How to find the pods behind one of the guide's services.

    Either ``service`` (resolved in the cluster: the Service's selector and target ports) or
    ``podSelector`` with ``ports``.
    """

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("has(self.service) != has(self.podSelector)", "set either service or podSelector")
        )
    )

    service: str | None = Field(None, pattern=DNS_LABEL_PATTERN, max_length=63)
    pod_selector: Annotated[dict[str, str], AfterValidator(_check_label_keys)] | None = Field(
        None, description="matchLabels of the component's pods."
    )
    ports: list[ComponentPort] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _one_way_to_find_it(self) -> Component:
        if self.service and self.pod_selector is not None:
            raise ValueError("set either service or podSelector, not both")
        if not self.service and self.pod_selector is None:
            raise ValueError("set service or podSelector")
        if self.pod_selector is not None and not self.ports:
            raise ValueError("podSelector needs ports")
        if self.pod_selector is not None and not self.pod_selector:
            raise ValueError("podSelector must not be empty (it would select every pod)")
        return self


class Components(_Spec):
    """Overrides of where the guide's services live; unset ones take the profile's default."""

    frontend: Component | None = None
    nomad_server: Component | None = None
    output_processor: Component | None = None
    vm_service: Component | None = None


class ApiServer(_Spec):
    """Where the Kubernetes API server is, for the egress allow-list."""

    cidrs: list[Cidr] = Field(default_factory=list, max_length=MAX_CIDRS)
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=lambda: [443, 6443], max_length=16
    )


class KubernetesSpec(_Spec):
    network_policies: NetworkPolicies = Field(default_factory=NetworkPolicies)
    components: Components = Field(default_factory=Components)
    api_server: ApiServer = Field(default_factory=ApiServer)


SG_PATTERN = r"^sg-[0-9a-f]{8,17}$"


class AwsSecurityGroups(_Spec):
    kubernetes_nodes: str | None = Field(None, pattern=SG_PATTERN)
    nomad_clients: str | None = Field(None, pattern=SG_PATTERN)
    external_v_ms: str | None = Field(None, pattern=SG_PATTERN, alias="externalVMs")
    load_balancers: str | None = Field(None, pattern=SG_PATTERN)


class RuleQuota(_Spec):
    """Rules per security group and direction (AWS default 60; raise it if your account has)."""

    inbound: int = Field(60, ge=1, le=1000)
    outbound: int = Field(60, ge=1, le=1000)


class AwsSpec(_Spec):
    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
    security_groups: AwsSecurityGroups
    endpoint_url: str | None = Field(
        None,
        pattern=r"^https?://",
        description="EC2 endpoint override (VPC endpoints, tests); else AWS_ENDPOINT_URL_EC2 or "
        "the regional endpoint.",
    )
    rule_quota: RuleQuota = Field(default_factory=RuleQuota)


NETWORK_TAG_PATTERN = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"


class GcpTargetTags(_Spec):
    kubernetes_nodes: str | None = Field(None, pattern=NETWORK_TAG_PATTERN)
    nomad_clients: str | None = Field(None, pattern=NETWORK_TAG_PATTERN)
    external_v_ms: str | None = Field(None, pattern=NETWORK_TAG_PATTERN, alias="externalVMs")


class GcpSpec(_Spec):
    project: str = Field(pattern=r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
    network: str = Field(pattern=r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
    target_tags: GcpTargetTags
    endpoint: str | None = Field(
        None, pattern=r"^https?://", description="Compute API endpoint override (tests)."
    )
    restrict_egress: bool = Field(
        True,
        description="Write the guide's outbound rows as EGRESS allows plus a lowest-priority "
        "EGRESS deny for the managed tags (GCP allows all egress by default).",
    )


class ServerHardeningSpec(_Spec):
    """The user's intent for one CircleCI Server installation (its namespace)."""

    server_version: str = Field(
        pattern=SERVER_VERSION_PATTERN,
        description='"3" (or "3.x"), "4.0" .. "4.10": picks the guide profile.',
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
        DeletionPolicy.DELETE, description="Delete or Orphan managed rules when the resource goes."
    )
    drift_check_interval: str = Field("60s", pattern=DURATION_PATTERN)

    @property
    def drift_check_seconds(self) -> int:
        number, unit = int(self.drift_check_interval[:-1]), self.drift_check_interval[-1]
        return number * {"s": 1, "m": 60, "h": 3600}[unit]


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
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"function-after", "str", "int", "list", "dict"} or "[" in part:
            # pydantic's union/validator branch markers are not fields.
            continue
        else:
            out += f".{part}"
    return out


def _reason(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        pattern = err.get("ctx", {}).get("pattern", "")
        if pattern == CIDR_PATTERN:
            return f"{value!r} is not a valid CIDR"
        return f"{value!r} does not match {pattern}"
    if kind == "enum":
        return f"{value!r} is not one of {err.get('ctx', {}).get('expected', '')}"
    message = str(err["msg"])
    return message.removeprefix("Value error, ")


def errors_from_validation(exc: ValidationError, root: str = "spec") -> list[FieldError]:
    seen: set[str] = set()
    out: list[FieldError] = []
    for err in exc.errors():
        error = FieldError(_path(tuple(err["loc"]), root), _reason(err))
        if str(error) not in seen:
            seen.add(str(error))
            out.append(error)
    return out


def _overlaps(spec: ServerHardeningSpec) -> list[FieldError]:
    """The guide's premise is distinct subnets per role: say which two overlap."""
    roles: list[tuple[str, list[str]]] = [
        ("kubernetesNodes", spec.topology.kubernetes_nodes.cidrs),
        ("nomadClients", spec.topology.nomad_clients.cidrs),
    ]
    if spec.topology.external_v_ms.enabled:
        roles.append(("externalVMs", spec.topology.external_v_ms.cidrs))
    roles.append(("loadBalancers", spec.topology.load_balancers.cidrs))
    errors: list[FieldError] = []
    for i, (role_a, cidrs_a) in enumerate(roles):
        for role_b, cidrs_b in roles[i + 1 :]:
            if role_b == "loadBalancers" and role_a == "kubernetesNodes":
                continue  # a load balancer may live in the node subnets (the default)
            for ia, a in enumerate(cidrs_a):
                for ib, b in enumerate(cidrs_b):
                    na, nb = ipaddress.ip_network(a), ipaddress.ip_network(b)
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


def semantic_errors(spec: ServerHardeningSpec) -> list[FieldError]:
    """Rules that span fields (and so are not field validators)."""
    errors = _overlaps(spec)
    vms = spec.topology.external_v_ms
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
    return errors


def parse_spec(spec: Mapping[str, Any] | None) -> ServerHardeningSpec:
    """Parse and validate a resource's ``spec`` once; raise :class:`SpecError` naming fields."""
    if spec is None:
        raise SpecError([FieldError("spec", "required field is missing")])
    try:
        parsed = ServerHardeningSpec.model_validate(dict(spec))
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


def parse_resource(body: Mapping[str, Any]) -> tuple[ResourceRef, ServerHardeningSpec]:
    """Parse a whole ``ServerHardening`` document (as from a file or the API)."""
    errors: list[FieldError] = []
    if body.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION}"))
    if body.get("kind") != KIND:
        errors.append(FieldError("kind", f"must be {KIND}"))
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, Mapping) or not metadata.get("name"):
        errors.append(FieldError("metadata.name", "required field is missing"))
        metadata = {}
    if errors:
        raise SpecError(errors)
    spec = parse_spec(body.get("spec"))
    ref = ResourceRef(
        namespace=str(metadata.get("namespace") or "default"),
        name=str(metadata["name"]),
        uid=str(metadata.get("uid") or ""),
    )
    return ref, spec
