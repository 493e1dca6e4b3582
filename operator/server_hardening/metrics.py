"""Every Prometheus series the operator exports, in one place, on one registry.

Per-resource gauges come from a collector over a snapshot of the last reports, so a deleted
resource's series disappear with it (no stale series). Label values are bounded: resource
namespace/name (as many as there are resources), target in {kubernetes, aws, gcp}, kind and
result from the fixed sets below, operation from each adapter's fixed set of API calls.

Series
------
``server_hardening_drift{namespace, name, target, kind}`` gauge
    Drift found at the last check. kind: missing | modified | unexpected | unmanaged_widening.
``server_hardening_resource_drift{namespace, name}`` gauge
    Sum of the above over targets and kinds (a gauge, so no ``_total`` suffix: that suffix
    promises a counter; it was named server_hardening_drift_total before).
``server_hardening_managed_rules{namespace, name, target}`` gauge
    Rules (policies, security-group rules, firewall rules) the resource manages on the target.
``server_hardening_world_open_sensitive_ports{namespace, name, target}`` gauge
    Rules open to 0.0.0.0/0 or ::/0 on 22, 2376 or 4647 found at the last check (any owner).
``server_hardening_target_error{namespace, name, target}`` gauge
    1 while the last pass on the target failed, else 0.
``server_hardening_resource_ready{namespace, name, phase}`` gauge
    1 for the resource's current phase (Enforced, Drifted, Auditing, Invalid, Error, Conflict).
``server_hardening_last_reconcile_timestamp_seconds{namespace, name}`` gauge
    Unix time of the last successful reconcile.
``server_hardening_last_drift_check_timestamp_seconds{namespace, name, target}`` gauge
    Unix time of the last successful observation of the target. Kept while the resource
    exists, through failed passes and invalid edits (so a check that stops ages and pages).
``server_hardening_exceptions{namespace, name, target, state}`` gauge
    Items excused by spec.exceptions at the last check. state: active | expired (an expired
    one excuses nothing and is judged again).
``server_hardening_component_services_missing{namespace, name}`` gauge
    Components whose Service vanished; their pods keep the last allow until it is back.
``server_hardening_spec_valid{namespace, name}`` gauge
    1 while the resource's current spec is valid, 0 while it is refused.
``server_hardening_drift_check_interval_seconds{namespace, name}`` gauge
    The resource's driftCheckInterval (alerts compare check age with it).
``server_hardening_reconciles_total{result}`` counter
    result: in_sync | repaired | drift_reported | invalid | conflict | error.
``server_hardening_reconcile_duration_seconds`` histogram
    Wall time of one reconcile of one resource.
``server_hardening_api_calls_total{target, operation, outcome}`` counter
    Calls to external APIs. outcome: ok | throttled | transient_error | error.
``server_hardening_drift_detected_total{target, kind}`` counter
    Drift episodes: a drifted item counts once when a check first finds it, not again at every
    check that still finds it (see :class:`DetectionCounter`); repaired drift counts too, and
    the same item drifting again after a repair is a new episode.
``server_hardening_writes_total{target, action}`` counter
    Writes the operator made. action: adopt | create | update | delete | remove_unmanaged.
``server_hardening_drift_checks_total{how}`` counter
    Timed drift checks. how: full (the pipeline ran) | unchanged (a Kubernetes-only resource
    whose spec did not change and whose namespace saw no NetworkPolicy or Service event since
    its last check: nothing to compare, its check timestamps move on).
``server_hardening_watch_alive`` gauge
    1 while the operator's watch streams are alive (the liveness probe reads the same state).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server_hardening.drift import DriftKind

REGISTRY = CollectorRegistry(auto_describe=True)

DRIFT_KINDS = tuple(kind.value for kind in DriftKind)
PHASES = ("Enforced", "Drifted", "Auditing", "Invalid", "Error", "Conflict")
RESULTS = ("in_sync", "repaired", "drift_reported", "invalid", "conflict", "error")

RECONCILES = Counter(
    "server_hardening_reconciles",
    "Reconciles of ServerHardening resources, by result.",
    ["result"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "server_hardening_reconcile_duration_seconds",
    "Wall time of one reconcile of one resource.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
    registry=REGISTRY,
)
API_CALLS = Counter(
    "server_hardening_api_calls",
    "Calls to external APIs, by target, operation and outcome.",
    ["target", "operation", "outcome"],
    registry=REGISTRY,
)
WRITES = Counter(
    "server_hardening_writes",
    "Writes the operator made, by target and action.",
    ["target", "action"],
    registry=REGISTRY,
)
DRIFT_DETECTED = Counter(
    "server_hardening_drift_detected",
    "Drift found by checks, by target and kind.",
    ["target", "kind"],
    registry=REGISTRY,
)
DRIFT_CHECKS = Counter(
    "server_hardening_drift_checks",
    "Timed drift checks, by how they were done (full, or skipped as unchanged).",
    ["how"],
    registry=REGISTRY,
)
WATCH_ALIVE = Gauge(
    "server_hardening_watch_alive",
    "1 while the operator's watch streams are alive.",
    registry=REGISTRY,
)


@dataclass(frozen=True)
class TargetSnapshot:
    target: str
    drift: dict[str, int]
    managed_rules: int
    world_open_sensitive: int
    error: bool
    last_check: float | None
    exceptions_active: int = 0
    exceptions_expired: int = 0
    services_missing: int = 0


@dataclass(frozen=True)
class ResourceSnapshot:
    namespace: str
    name: str
    phase: str
    last_reconcile: float | None
    interval_seconds: int
    targets: tuple[TargetSnapshot, ...] = field(default=())
    spec_valid: bool = True

    @property
    def valid(self) -> bool:
        return self.spec_valid and self.phase != "Invalid"


_RESOURCE = ("namespace", "name")
_TARGET = ("namespace", "name", "target")


def _gauge(name: str, documentation: str, labels: tuple[str, ...] | list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


class _SnapshotCollector(Collector):
    """Per-resource gauges from the latest snapshot of each live resource."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resources: dict[tuple[str, str], ResourceSnapshot] = {}
        # The last successful check per target, kept across snapshots that lack one (a failed
        # pass, an invalid spec with no targets): a check that stops must age, not vanish.
        self._last_checks: dict[tuple[str, str], dict[str, float]] = {}

    def update(self, snapshot: ResourceSnapshot) -> None:
        key = (snapshot.namespace, snapshot.name)
        with self._lock:
            self._resources[key] = snapshot
            checks = self._last_checks.setdefault(key, {})
            for tgt in snapshot.targets:
                if tgt.last_check is not None:
                    checks[tgt.target] = tgt.last_check

    def touch(self, namespace: str, name: str, when: float) -> None:
        """A check found the resource unchanged: its check timestamps move to ``when``."""
        with self._lock:
            old = self._resources.get((namespace, name))
            if old is None:
                return
            self._resources[(namespace, name)] = dataclasses.replace(
                old,
                last_reconcile=when if old.last_reconcile is not None else None,
                targets=tuple(
                    dataclasses.replace(t, last_check=when if t.last_check is not None else None)
                    for t in old.targets
                ),
            )

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._resources.pop((namespace, name), None)
            self._last_checks.pop((namespace, name), None)

    def last_checks(self, namespace: str, name: str) -> dict[str, float]:
        with self._lock:
            return dict(self._last_checks.get((namespace, name), {}))

    def snapshots(self) -> list[ResourceSnapshot]:
        with self._lock:
            return list(self._resources.values())

    def collect(self) -> Iterable[Metric]:
        resources = self.snapshots()
        drift = _gauge(
            "server_hardening_drift",
            "Drift found at the last check, by target and kind.",
            ["namespace", "name", "target", "kind"],
        )
        drift_total = _gauge(
            "server_hardening_resource_drift",
            "Drift found at the last check, all targets and kinds.",
            _RESOURCE,
        )
        managed = _gauge(
            "server_hardening_managed_rules", "Rules the resource manages on the target.", _TARGET
        )
        world_open = _gauge(
            "server_hardening_world_open_sensitive_ports",
            "Rules open to the world on 22, 2376 or 4647 found at the last check.",
            _TARGET,
        )
        errors = _gauge(
            "server_hardening_target_error", "1 while the last pass on the target failed.", _TARGET
        )
        ready = _gauge(
            "server_hardening_resource_ready",
            "1 for the resource's current phase.",
            ["namespace", "name", "phase"],
        )
        last_reconcile = _gauge(
            "server_hardening_last_reconcile_timestamp_seconds",
            "Unix time of the last successful reconcile.",
            _RESOURCE,
        )
        last_check = _gauge(
            "server_hardening_last_drift_check_timestamp_seconds",
            "Unix time of the last successful observation of the target.",
            _TARGET,
        )
        interval = _gauge(
            "server_hardening_drift_check_interval_seconds",
            "The resource's driftCheckInterval.",
            _RESOURCE,
        )
        valid = _gauge(
            "server_hardening_spec_valid",
            "1 while the resource's current spec is valid, 0 while it is refused.",
            _RESOURCE,
        )
        exceptions = _gauge(
            "server_hardening_exceptions",
            "Items excused by spec.exceptions at the last check (active or expired).",
            ["namespace", "name", "target", "state"],
        )
        services_missing = _gauge(
            "server_hardening_component_services_missing",
            "Components whose Service vanished (their last allow is kept).",
            _RESOURCE,
        )
        for res in resources:
            ids = [res.namespace, res.name]
            total = 0
            services_missing.add_metric(ids, float(sum(t.services_missing for t in res.targets)))
            for phase in PHASES:
                ready.add_metric([*ids, phase], 1.0 if phase == res.phase else 0.0)
            if res.last_reconcile is not None:
                last_reconcile.add_metric(ids, res.last_reconcile)
            interval.add_metric(ids, float(res.interval_seconds))
            valid.add_metric(ids, 1.0 if res.valid else 0.0)
            for target, when in sorted(self.last_checks(res.namespace, res.name).items()):
                last_check.add_metric([*ids, target], when)
            for tgt in res.targets:
                for kind in DRIFT_KINDS:
                    value = tgt.drift.get(kind, 0)
                    total += value
                    drift.add_metric([*ids, tgt.target, kind], float(value))
                managed.add_metric([*ids, tgt.target], float(tgt.managed_rules))
                world_open.add_metric([*ids, tgt.target], float(tgt.world_open_sensitive))
                errors.add_metric([*ids, tgt.target], 1.0 if tgt.error else 0.0)
                exceptions.add_metric([*ids, tgt.target, "active"], float(tgt.exceptions_active))
                exceptions.add_metric([*ids, tgt.target, "expired"], float(tgt.exceptions_expired))
            drift_total.add_metric(ids, float(total))
        yield from (
            drift,
            drift_total,
            managed,
            world_open,
            errors,
            ready,
            last_reconcile,
            last_check,
            interval,
            valid,
            exceptions,
            services_missing,
        )


