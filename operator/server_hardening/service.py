"""What the operator does for each resource, without kopf: read it fresh, run the pipeline,
write status, events and metrics; release it on deletion; coalesce bursts of triggers; schedule
the drift checks.

Idle costs next to nothing: the status is written only when it changes (the time of every check
is in the ``server_hardening_last_drift_check_timestamp_seconds`` metric), a drift episode posts
its Events once and a recurrence counts on the Event posted before (as client-go does), and a
Kubernetes-only resource whose spec did not change and whose namespace saw no NetworkPolicy or
Service event since its last check is not checked again (every such event triggers a reconcile
already) until its next full check, at least every :data:`FULL_CHECK_PERIOD`: the backstop
against a missed event (the watches deliver every change, and a listing that differs from
what their events said counts as a change of each namespace it differs in, see
:mod:`server_hardening.watching`; controller-runtime's comparable resync defaults to 10 hours).
A check that runs reads the API: what it compares is fresh. One scheduler
(:func:`run_drift_checks`) spreads the checks over the interval: each resource has its own
phase, and its own place in the cycle of full checks, both from its uid.

Why a little over 600 lines: the pipeline and the scheduler share the per-operator state and
call each other (every reconcile reschedules its resource, every due check runs the pipeline),
so split into two modules they would import each other.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import datetime as dt
import heapq
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server_hardening import metrics
from server_hardening.compiler import compile_intent
from server_hardening.eventsources import CONDITION as EVENTS_CONDITION
from server_hardening.eventsources import EventSources
from server_hardening.model import (
    GROUP,
    VERSION,
    DeletionPolicy,
    Mode,
    ResourceRef,
    ServerHardeningSpec,
    SpecError,
    parse_spec,
)
from server_hardening.reconcile import (
    Report,
    TargetFactory,
    as_target_error,
    invalid_report,
    reconcile,
    refuse_keeping_the_last,
)
from server_hardening.rules import Finding
from server_hardening.status import Phase
from server_hardening.targets.base import (
    ApplyResult,
    ResourceStore,
    TargetError,
    TransientTargetError,
)
from server_hardening.targets.watches import NamespaceVersions, Watch
from server_hardening.verification import RowResult

if TYPE_CHECKING:
    from server_hardening.targets.kubeapi import KubeApi
    from server_hardening.targets.kubeconfig import CredentialSource

log = logging.getLogger("server_hardening")

RELEASE_TIMEOUT = 300.0
# At least this often every resource is compared with the API in full, whatever its watches
# saw: the backstop against an event the watches missed, which they should not (a listing
# replaces what they knew, deletions included). Each full check costs about 8 ms of CPU (four
# reads and a compile): at 1,000 resources a minute apart, every 10th check in full was 1.3 %
# of a core, every 30th about 0.45 %, every 60th about 0.25 %. controller-runtime's comparable
# resync defaults to 10 hours.
FULL_CHECK_PERIOD = 60 * 60.0
# At least this often the clouds' machines are examined (every group and ACL on every machine of
# each role, the guide verified row by row): a few reads per role, so not at every check; often
# enough that the alert on a row violated for 15 minutes sees it three times. Between two
# examinations their findings and verdicts stand as found.
EXAMINE_PERIOD = 5 * 60.0
IN_PROGRESS_RECHECK = 5.0  # seconds: cloud writes still running are looked at again this soon
IDLE_WAKE = 30.0  # the scheduler's longest sleep when nothing is due
# The scheduler's shortest sleep: the checks that fall due within it run together (at 1,000
# resources a minute apart, one wake a second instead of about 17), each at most this late.
CHECK_TICK = 1.0
# Seconds after start after which the operator is ready without a handler call when kopf's
# index holds no resource: only the fallback for when the listing at start
# (watching.list_resources_at_start) cannot be made; SERVER_HARDENING_READY_GRACE overrides it.
READY_GRACE = float(os.environ.get("SERVER_HARDENING_READY_GRACE") or 30.0)
# A check for an exception's expiry runs this long after the instant (the pipeline judges with
# its own clock: a check a hair early would still see the exception in force).
EXPIRY_SLACK = 0.1
# The scheduler sleeps this much past the due time: the event loop's timers may wake a hair
# early, and a check found not yet due would wait for the next tick, a second late.
WAKE_SLACK = 0.05
# Status fields that change at every check; a status that differs only in these is not written.
CHECK_TIMES = ("lastDriftCheckTime", "lastReconcileTime")

# Set to any new value (``hardening recheck``), it makes the operator check every target in
# full at once and post an Event saying so.
RECHECK_ANNOTATION = f"{GROUP}/recheck"

Key = tuple[str, str]
Examination = tuple[tuple[Finding, ...], tuple[RowResult, ...]]
EventKey = tuple[str, str, str]  # type, reason, message


@dataclass(frozen=True)
class Registration:
    """What the scheduler knows of a resource: its interval, its phase inside the interval,
    whether it has cloud targets (which have no watch, so every check calls them) and the
    generation of the spec it was registered with."""

    interval: float
    phase: float
    clouds: bool
    generation: int
    # When the spec's declared exceptions expire (Unix time, sorted): an expiry changes the
    # verdict on what the namespace holds though nothing in it changed, so each is checked at
    # its instant.
    expiries: tuple[float, ...] = ()
    # With a cloud event source: the interval while it can be read (``interval`` then) and
    # the one while it cannot (the timer takes over).
    events_interval: float = 0.0
    fallback_interval: float = 0.0

    @property
    def full_check_every(self) -> int:
        """Every how many-th timed check runs in full: once per FULL_CHECK_PERIOD."""
        return full_check_every(self.interval)


def full_check_every(interval: float) -> int:
    return max(1, round(FULL_CHECK_PERIOD / interval))


@dataclass
class OperatorState:
    """Per-operator state, kept in kopf's ``memo`` (never a module global)."""

    factory: TargetFactory
    resources: ResourceStore
    clock: Callable[[], float] = time.time
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    pending: set[Key] = field(default_factory=set)
    registered: dict[Key, Registration] = field(default_factory=dict)
    # When each resource's next check is due (the truth), and the same as a heap ordered by
    # time, so the scheduler finds what is due without scanning every resource. A due time
    # that moved leaves its old heap entry behind: it is dropped when it comes up.
    next_check: dict[Key, float] = field(default_factory=dict)
    due_order: list[tuple[float, Key]] = field(default_factory=list)
    due_lock: threading.Lock = field(default_factory=threading.Lock)
    # When the scheduler wakes next: an earlier due time wakes it sooner.
    wake_at: float = 0.0
    timed_checks: dict[Key, int] = field(default_factory=dict)
    # Per resource: when its machines were last examined (clock time), the spec generation
    # examined, what the examination found per target (carried into the checks between), and
    # how many changes the namespace's watches had seen then.
    examined: dict[Key, tuple[float, int, dict[str, Examination], int]] = field(
        default_factory=dict
    )
    # What the last check saw (spec generation, resourceVersions), to skip an unchanged one.
    inputs_seen: dict[Key, Hashable] = field(default_factory=dict)
    versions: NamespaceVersions = field(default_factory=NamespaceVersions)
    # The events of the last pass (an episode goes on while they repeat) and, per event, the
    # name and count of the Event posted for it (a recurrence counts on it).
    events_seen: dict[Key, frozenset[EventKey]] = field(default_factory=dict)
    event_series: dict[tuple[Key, EventKey], tuple[str, int]] = field(default_factory=dict)
    # Resources known when the watches were first served, not reconciled yet (None: not yet
    # known); /readyz waits for them.
    awaiting: set[Key] | None = None
    started: float = field(default_factory=time.monotonic)
    # How many ServerHardenings kopf's index holds so far (set at startup; for /readyz).
    resources_indexed: Callable[[], int] = lambda: 0
    # The ServerHardenings of a namespace, and the namespaces that have one: kopf's index.
    owners: Callable[[str], set[str]] = lambda _namespace: set()
    owned_namespaces: Callable[[], set[str]] = set
    # The NetworkPolicy and Service watches: the client they fork theirs from, the namespaces
    # they watch (none: all, with ``clusterwide``), those whose first listing is not in yet
    # (kind, namespace or None), set once all are, and the reconciles their events started.
    watch_api: KubeApi | None = None
    namespaces: tuple[str, ...] = ()
    watches: list[Watch] = field(default_factory=list)
    unlisted: set[tuple[str, str | None]] = field(default_factory=set)
    listed: asyncio.Event | None = None
    watch_tasks: set[asyncio.Task[None]] = field(default_factory=set)
    wakeup: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None
    background: list[asyncio.Task[None]] = field(default_factory=list)  # kept from the GC
    # Resources being deleted: a reconcile still in flight must not bring their series back.
    released: set[Key] = field(default_factory=set)
    heartbeat: float = field(default_factory=time.monotonic)
    ready: bool = False
    kubeconfig: str | None = None
    # The credentials of the operator's own client; kopf's login hands the same to its watches.
    credentials: CredentialSource | None = None
    clusterwide: bool = False
    release_timeout: float = RELEASE_TIMEOUT
    # The cloud event sources (SQS queues, Pub/Sub subscriptions), made when a spec names one.
    event_sources: EventSources | None = None
    event_tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def reconciling(self) -> bool:
        """Caught up: every resource that existed when the watches started has been reconciled
        once, or there is none: the listing at start found none (``awaiting`` is then empty),
        or, when it could not list, ``READY_GRACE`` seconds after start without a handler call
        and without a ServerHardening in kopf's index (an empty watch scope)."""
        if self.awaiting is None:
            waited = time.monotonic() - self.started > READY_GRACE
            return waited and self.resources_indexed() == 0
        return not self.awaiting


