"""``hardening plan --live`` and ``hardening apply``: one pass of the operator's per-target
pipeline (:func:`server_hardening.reconcile.run_target`) from a terminal, against the cluster
and clouds the resource configures.

``plan --live`` runs it in Audit mode (observe only, never a write) and lists, per target, what
the next Enforce pass would do with every item: create, adopt, update, delete, keep, or leave
(owned by another controller, excepted, unmanaged and only reported). ``apply`` runs one Enforce
pass with the same safety rules as the operator (add before remove, marks only on adoption), for
CI pipelines and first onboarding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from server_hardening.compiler import compile_intent
from server_hardening.drift import ObservedItem, Plan
from server_hardening.model import Mode, ResourceRef, ServerHardeningSpec, UnmanagedRules
from server_hardening.reconcile import Event, TargetReport, run_target
from server_hardening.rules import Finding, most_important_first


@dataclass(frozen=True)
class Action:
    """One line of a live plan: what the next pass does with one item, and why."""

    action: str  # create | adopt | update | delete | keep | leave
    id: str
    rule: str
    reason: str
    row: str = ""
    priority: int | None = None  # a GCP firewall's: the lowest number is evaluated first

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "id": self.id, "rule": self.rule,
                               "reason": self.reason, "row": self.row}  # fmt: skip
        if self.priority is not None:
            out["priority"] = self.priority
        return out


def _priority(payload: Any) -> int | None:
    """The priority of a firewall payload (GCP); other targets' items have none."""
    if isinstance(payload, Mapping) and isinstance(payload.get("priority"), int):
        return int(payload["priority"])
    return None


def _reason_for(native_id: str, findings: Iterable[Finding]) -> str:
    """The judgement that named this item (the policy chain's finding), if any."""
    return next((f.message for f in findings if native_id and native_id in f.message), "")


def _observed(verb: str, item: ObservedItem[Any], reason: str) -> Action:
    """An action on an item as observed (no guide row: nothing desired names it)."""
    return Action(verb, item.native_id or item.key, item.key, reason,
                  priority=_priority(item.payload))  # fmt: skip


def actions(plan: Plan[Any], findings: Iterable[Finding], removing: bool) -> list[Action]:
    """Every item of one target's plan as an action, in a stable order."""
    seen = list(findings)

    def row(rows: tuple[str, ...]) -> str:
        return rows[0] if rows else ""

    out = [
        Action("create", d.key, d.key, "desired and absent", row(d.rows), _priority(d.payload))
        for d in plan.create
    ]
    changes = (
        ("adopt", plan.adopt, "exactly the desired rule, without this resource's marks: only the "
         "marks are added"),
        ("update", plan.update, "differs from what the guide requires"),
    )  # fmt: skip
    for verb, updates, why in changes:
        out += [
            Action(verb, u.observed.native_id or u.desired.key, u.desired.key, why,
                   row(u.desired.rows), _priority(u.desired.payload))
            for u in updates
        ]  # fmt: skip
    out += [_observed("delete", o, "managed and no longer desired") for o in plan.delete]
    for item in plan.unmanaged:
        reason = _reason_for(item.native_id, seen) or "not managed and widens access"
        verb = "delete" if removing else "leave"
        tail = " (unmanagedRules: Remove)" if removing else " (reported; unmanagedRules: Report)"
        out.append(_observed(verb, item, reason + tail))
    out += [_observed("leave", left.observed, left.reason) for left in plan.leave]
    out += [_observed("keep", o, "managed and as desired") for o in plan.keep]
    return out


def run_once(
    ref: ResourceRef, spec: ServerHardeningSpec, factory: Any, *, enforce: bool
) -> tuple[list[TargetReport], list[Event]]:
    """One pass over every configured target: Audit (``enforce=False``) or Enforce. The clouds'
    machines are examined too (every layer on every machine of each role, read-only)."""
    mode = Mode.ENFORCE if enforce else Mode.AUDIT
    effective = spec.model_copy(update={"mode": mode})
    events: list[Event] = []
    intent = compile_intent(effective)
    reports = [
        run_target(name, build, effective, 0, events, intent=intent)
        for name, build in factory.build(intent, ref)
    ]
    return reports, events


def live_plan_json(spec: ServerHardeningSpec, reports: list[TargetReport]) -> dict[str, Any]:
    removing = spec.unmanaged_rules is UnmanagedRules.REMOVE
    findings = most_important_first(
        list(compile_intent(spec).findings) + [f for r in reports for f in r.findings]
    )
    return {
        "targets": [
            {
                "name": report.name,
                "error": report.last_error,
                "conflictWith": report.conflict_with,
                "actions": [
                    a.as_json()
                    for a in (
                        actions(report.plan, report.findings, removing) if report.plan else []
                    )
                ],
            }
            for report in reports
        ],
        "findings": [f.as_dict() for f in findings],
    }