SNAPSHOTS = _SnapshotCollector()
REGISTRY.register(SNAPSHOTS)


class DetectionCounter:
    """Counts drift *episodes* into ``server_hardening_drift_detected_total``.

    A check reports, per target and kind, the identities of the items it found drifted (a
    NetworkPolicy name, a security-group rule ID, a firewall name). An item counts when it is
    drifted now and was not at the previous check of the same resource and target; an item
    that stays drifted (an unmanaged rule only reported) counts once, however many checks see
    it. A target that could not be observed is not passed in, so its memory stays as it was.
    The memory lives in the process: after a restart, drift that persists counts once more
    (as does any counter's reset, which ``increase()`` already handles).
    """

    def __init__(self, counter: Counter = DRIFT_DETECTED) -> None:
        self._counter = counter
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str, str], frozenset[str]] = {}

    def observe(
        self, namespace: str, name: str, target: str, drifted: Mapping[str, Iterable[str]]
    ) -> dict[str, int]:
        """Record one check of one target; return (and count) the new episodes per kind.

        ``drifted`` maps each kind in :data:`DRIFT_KINDS` to the identities found drifted; a
        kind left out means none of that kind."""
        unknown = set(drifted) - set(DRIFT_KINDS)
        if unknown:
            raise ValueError(f"unknown drift kinds {sorted(unknown)}; expected {DRIFT_KINDS}")
        new: dict[str, int] = {}
        with self._lock:
            for kind in DRIFT_KINDS:
                key = (namespace, name, target, kind)
                now = frozenset(drifted.get(kind, ()))
                fresh = len(now - self._seen.get(key, frozenset()))
                if now:
                    self._seen[key] = now
                else:
                    self._seen.pop(key, None)
                if fresh:
                    self._counter.labels(target=target, kind=kind).inc(fresh)
                    new[kind] = fresh
        return new

    def forget(self, namespace: str, name: str) -> None:
        """The resource is gone: drop what was seen for it."""
        with self._lock:
            for key in [k for k in self._seen if k[:2] == (namespace, name)]:
                del self._seen[key]


DETECTIONS = DetectionCounter()


def recorder_for(target: str) -> _Recorder:
    """An ``ApiCallRecorder`` for one target's adapter."""
    return _Recorder(target)


class _Recorder:
    def __init__(self, target: str) -> None:
        self.target = target

    def __call__(self, operation: str, outcome: str) -> None:
        API_CALLS.labels(target=self.target, operation=operation, outcome=outcome).inc()