def reconcile_resource(state: OperatorState, namespace: str, name: str) -> Report | None:
    """Read the resource fresh, run the pipeline, write status (when it changed), events (new
    ones; repeats counted) and metrics."""
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
        report = _enforce_the_last_valid(state.factory, ref, generation, exc, previous, now)
    else:
        key = (namespace, name)
        last = state.examined.get(key)
        changes = state.versions.changes(namespace)  # before the pass: what it will have seen
        # Also when the namespace's NetworkPolicies or Services changed since the last one: the
        # namespace's verdicts (two reads) must not stand for a policy that is gone or new.
        examine = (
            last is None
            or last[1] != generation
            or state.clock() - last[0] >= EXAMINE_PERIOD
            or last[3] != changes
        )
        report = reconcile(
            ref,
            spec,
            state.factory,
            generation=generation,
            previous_status=previous,
            examine=examine,
        )
        report.enforced_spec = body.get("spec") or {}
        carry_examination(state, key, generation, report, examined=examine, changes=changes)
    key = (namespace, name)
    metrics.RECONCILE_DURATION.observe(time.monotonic() - started)
    metrics.RECONCILES.labels(result=result_label(report)).inc()
    count_detections_and_writes(report)
    status = report.status(previous)
    _add_events_condition(state, key, status, previous, generation, report.checked_at)
    changed = not same_status(previous, status)
    if changed:
        state.resources.patch_status(namespace, name, status)
        # The OpenReports Report follows the status: written when what it says changed.
        try:
            state.resources.publish_report(report, ref)
        except TargetError as exc:
            log.warning("could not write the OpenReports Report of %s/%s: %s", namespace, name, exc)
    posted = post_events(state, key, body, report)
    if key not in state.released:
        metrics.SNAPSHOTS.update(report.snapshot())
    schedule_next(state, key, soon=report.in_progress)
    if state.awaiting is not None:
        state.awaiting.discard(key)
    log.log(
        logging.INFO if changed or posted else logging.DEBUG,
        "reconciled %s/%s: phase=%s drift=%d %s",
        namespace,
        name,
        report.phase,
        report.drift_total,
        report.message,
    )
    return report


