"""What the operator does for each resource, without kopf: read it fresh, run the pipeline,
write status, events and metrics; release it on deletion; coalesce bursts of triggers.

The kopf handlers (:mod:`server_hardening.handlers`) only translate kopf's events into calls
here and keep one :class:`OperatorState` in kopf's ``memo``. Nothing here imports kopf, so the
same code runs under any trigger (a test, the CLI) and is tested without an event loop of kopf's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from server_hardening import metrics
from server_hardening.compiler import compile_intent
from server_hardening.model import (
    GROUP,
    VERSION,
    DeletionPolicy,
    ResourceRef,
    ServerHardeningSpec,
    SpecError,
    parse_spec,
)
from server_hardening.reconcile import Phase, Report, TargetFactory, invalid_report, reconcile
from server_hardening.targets.base import TargetError, TransientTargetError
from server_hardening.targets.kubernetes import ResourceClient

log = logging.getLogger("server_hardening")

RELEASE_TIMEOUT = 300.0

Key = tuple[str, str]


@dataclass
class OperatorState:
    """Per-operator state, kept in kopf's ``memo`` (never a module global)."""

    factory: TargetFactory
    resources: ResourceClient
    clock: Callable[[], float] = time.time
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    pending: set[Key] = field(default_factory=set)
    last_check: dict[Key, float] = field(default_factory=dict)
    # Resources being deleted: a reconcile still in flight must not bring their series back.
    released: set[Key] = field(default_factory=set)
    heartbeat: float = field(default_factory=time.monotonic)
    ready: bool = False
    kubeconfig: str | None = None
    clusterwide: bool = False
    release_timeout: float = RELEASE_TIMEOUT


