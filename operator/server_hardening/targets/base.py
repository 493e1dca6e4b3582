"""The contract every target adapter meets, and the two errors adapters raise."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from server_hardening.drift import DesiredItem, ObservedItem, Plan
from server_hardening.model import ResourceRef
from server_hardening.policy.base import TargetPolicy
from server_hardening.rules import Finding

PayloadT = TypeVar("PayloadT")


class TargetError(Exception):
    """An API said no. ``operation`` names the call, ``resource`` what it was about."""

    def __init__(self, message: str, *, operation: str = "", resource: str = "") -> None:
        super().__init__(message)
        self.operation = operation
        self.resource = resource


class TransientTargetError(TargetError):
    """Throttling, 5xx, timeouts: retrying later can succeed."""


class PermanentTargetError(TargetError):
    """Bad credentials, missing permission, a group or network that does not exist: a person
    must act; retrying as-is will not help."""


@dataclass(frozen=True)
class Observation(Generic[PayloadT]):
    """What a target holds now, as items, plus what observing it taught (quota, missing group)."""

    items: tuple[ObservedItem[PayloadT], ...]
    findings: tuple[Finding, ...] = ()
    # Owned items to keep exactly as they are although the intent no longer renders them (a
    # component whose Service vanished keeps its last allow): desired beside the policy's.
    kept: tuple[DesiredItem[PayloadT], ...] = ()
    # What the resource should remember for its next pass (``status.resolvedComponents``: the
    # components last resolved from their Services, see components.remembered_entry).
    remembered: tuple[dict[str, Any], ...] = ()


@dataclass
class ApplyResult:
    """What an apply did. ``errors`` are per-change messages; the rest were applied.
    ``in_progress`` names writes the API accepted whose operations were still running when the
    pass stopped waiting for them: not failures, the next pass sees how they ended."""

    created: int = 0
    adopted: int = 0
    updated: int = 0
    deleted: int = 0
    removed_unmanaged: int = 0
    errors: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return self.created + self.adopted + self.updated + self.deleted + self.removed_unmanaged


class Target(Protocol[PayloadT]):
    """One place the operator enforces the guide: ``kubernetes``, ``aws`` or ``gcp``."""

    name: str

    @property
    def policy(self) -> TargetPolicy[PayloadT]:
        """The target's judgement, built with it by the factory (pure: see policy.base)."""
        ...

    def observe(self) -> Observation[PayloadT]:
        """Read what the target holds. Never writes."""
        ...

    def apply(self, plan: Plan[PayloadT]) -> ApplyResult:
        """Make the target match the plan: create and update first, then delete. Idempotent."""
        ...

    def release(self, observed: Observation[PayloadT], *, delete: bool) -> ApplyResult:
        """On deletion of the resource: remove owned items (``delete``) or drop the ownership
        mark and leave them (orphan)."""
        ...


class ResourceStore(Protocol):
    """The ServerHardening resources themselves, as the service reads and reports on them
    (``targets.kubernetes.ResourceClient`` in the operator). A protocol, so that the service
    layer and its tests need no Kubernetes client."""

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The resource's body, or None when it is gone."""
        ...

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...

    def publish_report(self, report: Any, owner: ResourceRef) -> bool:
        """Write the resource's OpenReports Report; False when that API is not installed."""
        ...

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> str:
        """Post an Event about ``body``; returns its name."""
        ...

    def post_or_count_event(
        self,
        body: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        *,
        repeat_of: tuple[str, int] | None = None,
    ) -> tuple[str, int]:
        """Post an Event, or count a repeat on the one named in ``repeat_of``: (name, count)."""
        ...


AnyTarget = Target[Any]
"""A target of any payload type, as the pipeline holds them side by side."""

ApiCallRecorder = Callable[[str, str], None]
"""Adapters report every API call as ``(operation, outcome)``; outcome is ``ok``, ``throttled``,
``transient_error`` or ``error``. The operator wires this to the metrics module; tests count
with it.
"""


def ignore_call(operation: str, outcome: str) -> None:
    """The default recorder: count nothing."""


@runtime_checkable
class ExaminesMachines(Protocol):
    """A target that can read the machines of each role (``machines``) and whose policy
    evaluates them (``policy.effective``): the clouds."""

    @property
    def policy(self) -> Any: ...

    def observe_machines(self) -> Any:
        """Read every machine of every role and the layers on it. Never writes."""
        ...
