"""The metrics module: episodes counted once, check series that age instead of vanishing."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from server_hardening.metrics import (
    DetectionCounter,
    ResourceSnapshot,
    TargetSnapshot,
    _SnapshotCollector,
)


def counter() -> tuple[DetectionCounter, CollectorRegistry]:
    registry = CollectorRegistry()
    total = Counter("t_drift_detected", "test", ["target", "kind"], registry=registry)
    return DetectionCounter(total), registry


def value(registry: CollectorRegistry, target: str, kind: str) -> float:
    got = registry.get_sample_value("t_drift_detected_total", {"target": target, "kind": kind})
    return got or 0.0


def test_a_persistent_unmanaged_rule_counts_once_however_many_checks_see_it() -> None:
    detections, registry = counter()
    for _ in range(5):
        detections.observe("ns", "r", "aws", {"unmanaged_widening": ["sgr-1", "sgr-2"]})
    assert value(registry, "aws", "unmanaged_widening") == 2


def test_a_new_item_counts_even_when_the_number_of_drifted_items_stays_the_same() -> None:
    detections, registry = counter()
    detections.observe("ns", "r", "aws", {"unmanaged_widening": ["sgr-1"]})
    new = detections.observe("ns", "r", "aws", {"unmanaged_widening": ["sgr-2"]})
    assert new == {"unmanaged_widening": 1}
    assert value(registry, "aws", "unmanaged_widening") == 2


def test_drift_repaired_then_back_is_a_second_episode() -> None:
    detections, registry = counter()
    detections.observe("ns", "r", "kubernetes", {"missing": ["svh-default-deny"]})
    detections.observe("ns", "r", "kubernetes", {})
    detections.observe("ns", "r", "kubernetes", {"missing": ["svh-default-deny"]})
    assert value(registry, "kubernetes", "missing") == 2


def test_resources_and_targets_are_counted_apart_and_forgetting_resets_one() -> None:
    detections, registry = counter()
    detections.observe("a", "r", "aws", {"modified": ["x"]})
    detections.observe("b", "r", "aws", {"modified": ["x"]})
    assert value(registry, "aws", "modified") == 2
    detections.forget("a", "r")
    detections.observe("a", "r", "aws", {"modified": ["x"]})
    detections.observe("b", "r", "aws", {"modified": ["x"]})
    assert value(registry, "aws", "modified") == 3


def test_an_unknown_kind_is_refused() -> None:
    detections, _ = counter()
    try:
        detections.observe("ns", "r", "aws", {"widening": ["x"]})
    except ValueError as exc:
        assert "widening" in str(exc)
    else:
        raise AssertionError("an unknown kind was accepted")


def _samples(collector: _SnapshotCollector, name: str) -> dict[tuple[str, ...], float]:
    out = {}
    for family in collector.collect():
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def snapshot(phase: str, *targets: TargetSnapshot) -> ResourceSnapshot:
    return ResourceSnapshot("ns", "r", phase, None, 60, targets)


def target(last_check: float | None, error: bool = False) -> TargetSnapshot:
    return TargetSnapshot("aws", {}, 3, 0, error, last_check)


def test_the_last_check_survives_a_failed_pass_and_an_invalid_spec() -> None:
    collector = _SnapshotCollector()
    key = (("name", "r"), ("namespace", "ns"), ("target", "aws"))
    collector.update(snapshot("Enforced", target(1000.0)))
    collector.update(snapshot("Error", target(None, error=True)))
    assert _samples(collector, "server_hardening_last_drift_check_timestamp_seconds") == {
        key: 1000.0
    }
    collector.update(snapshot("Invalid"))
    assert _samples(collector, "server_hardening_last_drift_check_timestamp_seconds") == {
        key: 1000.0
    }
    assert _samples(collector, "server_hardening_spec_valid") == {
        (("name", "r"), ("namespace", "ns")): 0.0
    }
    collector.forget("ns", "r")
    assert _samples(collector, "server_hardening_last_drift_check_timestamp_seconds") == {}


def test_the_summed_drift_gauge_has_no_total_suffix() -> None:
    collector = _SnapshotCollector()
    collector.update(snapshot("Drifted", TargetSnapshot("aws", {"missing": 2}, 3, 0, False, 1.0)))
    assert _samples(collector, "server_hardening_resource_drift") == {
        (("name", "r"), ("namespace", "ns")): 2.0
    }
    assert _samples(collector, "server_hardening_drift_total") == {}