def reconcile_resource(state: OperatorState, namespace: str, name: str) -> Report | None:
    """Read the resource fresh, run the pipeline, write status, events and metrics."""
    body = state.resources.get(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    meta = body["metadata"]
    ref = ResourceRef(namespace=namespace, name=name, uid=str(meta.get("uid", "")))
    generation = int(meta.get("generation") or 0)
    previous = body.get("status") or {}
    now = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    try:
        spec = parse_spec(body.get("spec"))
    except SpecError as exc:
        report = invalid_report(ref, generation, exc.errors, now)
    else:
        report = reconcile(
            ref, spec, state.factory, generation=generation, previous_status=previous
        )
    metrics.RECONCILE_DURATION.observe(time.monotonic() - started)
    metrics.RECONCILES.labels(result=result_label(report)).inc()
    count_detections_and_writes(report)
    state.resources.patch_status(namespace, name, report.status(previous))
    for event in report.events:
        try:
            state.resources.post_event(body, event.type, event.reason, event.message)
        except TargetError as exc:
            log.warning("could not post event %s on %s/%s: %s", event.reason, namespace, name, exc)
    if (namespace, name) not in state.released:
        metrics.SNAPSHOTS.update(report.snapshot())
    # Writes still running on a cloud: due again at the next timer tick, not a whole interval.
    state.last_check[(namespace, name)] = 0.0 if report.in_progress else state.clock()
    log.info(
        "reconciled %s/%s: phase=%s drift=%d %s",
        namespace,
        name,
        report.phase,
        report.drift_total,
        report.message,
    )
    return report


def result_label(report: Report) -> str:
    """The ``result`` label of ``server_hardening_reconciles_total``."""
    by_phase = {Phase.INVALID: "invalid", Phase.CONFLICT: "conflict", Phase.ERROR: "error"}
    if report.phase in by_phase:
        return by_phase[report.phase]
    if any(t.repaired for t in report.targets):
        return "repaired"
    return "drift_reported" if report.drift_total else "in_sync"


def count_detections_and_writes(report: Report) -> None:
    for target in report.targets:
        for kind, value in target.drift.by_kind().items():
            if value:
                metrics.DRIFT_DETECTED.labels(target=target.name, kind=kind.value).inc(value)
        applied = target.applied
        if applied is None:
            continue
        for action, value in (
            ("create", applied.created),
            ("update", applied.updated),
            ("delete", applied.deleted),
            ("remove_unmanaged", applied.removed_unmanaged),
        ):
            if value:
                metrics.WRITES.labels(target=target.name, action=action).inc(value)


async def request_reconcile(state: OperatorState, namespace: str, name: str) -> None:
    """Run a reconcile of one resource; while one runs, queue at most one more. A burst of
    events costs at most one running and one queued reconcile, and each reads the resource
    fresh. Raises :class:`TargetError` when the resource could not be read or written."""
    key = (namespace, name)
    lock = state.locks.setdefault(key, asyncio.Lock())
    if lock.locked():
        state.pending.add(key)
        return
    async with lock:
        while True:
            state.pending.discard(key)
            await asyncio.to_thread(reconcile_resource, state, namespace, name)
            if key not in state.pending:
                return


def due_for_check(state: OperatorState, namespace: str, name: str, spec: Mapping[str, Any]) -> bool:
    """Whether the drift-check interval has passed since the last reconcile."""
    try:
        interval = parse_spec(spec).drift_check_seconds
    except SpecError:
        return False  # an invalid resource has nothing to check; its status says why
    return state.clock() - state.last_check.get((namespace, name), 0.0) >= interval


@dataclass(frozen=True)
class ReleaseOutcome:
    """What releasing a deleted resource came to: ``retry`` (transient failures inside the
    timeout), or done, with a ``ReleaseAbandoned`` message when something was left behind."""

    retry: str = ""
    abandoned: str = ""


def release_resource(
    state: OperatorState,
    namespace: str,
    name: str,
    meta: Mapping[str, Any],
    spec: Mapping[str, Any],
) -> ReleaseOutcome:
    """On deletion: forget the series, then per ``deletionPolicy`` delete or orphan what the
    resource owns on every target. Transient failures are retried (by the caller) until
    ``release_timeout`` has passed since the deletion; then it gives up, saying what it left."""
    state.released.add((namespace, name))
    metrics.SNAPSHOTS.forget(namespace, name)
    state.last_check.pop((namespace, name), None)
    ref = ResourceRef(namespace=namespace, name=name, uid=str(meta.get("uid", "")))
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServerHardening", "metadata": dict(meta)}
    try:
        parsed = parse_spec(spec)
    except SpecError:
        return ReleaseOutcome()  # never applied anything, so nothing to release
    delete = parsed.deletion_policy is DeletionPolicy.DELETE
    deleting_since = _parse_time(meta.get("deletionTimestamp"))
    waited = (dt.datetime.now(dt.UTC) - deleting_since).total_seconds() if deleting_since else 0.0
    failures = _release_targets(state, ref, parsed, delete, body)
    if not failures:
        return ReleaseOutcome()
    text = "; ".join(str(f) for f in failures)
    if waited < state.release_timeout and any(
        isinstance(f, TransientTargetError) for f in failures
    ):
        return ReleaseOutcome(retry=text)
    message = (
        f"gave up releasing after {int(waited)}s: {text} - rules there are left in place; "
        "remove them by hand if needed"
    )
    state.resources.post_event(body, "Warning", "ReleaseAbandoned", message)
    return ReleaseOutcome(abandoned=message)


def _release_targets(
    state: OperatorState,
    ref: ResourceRef,
    spec: ServerHardeningSpec,
    delete: bool,
    body: Mapping[str, Any],
) -> list[TargetError]:
    failures: list[TargetError] = []
    intent = compile_intent(spec)
    for target_name, build in state.factory.build(intent, ref):
        try:
            target = build()
            result = target.release(target.observe(), delete=delete)
        except TransientTargetError as exc:
            failures.append(TransientTargetError(f"{target_name}: {exc}"))
            continue
        except TargetError as exc:
            failures.append(TargetError(f"{target_name}: {exc}"))
            continue
        if result.errors or result.in_progress:
            left = result.errors + [f"{w} still running" for w in result.in_progress]
            failures.append(TransientTargetError(f"{target_name}: " + "; ".join(left)))
            continue
        verb = "deleted" if delete else "orphaned"
        count = result.deleted if delete else result.updated
        state.resources.post_event(
            body, "Normal", "Released", f"{target_name}: {verb} {count} rules"
        )
    return failures


def _parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
