"""What ``status`` holds: the one description of it. Pure: no I/O here.

The CRD's status schema is generated from these models (:mod:`server_hardening.crd`), so
``kubectl explain serverhardening.status`` describes every field; a test validates the statuses
the operator writes (:meth:`server_hardening.reconcile.Report.status`) against them with unknown
fields refused, so a field the operator starts writing cannot miss the schema (the API server
would silently prune it). Only ``lastValidSpec.spec`` stays open: it is a copy of a spec,
possibly of an older version of the API.
"""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.alias_generators import to_camel

from server_hardening.drift import DriftKind
from server_hardening.rules import Severity


class _Status(BaseModel):
    """camelCase on the wire, as the operator writes it; unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=False, extra="forbid", frozen=True
    )


class Phase(enum.StrEnum):
    """``status.phase``: what the last reconcile of a resource came to."""

    ENFORCED = "Enforced"
    DRIFTED = "Drifted"
    AUDITING = "Auditing"
    INVALID = "Invalid"
    ERROR = "Error"
    CONFLICT = "Conflict"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(enum.StrEnum):
    VALID = "Valid"
    READY = "Ready"
    IN_SYNC = "InSync"
    COMPONENTS_RESOLVED = "ComponentsResolved"


class Condition(_Status):
    """One condition, as Kubernetes conditions are written."""

    type: ConditionType = Field(
        description="Valid: the spec is accepted. Ready: the last pass enforced or audited "
        "without error. InSync: no drift, or all of it repaired. ComponentsResolved: every "
        "component's Service was found."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(description="One CamelCase word for why (InvalidSpec, Drift, ...).")
    message: str = Field(description="What a person needs to know; empty when all is well.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int = Field(description="The generation of the spec this is about.")


class FindingStatus(_Status):
    """Something the operator found, with its guide row."""

    severity: Severity = Field(description="error, warning or info.")
    code: str = Field(description="The finding's code (one vocabulary for every target).")
    message: str = Field(description="What was found, where, and what to do.")
    row: str | None = Field(None, description="The hardening guide row it concerns.")
    target: str | None = Field(None, description="The target it was found on.")


DriftCountsStatus: type[BaseModel] = create_model(
    "DriftCountsStatus",
    __base__=_Status,
    __doc__="Rules that differ from the desired state, by kind.",
    **{
        kind.status_key: (
            int,
            Field(0, description=f"Rules {kind.value.replace('_', ' ')}.", ge=0),
        )
        for kind in DriftKind
    },
)  # type: ignore[call-overload]


LastDriftStatus: type[BaseModel] = create_model(
    "LastDriftStatus",
    __base__=DriftCountsStatus,
    __doc__="The last check that found drift, kept after a repair so it stays visible.",
    time=(str, Field(description="When the drift was found (RFC 3339).")),
    repaired=(bool, Field(description="Whether Enforce repaired it in the same pass.")),
)


class ReclaimedRule(_Status):
    """A rule adopted or taken back lately, and when."""

    key: str = Field(description="The rule's identity on its target.")
    times: list[str] = Field(description="When it was adopted or taken back (RFC 3339).")


class HandedOverRule(_Status):
    """A rule whose marks kept being stripped: left alone (ManagedElsewhere)."""

    key: str = Field(description="The rule's identity on its target.")
    since: str = Field(description="When it was left alone (RFC 3339); tried again a day later.")


class ReclaimsStatus(_Status):
    """Adoptions and take-backs remembered, so a rule something keeps stripping the marks of
    (a Terraform apply) is not fought over: 3 within an hour leave it alone for a day."""

    generation: int = Field(description="The spec generation this memory belongs to.")
    rules: list[ReclaimedRule] = Field(description="Rules adopted or taken back lately.")
    managed_elsewhere: list[HandedOverRule] = Field(
        description="Rules left alone, reported as ManagedElsewhere."
    )


class TargetStatus(_Status):
    """One target (kubernetes, aws, gcp) of the last pass."""

    name: str = Field(description="kubernetes, aws or gcp.")
    managed_rules: int = Field(description="Rules or policies this resource owns there.")
    drift: DriftCountsStatus = Field(
        description="Rules that differ from the desired state now, by kind."
    )
    repaired: bool = Field(description="Enforce repaired everything found in the last pass.")
    last_drift: LastDriftStatus | None = Field(
        None, description="The last check that found drift (kept after a repair)."
    )
    findings: list[FindingStatus] = Field(
        description="The most important findings on this target (at most 20)."
    )
    findings_total: int = Field(description="All findings on this target, listed or not.")
    last_error: str = Field(description="Why the last pass failed here; empty when it did not.")
    conflict_with: str = Field(
        description="Another resource that owns the same rules; empty without a conflict."
    )
    in_progress: list[str] = Field(
        description="Writes accepted whose operations had not finished when the pass stopped "
        "waiting."
    )
    reclaims: ReclaimsStatus | None = Field(
        None, description="Adoptions and take-backs remembered (rules managed elsewhere)."
    )


class LastValidSpec(_Status):
    """The last spec the operator accepted: while a newer one is refused, it keeps enforcing
    this one."""

    generation: int = Field(description="The generation of that spec.")
    spec: dict[str, Any] = Field(
        description="The spec as it was written.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class RememberedComponentPort(_Status):
    port: int | str = Field(description="The pod port (a number or a container-port name).")
    protocol: str = Field(description="TCP, UDP or SCTP.")


class RememberedRequirement(_Status):
    key: str = Field(description="A label key.")
    operator: str = Field(description="In, NotIn, Exists or DoesNotExist.")
    values: list[str] | None = Field(None, description="The values, for In and NotIn.")


class RememberedSelector(_Status):
    match_labels: dict[str, str] | None = Field(None, description="Labels the pods carry.")
    match_expressions: list[RememberedRequirement] | None = Field(
        None, description="Requirements on the pods' labels."
    )


class RememberedComponent(_Status):
    """A component as last resolved from its Service: what its pods' allow is rendered from
    while the Service is gone."""

    component: str = Field(description="frontend, nomadServer, outputProcessor or vmService.")
    service: str = Field(description="The Service it was read from.")
    pod_selector: RememberedSelector = Field(
        description="The pods behind the Service (its selector, as a label selector)."
    )
    ports: list[RememberedComponentPort] = Field(description="The pod ports of the guide's ports.")


class ServerHardeningStatus(_Status):
    """What the operator did and found at its last pass."""

    observed_generation: int = Field(description="The generation of the spec last reconciled.")
    phase: Phase = Field(
        description="Enforced, Auditing, Drifted, Invalid (the spec is refused; see the Valid "
        "condition), Error (a target failed; see targets[].lastError) or Conflict."
    )
    conditions: list[Condition] = Field(description="Valid, Ready, InSync, ComponentsResolved.")
    drift_total: int = Field(description="Rules that differ from the desired state, all targets.")
    findings_total: int = Field(
        0, description="All findings of the last pass: the resource's and every target's."
    )
    targets: list[TargetStatus] = Field(description="Each target of the last pass.")
    findings: list[FindingStatus] = Field(
        description="The resource's own findings (the spec, the guide profile), most important "
        "first (at most 20)."
    )
    last_drift_check_time: str | None = Field(
        None, description="When the targets were last observed (RFC 3339)."
    )
    last_reconcile_time: str | None = Field(
        None, description="When a pass last succeeded (RFC 3339)."
    )
    last_valid_spec: LastValidSpec | None = Field(
        None, description="The last spec accepted; enforced while a newer one is refused."
    )
    resolved_components: list[RememberedComponent] | None = Field(
        None,
        description="The pods and ports last read from each component's Service: a Service that "
        "vanishes keeps its pods' allow from this, re-created if deleted, until it is back.",
    )