def carry_examination(
    state: OperatorState,
    key: Key,
    generation: int,
    report: Report,
    *,
    examined: bool,
    changes: int = 0,
) -> None:
    """Remember what an examination of the machines found; between two, add it to each pass's
    report, so the status, the Report and the metrics say the same until the next one (and an
    idle check still writes nothing)."""
    if examined:
        found = {
            t.name: (tuple(t.examined_findings), t.rows)
            for t in report.targets
            if t.rows is not None
        }
        state.examined[key] = (state.clock(), generation, found, changes)
        return
    last = state.examined.get(key)
    if last is None:
        return
    for target in report.targets:
        kept = last[2].get(target.name)
        if kept is not None and target.observed and target.rows is None:
            target.findings += list(kept[0])
            target.rows = kept[1]


def _add_events_condition(
    state: OperatorState,
    key: Key,
    status: dict[str, Any],
    previous: Mapping[str, Any],
    generation: int,
    checked_at: dt.datetime,
) -> None:
    """``EventsReceived``: whether the resource's cloud event source can be read (False with the
    error while it cannot: its checks then run on the timer alone)."""
    found = state.event_sources.condition(key) if state.event_sources is not None else None
    if found is None:
        return
    ok, reason, message = found
    truth = "True" if ok else "False"
    before: Mapping[str, Any] = next(
        (c for c in previous.get("conditions") or [] if c.get("type") == EVENTS_CONDITION), {}
    )
    now = checked_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    status.setdefault("conditions", []).append(
        {
            "type": EVENTS_CONDITION,
            "status": truth,
            "reason": reason,
            "message": message,
            "lastTransitionTime": before.get("lastTransitionTime", now)
            if before.get("status") == truth
            else now,
            "observedGeneration": generation,
        }
    )


