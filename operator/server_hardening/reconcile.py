"""One function that runs the pipeline for one resource and returns a Report.

compile -> per target: build (resolve), observe, check ownership conflicts, plan, and in Enforce
apply -> Report (status body, events, metric snapshot). Nothing here knows kopf: the handlers
post the events and write the status this returns. Drift is data in the report, never an
exception; a target's error is kept to that target, so one broken cloud does not stop the
others.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from server_hardening.compiler import CompiledIntent, compile_intent
from server_hardening.drift import DriftCounts, DriftKind, Plan, compute_plan
from server_hardening.metrics import ResourceSnapshot, TargetSnapshot
from server_hardening.model import (
    Adoption,
    DeclaredExceptionSpec,
    FieldError,
    Mode,
    ResourceRef,
    ServerHardeningSpec,
)
from server_hardening.policy.exceptions import matcher as exception_matcher
from server_hardening.policy.reclaims import ReclaimHistory
from server_hardening.rules import Finding, FindingCode, most_important_first
from server_hardening.status import Phase
from server_hardening.targets.base import (
    AnyTarget,
    ApplyResult,
    ExaminesMachines,
    Observation,
    PermanentTargetError,
    TargetError,
)
from server_hardening.verification import RowResult, cluster_checks, guide_checks, verify

MAX_FINDINGS = 20
log = logging.getLogger("server_hardening")


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


TargetBuilder = Callable[[], AnyTarget]


class TargetFactory(Protocol):
    def build(
        self,
        intent: CompiledIntent,
        ref: ResourceRef,
        remembered: Sequence[Mapping[str, Any]] = (),
    ) -> list[tuple[str, TargetBuilder]]: ...


@dataclass
class TargetReport:
    name: str
    managed_rules: int = 0
    drift: DriftCounts = field(default_factory=DriftCounts)
    findings: list[Finding] = field(default_factory=list)
    last_error: str = ""
    conflict_with: str = ""
    # What the target asks the resource to remember (Observation.remembered).
    remembered: tuple[dict[str, Any], ...] = ()
    applied: ApplyResult | None = None
    observed: bool = False
    # Enforce repaired everything found; ``managed_repaired``: the drift of what this resource
    # manages was repaired (unmanaged rules that are only reported may remain).
    repaired: bool = False
    managed_repaired: bool = False
    # What the pass acted on, and the error that stopped it: for ``plan --live`` and the tests.
    plan: Plan[Any] | None = None
    error: TargetError | None = None
    # The identities found drifted, per kind (metrics count episodes from them).
    drifted: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Adoptions and take-backs remembered, so a rule whose marks keep being stripped is not
    # fought over (policy/reclaims.py); kept in status.
    reclaims: ReclaimHistory | None = None
    # The guide verified on the target's machines, row by row (None: not examined this pass).
    rows: tuple[RowResult, ...] | None = None
    # The findings of that examination (also in ``findings``), kept apart for the checks between.
    examined_findings: tuple[Finding, ...] = ()

    @property
    def world_open_sensitive(self) -> int:
        return self.count(FindingCode.WORLD_OPEN_SENSITIVE_PORT)

    def count(self, code: FindingCode) -> int:
        return sum(1 for f in self.findings if f.code is code)

    def status(self, now: str, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``lastDrift`` keeps the last check that found drift (and whether it was repaired),
        so a repair a second later does not erase what happened."""
        old = previous or {}
        last_drift = old.get("lastDrift")
        managed = self.drift.missing + self.drift.modified + self.drift.unexpected
        widening_before = (old.get("drift") or {}).get("unmanagedWidening", 0)
        # Unmanaged rules that are only reported are found again at every check: they update
        # lastDrift when their number changes, so a repair of managed drift stays visible.
        if managed or self.drift.unmanaged_widening != widening_before:
            repaired = self.managed_repaired if managed else self.repaired
            last_drift = {"time": now, **self.drift.as_status(), "repaired": repaired}
        return {
            "name": self.name,
            "managedRules": self.managed_rules,
            "drift": self.drift.as_status(),
            "repaired": self.repaired,
            "lastDrift": last_drift,
            "findings": [f.as_dict() for f in most_important_first(self.findings)[:MAX_FINDINGS]],
            "findingsTotal": len(self.findings),
            "lastError": self.last_error,
            "conflictWith": self.conflict_with,
            # Writes accepted whose operations had not finished when the pass stopped waiting.
            "inProgress": list(self.in_progress[:MAX_FINDINGS]),
            "reclaims": self.reclaims.as_status() if self.reclaims is not None else None,
        }

    @property
    def in_progress(self) -> list[str]:
        return list(self.applied.in_progress) if self.applied is not None else []


