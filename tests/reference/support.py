"""Running the production pipeline on a reference installation's clouds, and releasing it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from builders import OWNER
from server_hardening.compiler import compile_intent
from server_hardening.model import DeletionPolicy, ResourceRef, UnmanagedRules, parse_spec
from server_hardening.reconcile import Report, TargetReport, reconcile
from server_hardening.targets.base import AnyTarget, ApplyResult
from server_hardening.targets.factory import LiveTargets


class CloudTargets:
    """The operator's own wiring (``LiveTargets``) without the Kubernetes target: the clouds'
    SDK clients pointed at the doubles."""

    def __init__(self, **client_factories: Callable[..., Any]) -> None:
        self.live = LiveTargets(None, **client_factories)
        self.built: dict[str, AnyTarget] = {}

    def build(
        self, intent: Any, ref: ResourceRef, remembered: Any = ()
    ) -> list[tuple[str, Callable[[], AnyTarget]]]:
        out = []
        for name, builder in self.live.build(intent, ref, remembered):
            if name == "kubernetes":
                continue

            def keep(builder: Callable[[], AnyTarget] = builder, name: str = name) -> AnyTarget:
                self.built[name] = builder()
                return self.built[name]

            out.append((name, keep))
        return out


def apply(
    spec: dict[str, Any],
    factory: CloudTargets,
    unmanaged: UnmanagedRules,
    owner: ResourceRef = OWNER,
) -> TargetReport:
    """One Enforce pass of the operator's pipeline; the one cloud target's report."""
    body = {**spec, "unmanagedRules": unmanaged.value, "kubernetes": {
        **spec.get("kubernetes", {}), "networkPolicies": {"enabled": False}}}  # fmt: skip
    report: Report = reconcile(owner, parse_spec(body), factory)
    (target,) = report.targets
    assert target.error is None and not target.conflict_with, target.last_error
    assert target.plan is not None
    assert target.plan.empty or (target.applied is not None and target.applied.errors == []), (
        target.applied
    )
    return target


def release(
    spec: dict[str, Any], factory: CloudTargets, policy: DeletionPolicy, owner: ResourceRef = OWNER
) -> ApplyResult:
    """What the operator does when the resource is deleted (``service.release_resource``): each
    target's ``release`` over what it observes now."""
    body = {**spec, "kubernetes": {"networkPolicies": {"enabled": False}}}
    intent = compile_intent(parse_spec(body))
    ((_, build),) = factory.build(intent, owner)
    target = build()
    return target.release(target.observe(), delete=policy is DeletionPolicy.DELETE)