def _enforce_the_last_valid(
    factory: TargetFactory,
    ref: ResourceRef,
    generation: int,
    refused: SpecError,
    previous: Mapping[str, Any],
    now: dt.datetime,
) -> Report:
    """A bad edit never lowers protection: with a last valid spec on record (status), keep
    checking and repairing against it while the new one is refused."""
    enforced = last_valid_spec(previous)
    if enforced is None:
        return invalid_report(ref, generation, refused.errors, now)
    report = reconcile(ref, enforced, factory, generation=generation, previous_status=previous)
    last = int((previous.get("lastValidSpec") or {}).get("generation", 0))
    return refuse_keeping_the_last(report, generation, refused.errors, last)


def last_valid_spec(status: Mapping[str, Any] | None) -> ServerHardeningSpec | None:
    """The spec recorded in status as the last one enforced, if there is one and it parses."""
    last = (status or {}).get("lastValidSpec") or {}
    try:
        return parse_spec(last.get("spec"), recorded=True) if last else None
    except SpecError:
        return None


def same_status(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` would change anything but the check times. Compared as the API
    stores it: the status is a merge patch, where ``null`` means absent."""

    def stored(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: stored(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [stored(v) for v in value]
        return value

    def without_times(status: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in stored(status).items() if k not in CHECK_TIMES}

    return without_times(old) == without_times(new)


def post_events(state: OperatorState, key: Key, body: Mapping[str, Any], report: Report) -> int:
    """A drift episode posts its Events once: an event the previous pass had too is the same
    episode going on and is not posted again. One that comes back after a pass without it (the
    same drift, repaired, then again) counts on the Event posted for it before. Returns how many
    were posted or counted."""
    now = frozenset((e.type, e.reason, e.message) for e in report.events)
    before = state.events_seen.get(key, frozenset())
    state.events_seen[key] = now
    done = 0
    for event in report.events:
        ident: EventKey = (event.type, event.reason, event.message)
        if ident in before:
            continue
        series = state.event_series.get((key, ident))
        try:
            state.event_series[(key, ident)] = state.resources.post_or_count_event(
                body, event.type, event.reason, event.message, repeat_of=series
            )
        except TargetError as exc:
            log.warning("could not post event %s on %s/%s: %s", event.reason, *key, exc)
            continue
        done += 1
    return done


def result_label(report: Report) -> str:
    """The ``result`` label of ``server_hardening_reconciles_total``."""
    by_phase = {Phase.INVALID: "invalid", Phase.CONFLICT: "conflict", Phase.ERROR: "error"}
    if report.phase in by_phase:
        return by_phase[report.phase]
    if any(t.repaired for t in report.targets):
        return "repaired"
    return "drift_reported" if report.drift_total else "in_sync"


def count_detections_and_writes(report: Report) -> None:
    """Detections count episodes (an item drifted now that was not at the previous check), not
    observations; writes count what was applied."""
    ref = report.ref
    for target in report.targets:
        if target.observed and target.plan is not None:
            metrics.DETECTIONS.observe(ref.namespace, ref.name, target.name, target.drifted)
        applied = target.applied
        if applied is None:
            continue
        for action, value in (
            ("adopt", applied.adopted),
            ("create", applied.created),
            ("update", applied.updated),
            ("delete", applied.deleted),
            ("remove_unmanaged", applied.removed_unmanaged),
        ):
            if value:
                metrics.WRITES.labels(target=target.name, action=action).inc(value)


async def request_reconcile(
    state: OperatorState, namespace: str, name: str, *, timed: bool = False
) -> None:
    """Run a reconcile of one resource; while one runs, queue at most one more. A burst of
    events costs at most one running and one queued reconcile, and each reads the resource
    fresh. ``timed``: a drift check from the scheduler, skipped when nothing it compares has
    changed (see the module doc). Raises :class:`TargetError` when the resource could not be
    read or written."""
    key = (namespace, name)
    lock = state.locks.setdefault(key, asyncio.Lock())
    if lock.locked():
        state.pending.add(key)
        return
    async with lock:
        while True:
            state.pending.discard(key)
            # Read here, in the event loop that updates them, before the reconcile: an event
            # during it makes the next check run.
            inputs = _inputs(state, key)
            if timed:
                count = state.timed_checks.get(key, 0) + 1
                registration = state.registered.get(key)
                full = registration is None or count >= registration.full_check_every
                state.timed_checks[key] = 0 if full else count
                if not full and inputs is not None and state.inputs_seen.get(key) == inputs:
                    metrics.DRIFT_CHECKS.labels(how="unchanged").inc()
                    metrics.SNAPSHOTS.touch(namespace, name, state.clock())
                    schedule_next(state, key)
                    return
                metrics.DRIFT_CHECKS.labels(how="full").inc()
            report = await asyncio.to_thread(reconcile_resource, state, namespace, name)
            if report is not None and report.succeeded and inputs is not None:
                state.inputs_seen[key] = inputs
            else:
                state.inputs_seen.pop(key, None)
            timed = False
            if key not in state.pending:
                return


async def recheck(state: OperatorState, namespace: str, name: str, value: str) -> None:
    """A check of every target in full, on request (the recheck annotation), and a ``Rechecked``
    Event with what it found. Goes through :func:`request_reconcile` like every other trigger;
    when a check is running, the one queued behind it is this one, and the Event waits for it."""
    key = (namespace, name)
    state.inputs_seen.pop(key, None)  # nothing is skipped as unchanged
    await request_reconcile(state, namespace, name)
    lock = state.locks.get(key)
    if lock is not None:
        async with lock:  # the lock is fair: held once the queued check has run too
            pass
    body = await asyncio.to_thread(state.resources.get, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    status = body.get("status") or {}
    message = (
        f"checked every target in full on request ({RECHECK_ANNOTATION}={value}): "
        f"phase {status.get('phase', 'unknown')}, drift {status.get('driftTotal', 0)}"
    )
    await asyncio.to_thread(state.resources.post_event, body, "Normal", "Rechecked", message)


def _inputs(state: OperatorState, key: Key) -> Hashable | None:
    """What a Kubernetes-only check depends on: the spec's generation, the changes its
    namespace's watches saw and how many of its declared exceptions have expired by now. None
    for a resource with cloud targets (no watch there)."""
    registration = state.registered.get(key)
    if registration is None or registration.clouds or state.unlisted:
        # Until the watches' first listings are in, what they hold is not all there is.
        return None
    expired = bisect.bisect_right(registration.expiries, state.clock())
    return (registration.generation, state.versions.changes(key[0]), expired)


# -- the drift-check scheduler -----------------------------------------------------------------


def register(
    state: OperatorState,
    namespace: str,
    name: str,
    uid: str,
    spec: Mapping[str, Any],
    generation: int,
    status: Mapping[str, Any] | None = None,
) -> None:
    """Schedule (or re-schedule, after a spec change) a resource's drift checks. A refused
    spec keeps the schedule of the last valid one, which stays enforced; a resource that was
    never valid has nothing to check (its status says why) until an edit registers it again."""
    key = (namespace, name)
    try:
        parsed = parse_spec(spec)
    except SpecError:
        last = last_valid_spec(status)
        if last is None:
            unregister(state, namespace, name)
            return
        parsed = last
    events_interval = float(parsed.drift_check_seconds)
    fallback_interval = float(parsed.fallback_check_seconds)
    if parsed.events_configured:
        ref = ResourceRef(namespace=namespace, name=name, uid=uid)
        event_sources(state).subscribe(key, ref, parsed)
    elif state.event_sources is not None:
        state.event_sources.unsubscribe(key)
    unreadable = state.event_sources is not None and state.event_sources.unreadable(key)
    interval = fallback_interval if unreadable else events_interval
    state.registered[key] = Registration(
        interval=interval,
        phase=_phase(uid, namespace, name, interval),
        clouds=parsed.aws is not None or parsed.gcp is not None,
        generation=generation,
        expiries=tuple(
            sorted(e.expires.timestamp() for e in parsed.exceptions if e.expires is not None)
        ),
        events_interval=events_interval,
        fallback_interval=fallback_interval,
    )
    state.inputs_seen.pop(key, None)
    state.timed_checks.setdefault(key, cycle_start(uid, namespace, name, interval))
    if key not in state.next_check:
        schedule_next(state, key)


def _phase(uid: str, namespace: str, name: str, interval: float) -> float:
    """The phase spreads the checks of many resources evenly over the interval, and stays the
    same across restarts (it comes from the uid)."""
    return (_uid_hash(uid, namespace, name) % 10_000) / 10_000 * interval


def cycle_start(uid: str, namespace: str, name: str, interval: float) -> int:
    """Where a resource starts in its cycle of full checks (its first full timed check is the
    ``full_check_every(interval) - cycle_start(...)``-th), also from the uid: the full checks
    of resources that converged together are spread over the cycle instead of all falling in
    its last interval."""
    return _uid_hash(uid, namespace, name) // 10_000 % full_check_every(interval)


def _uid_hash(uid: str, namespace: str, name: str) -> int:
    return zlib.crc32((uid or f"{namespace}/{name}").encode())


def unregister(state: OperatorState, namespace: str, name: str) -> None:
    key = (namespace, name)
    if state.event_sources is not None:
        state.event_sources.unsubscribe(key)
    for table in (
        state.registered,
        state.next_check,
        state.timed_checks,
        state.inputs_seen,
        state.events_seen,
    ):
        table.pop(key, None)
    for series in [s for s in state.event_series if s[0] == key]:
        del state.event_series[series]
    if not any(other[0] == namespace for other in list(state.registered)):
        state.versions.forget(namespace)
    if state.awaiting is not None:
        state.awaiting.discard(key)


def schedule_next(state: OperatorState, key: Key, *, soon: bool = False) -> None:
    """The next check of ``key``: its own phase slot at least half an interval away (so checks
    stay spread however they were triggered), or in a few seconds when cloud writes are still
    running."""
    registration = state.registered.get(key)
    if registration is None:
        return
    now = state.clock()
    due = now + IN_PROGRESS_RECHECK if soon else next_due(now, registration)
    _set_due(state, key, due)
    if due < state.wake_at and state.wakeup is not None and state.loop is not None:
        # Called from reconcile threads too: asyncio.Event is set from its own loop only.
        state.loop.call_soon_threadsafe(state.wakeup.set)


def _set_due(state: OperatorState, key: Key, due: float) -> None:
    with state.due_lock:  # reconcile threads reschedule too
        state.next_check[key] = due
        heapq.heappush(state.due_order, (due, key))


def due_checks(state: OperatorState, now: float) -> tuple[list[Key], float]:
    """The resources due at ``now`` (each moved on to its next slot until its check reschedules
    it), and when the scheduler wakes next (set under the lock, so a thread that schedules an
    earlier check after this sees it and wakes the scheduler)."""
    taken: list[Key] = []
    with state.due_lock:
        heap = state.due_order
        while heap and heap[0][0] <= now:
            due, key = heapq.heappop(heap)
            if state.next_check.get(key) != due:
                continue  # rescheduled or unregistered since: an old entry
            registration = state.registered.get(key)
            if registration is None:
                state.next_check.pop(key, None)
                continue
            taken.append(key)
            later = next_due(now, registration)
            state.next_check[key] = later
            heapq.heappush(heap, (later, key))
        upcoming = min(heap[0][0] if heap else now + IDLE_WAKE, now + IDLE_WAKE)
        upcoming = max(upcoming, now + CHECK_TICK)
        state.wake_at = upcoming
    return taken, upcoming


def next_due(now: float, registration: Registration) -> float:
    """The next check: the resource's next slot, or sooner the instant its next declared
    exception expires (checked then, not at the next tick)."""
    slot = next_slot(now, registration)
    # Expiries whose check is due by now are past: the check running now sees them.
    index = bisect.bisect_right(registration.expiries, now - EXPIRY_SLACK)
    if index < len(registration.expiries):
        return min(slot, registration.expiries[index] + EXPIRY_SLACK)
    return slot


def next_slot(now: float, registration: Registration) -> float:
    interval, phase = registration.interval, registration.phase
    earliest = now + interval / 2
    slots = -(-(earliest - phase) // interval)  # ceiling division
    return phase + slots * interval


async def run_drift_checks(state: OperatorState) -> None:
    """One task for every resource's drift checks: it sleeps until the next one is due. (kopf's
    timers were one task per resource waking every few seconds, each logging a line.) Finding
    what is due costs O(log n) per check, not a scan of every resource at every wake."""
    state.wakeup = asyncio.Event()
    state.loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()
    while True:
        now = state.clock()
        due, upcoming = due_checks(state, now)
        for key in due:
            task = asyncio.create_task(_timed_check(state, key))
            running.add(task)
            task.add_done_callback(running.discard)
        state.wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.wakeup.wait(), timeout=upcoming - now + WAKE_SLACK)


async def _timed_check(state: OperatorState, key: Key) -> None:
    try:
        await request_reconcile(state, *key, timed=True)
    except TargetError as exc:
        log.warning("drift check of %s/%s failed: %s (next at its next slot)", *key, exc)


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
    resource owns on every target (in Audit: nothing at all). Transient failures are retried
    (by the caller) until ``release_timeout`` has passed since the deletion; then it gives up,
    saying what it left."""
    state.released.add((namespace, name))
    metrics.SNAPSHOTS.forget(namespace, name)
    metrics.DETECTIONS.forget(namespace, name)
    unregister(state, namespace, name)
    ref = ResourceRef(namespace=namespace, name=name, uid=str(meta.get("uid", "")))
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServerHardening", "metadata": dict(meta)}
    try:
        parsed = parse_spec(spec)
    except SpecError:
        return ReleaseOutcome()  # never applied anything, so nothing to release
    if parsed.mode is Mode.AUDIT:
        # Audit never writes, whatever deletionPolicy says: not even at deletion. Rules an
        # earlier Enforce left marked keep their marks (a resource re-created under this name
        # takes them back); the finalizer's removal is the only write, on the resource itself.
        log.info("released %s/%s in Audit: nothing written to any target", namespace, name)
        return ReleaseOutcome()
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
        except Exception as exc:
            failures.append(TargetError(f"{target_name}: {as_target_error(exc)}"))
            continue
        if result.errors or result.in_progress:
            left = result.errors + [f"{w} still running" for w in result.in_progress]
            failures.append(TransientTargetError(f"{target_name}: " + "; ".join(left)))
            continue
        state.resources.post_event(
            body, "Normal", "Released", released_message(target_name, result, delete=delete)
        )
    return failures


def released_message(target: str, result: ApplyResult, *, delete: bool) -> str:
    """What a release did on one target, for the ``Released`` Event."""
    returned = f"returned {result.updated} rules unmarked, their access unchanged"
    if not delete:
        return f"{target}: {returned} (deletionPolicy: Orphan)"
    return (
        f"{target}: deleted {result.deleted} rules the operator created; {returned} (adopted, "
        "or marked before provenance was recorded)"
    )


def _parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


# -- cloud events ------------------------------------------------------------------------------


def event_sources(state: OperatorState, **options: Any) -> EventSources:
    """The operator's event sources (made on first use): their readers request checks through
    :func:`request_reconcile`, the one coalescing runner every trigger goes through."""
    if state.loop is None:
        # Made from a handler, in the event loop the readers hand their work to.
        with contextlib.suppress(RuntimeError):
            state.loop = asyncio.get_running_loop()
    if state.event_sources is None:
        state.event_sources = EventSources(
            request=lambda _provider, keys: _from_reader(state, _event_checks, keys),
            health_changed=lambda keys, up: _from_reader(state, _source_health, keys, up),
            **options,
        )
    return state.event_sources


def _from_reader(state: OperatorState, call: Callable[..., None], *args: Any) -> None:
    """Reader threads hand their work to the event loop (asyncio objects belong to it)."""
    if state.loop is None:
        log.warning("cloud events arrived before the event loop was known: left to the timer")
        return
    state.loop.call_soon_threadsafe(call, state, *args)


def _event_checks(state: OperatorState, keys: set[Key]) -> None:
    for key in keys:
        if key not in state.registered:
            continue
        task = asyncio.get_running_loop().create_task(_event_check(state, key))
        state.event_tasks.add(task)
        task.add_done_callback(state.event_tasks.discard)


async def _event_check(state: OperatorState, key: Key) -> None:
    try:
        await request_reconcile(state, *key)
    except TargetError as exc:
        log.warning("event-triggered check of %s/%s failed: %s", *key, exc)


def _source_health(state: OperatorState, keys: set[Key], up: bool) -> None:
    """A source became unreadable (its resources fall back to the timer's interval) or readable
    again (back to the events' interval); each resource is checked now, which writes its
    ``EventsReceived`` condition and, on recovery, catches what was missed meanwhile."""
    for key in keys:
        registration = state.registered.get(key)
        if registration is None or not registration.events_interval:
            continue
        interval = registration.events_interval if up else registration.fallback_interval
        if interval != registration.interval:
            phase = registration.phase / registration.interval * interval
            state.registered[key] = dataclasses.replace(
                registration, interval=interval, phase=phase
            )
            state.timed_checks[key] = 0
    _event_checks(state, keys)