@dataclass
class Report:
    ref: ResourceRef
    generation: int
    mode: str
    phase: Phase
    reason: str
    message: str
    checked_at: dt.datetime
    targets: list[TargetReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    interval_seconds: int = 60
    # The spec this report enforced: recorded in status as the last valid one. ``refused``:
    # the errors of a newer spec the operator refuses while it keeps enforcing this one.
    enforced_spec: Mapping[str, Any] | None = None
    refused: tuple[FieldError, ...] = ()

    @property
    def drift_total(self) -> int:
        return sum(t.drift.total for t in self.targets)

    @property
    def in_progress(self) -> bool:
        """A target's writes were still running when its pass stopped waiting: check again
        soon rather than at the next interval."""
        return any(t.in_progress for t in self.targets)

    @property
    def succeeded(self) -> bool:
        return self.phase in {Phase.ENFORCED, Phase.AUDITING, Phase.DRIFTED}

    def status(self, previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The status subresource. Condition transition times move only on a change."""
        now = _rfc3339(self.checked_at)
        old_conditions = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
        old = previous or {}
        previous_targets = {t.get("name"): t for t in old.get("targets") or []}
        in_sync = self.succeeded and (
            self.drift_total == 0 or all(t.repaired for t in self.targets if t.drift.total)
        )
        valid = self.phase != Phase.INVALID and not self.refused
        missing = [
            f for t in self.targets for f in t.findings
            if f.code is FindingCode.COMPONENT_SERVICE_MISSING
        ]  # fmt: skip
        wanted = [
            ("Valid", valid, "SpecValid" if valid else "InvalidSpec"),
            ("Ready", self.phase in {Phase.ENFORCED, Phase.AUDITING}, self.reason),
            (
                "InSync",
                in_sync,
                "InSync" if in_sync else "Drift" if self.succeeded else self.reason,
            ),
            (
                "ComponentsResolved",
                not missing,
                "ServiceMissing" if missing else "Resolved",
            ),
        ]
        conditions = []
        for kind, ok, reason in wanted:
            truth = "True" if ok else "False"
            before = old_conditions.get(kind) or {}
            conditions.append(
                {
                    "type": kind,
                    "status": truth,
                    "reason": reason,
                    "message": (
                        "; ".join(f.message for f in missing)
                        if kind == "ComponentsResolved"
                        else self.message
                        if kind != "Valid" or not ok
                        else ""
                    ),
                    "lastTransitionTime": before.get("lastTransitionTime", now)
                    if before.get("status") == truth
                    else now,
                    "observedGeneration": self.generation,
                }
            )
        status: dict[str, Any] = {
            "observedGeneration": self.generation,
            "phase": self.phase.value,
            "conditions": conditions,
            "driftTotal": self.drift_total,
            "findingsTotal": len(self.findings) + sum(len(t.findings) for t in self.targets),
            "targets": [t.status(now, previous_targets.get(t.name)) for t in self.targets],
            "findings": [f.as_dict() for f in most_important_first(self.findings)[:MAX_FINDINGS]],
            "lastDriftCheckTime": now
            if any(t.observed for t in self.targets)
            else old.get("lastDriftCheckTime"),
            "lastReconcileTime": now if self.succeeded else old.get("lastReconcileTime"),
            "lastValidSpec": {"generation": self.generation, "spec": dict(self.enforced_spec)}
            if self.enforced_spec is not None and not self.refused
            else old.get("lastValidSpec"),
            # The components last resolved from their Services: a Service that vanishes keeps
            # its pods' allow from this (kept as it was when the cluster could not be read).
            "resolvedComponents": [e for t in self.targets for e in t.remembered]
            if any(t.name == "kubernetes" and t.observed for t in self.targets)
            else old.get("resolvedComponents"),
        }  # fmt: skip
        return status

    def snapshot(self) -> ResourceSnapshot:
        when = self.checked_at.timestamp()
        return ResourceSnapshot(
            namespace=self.ref.namespace,
            name=self.ref.name,
            spec_valid=not self.refused and self.phase != Phase.INVALID,
            phase=self.phase.value,
            last_reconcile=when if self.succeeded else None,
            interval_seconds=self.interval_seconds,
            targets=tuple(
                TargetSnapshot(
                    target=t.name,
                    drift={kind.value: count for kind, count in t.drift.by_kind().items()},
                    managed_rules=t.managed_rules,
                    world_open_sensitive=t.world_open_sensitive,
                    exceptions_active=t.count(FindingCode.DECLARED_EXCEPTION),
                    exceptions_expired=t.count(FindingCode.EXCEPTION_EXPIRED),
                    services_missing=t.count(FindingCode.COMPONENT_SERVICE_MISSING),
                    rows=tuple((r.row, r.verdict.value) for r in t.rows or ()),
                    error=bool(t.last_error),
                    last_check=when if t.observed else None,
                )
                for t in self.targets
            ),
        )


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def invalid_report(
    ref: ResourceRef, generation: int, errors: Sequence[FieldError], now: dt.datetime
) -> Report:
    message = "; ".join(str(e) for e in errors)
    return Report(
        ref=ref,
        generation=generation,
        mode="",
        phase=Phase.INVALID,
        reason="InvalidSpec",
        message=message,
        checked_at=now,
        findings=[Finding.of(FindingCode.INVALID_SPEC, str(e)) for e in errors],
        events=[Event("Warning", "InvalidSpec", message)],
    )


def refuse_keeping_the_last(
    report: Report, generation: int, errors: Sequence[FieldError], enforced_generation: int
) -> Report:
    """A newer spec is invalid: the report of enforcing the last valid one, said loudly. The
    phase is Invalid, Valid=False names every error, an event says so, and the targets keep
    being checked and repaired against generation ``enforced_generation``."""
    message = "; ".join(str(e) for e in errors)
    report.refused = tuple(errors)
    report.generation = generation
    report.phase, report.reason = Phase.INVALID, "InvalidSpec"
    report.message = (
        f"generation {generation} refused ({message}); still enforcing the last valid spec, "
        f"generation {enforced_generation}"
    )
    report.findings = [Finding.of(FindingCode.INVALID_SPEC, str(e)) for e in errors] + list(
        report.findings
    )
    report.events.insert(0, Event("Warning", "InvalidSpec", report.message))
    return report


def _names(items: Sequence[Any], attr: str = "key", limit: int = 8) -> str:
    keys = [str(getattr(i, attr)) for i in items]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _drift_event(target: str, plan: Plan[Any], initial: bool) -> Event | None:
    parts = []
    if plan.create and not initial:
        parts.append(f"missing {_names(plan.create)}")
    if plan.update:
        parts.append(f"modified {_names([u.desired for u in plan.update])}")
    if plan.delete and not initial:
        parts.append(f"unexpected {_names(plan.delete)}")
    if plan.unmanaged:
        parts.append(f"not managed and widening {_names(plan.unmanaged)}")
    if not parts:
        return None
    return Event("Warning", "DriftDetected", f"{target}: " + "; ".join(parts))


def _apply_event(target: str, plan: Plan[Any], result: ApplyResult) -> list[Event]:
    events = []
    done = []
    if result.adopted:
        done.append(f"adopted {_names([a.desired for a in plan.adopt])} (marks only)")
    if result.created:
        done.append(f"created {_names(plan.create)}")
    if result.updated:
        done.append(f"updated {_names([u.desired for u in plan.update])}")
    if result.deleted:
        done.append(f"deleted {_names(plan.delete)}")
    if done:
        events.append(Event("Normal", "Applied", f"{target}: " + "; ".join(done)))
    if result.removed_unmanaged:
        events.append(
            Event(
                "Warning",
                "RemovedUnmanaged",
                f"{target}: removed {_names(plan.remove_unmanaged, 'native_id')} "
                "(unmanagedRules: Remove)",
            )
        )
    for error in result.errors:
        events.append(Event("Warning", "ApplyFailed", f"{target}: {error}"))
    if result.in_progress:
        events.append(
            Event(
                "Normal",
                "InProgress",
                f"{target}: {len(result.in_progress)} write(s) still running "
                f"({', '.join(result.in_progress[:8])}); the next pass finishes the rest",
            )
        )
    return events


def plan_target(
    target: AnyTarget,
    observation: Observation[Any],
    *,
    adopt: bool = True,
    exceptions: Sequence[DeclaredExceptionSpec] = (),
    now: dt.datetime | None = None,
    managed_elsewhere: Mapping[str, str] | None = None,
) -> Plan[Any]:
    """What it takes to make ``target`` hold its desired items, given what it was seen to hold:
    the target's policy judges, ``drift.compute_plan`` places every item."""
    policy = target.policy
    return compute_plan(
        target.name,
        [*policy.desired(), *observation.kept],
        observation.items,
        judge_unmanaged=policy.judge_unmanaged(observation.items),
        remove_unmanaged=policy.remove_unmanaged,
        findings=observation.findings,
        claim=policy.claimer(),
        adopt_identical=adopt,
        judge_foreign=policy.judge_foreign(),
        exception_for=exception_matcher(exceptions, target.name, now or dt.datetime.now(dt.UTC)),
        managed_elsewhere=managed_elsewhere,
    )


def examine_machines(
    target: AnyTarget, intent: CompiledIntent
) -> tuple[list[Finding], tuple[RowResult, ...]] | None:
    """The target's machines as they are really exposed (``policy.effective``): the findings
    per machine and the guide verified row by row (on Kubernetes: the namespace's pods under
    every NetworkPolicy in it). None for a target that cannot read its machines."""
    if not isinstance(target, ExaminesMachines):
        return None
    machines = target.observe_machines()
    # Each target's policy evaluates its own machines (AwsPolicy.effective, GcpPolicy.effective,
    # KubernetesPolicy.effective: the namespace's pods under every NetworkPolicy in it).
    policy: Any = target.policy
    effective = policy.effective(machines)
    checks = cluster_checks(intent) if target.name == "kubernetes" else guide_checks(intent)
    return effective.findings(checks), tuple(verify(checks, [effective]))


def _examined(
    target: AnyTarget, intent: CompiledIntent, report: TargetReport
) -> tuple[list[Finding], tuple[RowResult, ...]] | None:
    try:
        return examine_machines(target, intent)
    except Exception as exc:
        # The machines are an extra view: without them the rules are still enforced.
        report.findings.append(
            Finding.of(
                FindingCode.MACHINES_UNREADABLE,
                f"{report.name}: the machines of each role could not be read "
                f"({as_target_error(exc)}); their real exposure is not known",
                target=report.name,
            )
        )
        return None


def _conflict(report: TargetReport, observation: Observation[Any], events: list[Event]) -> bool:
    """Rules marked by another ServerHardening make the whole target a conflict."""
    name = report.name
    others = sorted({i.owner for i in observation.items if i.owner and not i.owned})
    if not others:
        return False
    report.conflict_with = others[0]
    report.findings.append(
        Finding.of(
            FindingCode.CONFLICT,
            f"{name}: rules here are managed by ServerHardening {others[0]}; two resources "
            "must not manage the same thing, so this one does not write",
            target=name,
        )
    )
    events.append(Event("Warning", "Conflict", f"{name}: already managed by {others[0]}"))
    return True


def reclaimed(plan: Plan[Any]) -> list[str]:
    """The keys a plan adopts or takes back: unmarked rules it marks as this resource's."""
    adopted = [a.desired.key for a in plan.adopt]
    return adopted + [u.desired.key for u in plan.update if not u.observed.owned]


def as_target_error(exc: Exception) -> TargetError:
    """Adapters translate their SDK's errors once; anything that escapes that translation (a
    defect) is still kept to its target, as a permanent error naming its type, so the status,
    the Event and the other targets' reports are written instead of the whole reconcile
    raising (which would leave the status empty and the operator never caught up)."""
    if isinstance(exc, TargetError):
        return exc
    log.error("untranslated error from a target", exc_info=exc)
    return PermanentTargetError(f"{type(exc).__name__}: {exc}")


def run_target(
    name: str,
    build: TargetBuilder,
    spec: ServerHardeningSpec,
    previously_managed: int,
    events: list[Event],
    now: dt.datetime | None = None,
    *,
    intent: CompiledIntent | None = None,
    reclaims: ReclaimHistory | None = None,
) -> TargetReport:
    """One target's pipeline: build, observe, check ownership conflicts, plan, and in Enforce
    apply. The operator, the CLI and the adapter test suites all run exactly this. With
    ``intent`` the target's machines are examined too, once the pass's writes are done
    (:func:`examine_machines`): the CLI always, the operator at its full checks (it costs a
    few reads per role). ``reclaims``: what the target's status remembers of adoptions and
    take-backs (none: nothing is remembered, as for ``hardening apply``)."""
    report = TargetReport(name=name, reclaims=reclaims)
    target = _run_rules(report, build, spec, previously_managed, events, now)
    if target is not None and intent is not None:
        examined = _examined(target, intent, report)
        if examined is not None:
            report.findings += examined[0]
            report.examined_findings = tuple(examined[0])
            report.rows = examined[1]
    return report


def _run_rules(
    report: TargetReport,
    build: TargetBuilder,
    spec: ServerHardeningSpec,
    previously_managed: int,
    events: list[Event],
    now: dt.datetime | None,
) -> AnyTarget | None:
    """:func:`run_target`'s rules part; the target once it was observed, else None."""
    name = report.name
    moment = now or dt.datetime.now(dt.UTC)
    reclaims = report.reclaims
    try:
        target = build()
        observation: Observation[Any] = target.observe()
    except Exception as exc:
        error = as_target_error(exc)
        report.last_error, report.error = str(error), error
        events.append(Event("Warning", "TargetError", f"{name}: {error}"))
        return None
    report.observed = True
    report.remembered = observation.remembered
    if _conflict(report, observation, events):
        return target
    plan = plan_target(
        target,
        observation,
        adopt=spec.adoption is Adoption.ADOPT,
        exceptions=spec.exceptions,
        now=moment,
        managed_elsewhere=reclaims.managed_elsewhere(moment) if reclaims is not None else None,
    )
    report.plan = plan
    owned_before = sum(1 for i in observation.items if i.owned)
    # First convergence in Enforce: creating what never existed is not drift. Audit reports it:
    # what is missing is exactly what the user asked to see.
    initial = owned_before == 0 and previously_managed == 0 and spec.mode is Mode.ENFORCE
    drift = plan.drift()
    if initial:
        drift = DriftCounts(0, drift.modified, drift.unexpected, drift.unmanaged_widening)
    report.drift = drift
    report.drifted = {
        DriftKind.MISSING.value: () if initial else tuple(d.key for d in plan.create),
        DriftKind.MODIFIED.value: tuple(u.desired.key for u in plan.update),
        DriftKind.UNEXPECTED.value: tuple(o.native_id or o.key for o in plan.delete),
        DriftKind.UNMANAGED_WIDENING.value: tuple(o.native_id or o.key for o in plan.unmanaged),
    }
    report.managed_rules = plan.managed
    report.findings = [f for f in plan.findings if not (initial and f.code == "Missing")]
    events.extend(
        Event("Warning", "ComponentServiceMissing", f"{name}: {f.message}")
        for f in report.findings
        if f.code is FindingCode.COMPONENT_SERVICE_MISSING
    )
    drift_event = _drift_event(name, plan, initial)
    if drift_event is not None:
        events.append(drift_event)
    if spec.mode is Mode.AUDIT or plan.empty:
        if reclaims is not None:
            report.reclaims = reclaims.record((), moment)
        return target
    try:
        result = target.apply(plan)
    except Exception as exc:
        failed = as_target_error(exc)
        report.last_error, report.error = str(failed), failed
        # Adapters that stop mid-apply say what they did get done.
        report.applied = getattr(failed, "result", None)
        events.append(Event("Warning", "ApplyFailed", f"{name}: {failed}"))
        return target
    report.applied = result
    if reclaims is not None:
        report.reclaims = reclaims.record(reclaimed(plan), moment)
    report.findings.extend(result.findings)
    events.extend(_apply_event(name, plan, result))
    if result.errors:
        report.last_error = "; ".join(result.errors[:3])
    elif not result.in_progress:
        # Unmanaged rules that are only reported (unmanagedRules: Report) are still there.
        left = 0 if target.policy.remove_unmanaged else drift.unmanaged_widening
        report.repaired = drift.total > 0 and left == 0
        report.managed_repaired = drift.missing + drift.modified + drift.unexpected > 0
    return target


def _spec_findings(findings: Sequence[Finding], targets: Sequence[TargetReport]) -> list[Finding]:
    """The compiler's findings, less the static guess about v4's public load balancer once the
    cluster was read: the proxy Service as it is (type, source ranges, internal annotations)
    then says what is exposed (policy.loadbalancer)."""
    read_the_cluster = any(t.name == "kubernetes" and t.observed for t in targets)
    return [
        f for f in findings if not (read_the_cluster and f.code is FindingCode.PUBLIC_NOMAD_PORT)
    ]


def reconcile(
    ref: ResourceRef,
    spec: ServerHardeningSpec,
    factory: TargetFactory,
    *,
    generation: int = 0,
    previous_status: Mapping[str, Any] | None = None,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    examine: bool = False,
) -> Report:
    """One pass over every target of one resource. ``examine``: read the clouds' machines too
    and verify the guide row by row on them (:func:`examine_machines`)."""
    intent = compile_intent(spec)
    events: list[Event] = []
    before = {t.get("name"): t for t in (previous_status or {}).get("targets") or []}
    started = now()
    remembered = (previous_status or {}).get("resolvedComponents") or ()
    targets = [
        run_target(
            name,
            build,
            spec,
            int((before.get(name) or {}).get("managedRules") or 0),
            events,
            started,
            intent=intent if examine else None,
            reclaims=ReclaimHistory.from_status(
                (before.get(name) or {}).get("reclaims"), generation
            ),
        )
        for name, build in factory.build(intent, ref, remembered)
    ]
    report = Report(
        ref=ref,
        generation=generation,
        mode=spec.mode.value,
        phase=Phase.ENFORCED,
        reason="Enforced",
        message="",
        checked_at=started,
        targets=targets,
        findings=_spec_findings(intent.findings, targets),
        events=events,
        interval_seconds=spec.drift_check_seconds,
    )
    conflicts = [t for t in targets if t.conflict_with]
    errors = [t for t in targets if t.last_error]
    if conflicts:
        report.phase, report.reason = Phase.CONFLICT, "Conflict"
        report.message = "; ".join(
            f"{t.name} is managed by ServerHardening {t.conflict_with}" for t in conflicts
        )
    elif errors:
        report.phase, report.reason = Phase.ERROR, "TargetError"
        report.message = "; ".join(f"{t.name}: {t.last_error}" for t in errors)
    elif spec.mode is Mode.AUDIT:
        drift = report.drift_total
        report.phase = Phase.DRIFTED if drift else Phase.AUDITING
        report.reason = "DriftReported" if drift else "Audited"
        report.message = (
            f"Audit: {drift} drift found, nothing written" if drift else "Audit: in sync"
        )
    else:
        repaired = sum(t.drift.total for t in targets if t.repaired)
        report.message = f"enforced; repaired {repaired} drift" if repaired else "enforced; in sync"
        if any(t.drift.unmanaged_widening and not t.repaired for t in targets):
            report.phase, report.reason = Phase.DRIFTED, "UnmanagedWidening"
            report.message = "enforced; unmanaged rules widen access (unmanagedRules: Report)"
    return report
