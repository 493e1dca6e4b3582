"""Every Prometheus series the operator exports, in one place, on one registry.

Per-resource gauges come from a collector over a snapshot of the last reports, so a deleted
resource's series disappear with it (no stale series). Label values are bounded: resource
namespace/name (as many as there are resources), target in {kubernetes, aws, gcp}, kind and
result from the fixed sets below, operation from each adapter's fixed set of API calls.

Series
------
``server_hardening_drift{namespace, name, target, kind}`` gauge
    Drift found at the last check. kind: missing | modified | unexpected | unmanaged_widening.
``server_hardening_drift_total{namespace, name}`` gauge
    Sum of the above over targets and kinds (what the alert keys on).
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
    Unix time of the last successful observation of the target.
``server_hardening_drift_check_interval_seconds{namespace, name}`` gauge
    The resource's driftCheckInterval (alerts compare check age with it).
``server_hardening_reconciles_total{result}`` counter
    result: in_sync | repaired | drift_reported | invalid | conflict | error.
``server_hardening_reconcile_duration_seconds`` histogram
    Wall time of one reconcile of one resource.
``server_hardening_api_calls_total{target, operation, outcome}`` counter
    Calls to external APIs. outcome: ok | throttled | transient_error | error.
``server_hardening_drift_detected_total{target, kind}`` counter
    Drift found by checks (each check counts what it found; repaired drift is counted too).
``server_hardening_writes_total{target, action}`` counter
    Writes the operator made. action: create | update | delete | remove_unmanaged.
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
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

DRIFT_KINDS = ("missing", "modified", "unexpected", "unmanaged_widening")
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


@dataclass(frozen=True)
class ResourceSnapshot:
    namespace: str
    name: str
    phase: str
    last_reconcile: float | None
    interval_seconds: int
    targets: tuple[TargetSnapshot, ...] = field(default=())


class _SnapshotCollector(Collector):
    """Per-resource gauges from the latest snapshot of each live resource."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resources: dict[tuple[str, str], ResourceSnapshot] = {}

    def update(self, snapshot: ResourceSnapshot) -> None:
        with self._lock:
            self._resources[(snapshot.namespace, snapshot.name)] = snapshot

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

    def snapshots(self) -> list[ResourceSnapshot]:
        with self._lock:
            return list(self._resources.values())

    def collect(self) -> Iterable[Metric]:
        resources = self.snapshots()
        drift = GaugeMetricFamily(
            "server_hardening_drift",
            "Drift found at the last check, by target and kind.",
            labels=["namespace", "name", "target", "kind"],
        )
        drift_total = GaugeMetricFamily(
            "server_hardening_drift_total",
            "Drift found at the last check, all targets and kinds.",
            labels=["namespace", "name"],
        )
        managed = GaugeMetricFamily(
            "server_hardening_managed_rules",
            "Rules the resource manages on the target.",
            labels=["namespace", "name", "target"],
        )
        world_open = GaugeMetricFamily(
            "server_hardening_world_open_sensitive_ports",
            "Rules open to the world on 22, 2376 or 4647 found at the last check.",
            labels=["namespace", "name", "target"],
        )
        errors = GaugeMetricFamily(
            "server_hardening_target_error",
            "1 while the last pass on the target failed.",
            labels=["namespace", "name", "target"],
        )
        ready = GaugeMetricFamily(
            "server_hardening_resource_ready",
            "1 for the resource's current phase.",
            labels=["namespace", "name", "phase"],
        )
        last_reconcile = GaugeMetricFamily(
            "server_hardening_last_reconcile_timestamp_seconds",
            "Unix time of the last successful reconcile.",
            labels=["namespace", "name"],
        )
        last_check = GaugeMetricFamily(
            "server_hardening_last_drift_check_timestamp_seconds",
            "Unix time of the last successful observation of the target.",
            labels=["namespace", "name", "target"],
        )
        interval = GaugeMetricFamily(
            "server_hardening_drift_check_interval_seconds",
            "The resource's driftCheckInterval.",
            labels=["namespace", "name"],
        )
        for res in resources:
            ids = [res.namespace, res.name]
            total = 0
            for phase in PHASES:
                ready.add_metric([*ids, phase], 1.0 if phase == res.phase else 0.0)
            if res.last_reconcile is not None:
                last_reconcile.add_metric(ids, res.last_reconcile)
            interval.add_metric(ids, float(res.interval_seconds))
            for tgt in res.targets:
                for kind in DRIFT_KINDS:
                    value = tgt.drift.get(kind, 0)
                    total += value
                    drift.add_metric([*ids, tgt.target, kind], float(value))
                managed.add_metric([*ids, tgt.target], float(tgt.managed_rules))
                world_open.add_metric([*ids, tgt.target], float(tgt.world_open_sensitive))
                errors.add_metric([*ids, tgt.target], 1.0 if tgt.error else 0.0)
                if tgt.last_check is not None:
                    last_check.add_metric([*ids, tgt.target], tgt.last_check)
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
        )


SNAPSHOTS = _SnapshotCollector()
REGISTRY.register(SNAPSHOTS)


def recorder_for(target: str) -> _Recorder:
    """An ``ApiCallRecorder`` for one target's adapter."""
    return _Recorder(target)


class _Recorder:
    def __init__(self, target: str) -> None:
        self.target = target

    def __call__(self, operation: str, outcome: str) -> None:
        API_CALLS.labels(target=self.target, operation=operation, outcome=outcome).inc()
