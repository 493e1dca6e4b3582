"""The metrics module: episodes counted once, check series that age instead of vanishing."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, generate_latest

from server_hardening.metrics import (
    DRIFT_KINDS,
    VERDICTS,
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


def test_a_check_that_changed_nothing_moves_the_check_timestamps() -> None:
    """An unchanged Kubernetes-only check is skipped (nothing to compare) but still a check:
    ServerHardeningDriftCheckStale fires on the age of this series, so it must move."""
    collector = _SnapshotCollector()
    key = (("name", "r"), ("namespace", "ns"), ("target", "aws"))
    collector.update(ResourceSnapshot("ns", "r", "Enforced", 1000.0, 60, (target(1000.0),)))
    collector.touch("ns", "r", 1060.0)
    assert _samples(collector, "server_hardening_last_drift_check_timestamp_seconds") == {
        key: 1060.0
    }
    assert _samples(collector, "server_hardening_last_reconcile_timestamp_seconds") == {
        (("name", "r"), ("namespace", "ns")): 1060.0
    }
    collector.update(snapshot("Error", target(None, error=True)))
    collector.touch("ns", "r", 1120.0)  # a target that failed has no check to move
    assert _samples(collector, "server_hardening_last_drift_check_timestamp_seconds") == {
        key: 1060.0
    }


# Few names, so that updates, touches and forgets keep landing on the same resources; the
# odd characters are what the text format must escape.
_LABEL_TEXT = st.sampled_from(["circleci", 'q"uote', "back\\slash", "new\nline", "é"])
_TARGETS = st.builds(
    TargetSnapshot,
    target=st.sampled_from(["kubernetes", "aws", "gcp"]),
    drift=st.dictionaries(st.sampled_from(list(DRIFT_KINDS)), st.integers(0, 5), max_size=4),
    managed_rules=st.integers(0, 3000),
    world_open_sensitive=st.integers(0, 2),
    error=st.booleans(),
    last_check=st.one_of(st.none(), st.floats(0, 2e9, allow_nan=False)),
    exceptions_active=st.integers(0, 3),
    exceptions_expired=st.integers(0, 3),
    services_missing=st.integers(0, 2),
    rows=st.lists(
        st.tuples(st.sampled_from(["ALL-IN-1", "NOMAD-IN-1"]), st.sampled_from(VERDICTS)),
        max_size=2,
        unique_by=lambda r: r[0],
    ).map(tuple),
)
_SNAPSHOTS = st.builds(
    ResourceSnapshot,
    namespace=_LABEL_TEXT,
    name=_LABEL_TEXT,
    phase=st.sampled_from(["Enforced", "Drifted", "Error", "Invalid"]),
    last_reconcile=st.one_of(st.none(), st.floats(0, 2e9, allow_nan=False)),
    interval_seconds=st.integers(5, 86_400),
    targets=st.lists(_TARGETS, max_size=3, unique_by=lambda t: t.target).map(tuple),
    spec_valid=st.booleans(),
)
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("update"), _SNAPSHOTS),
        st.tuples(st.just("touch"), st.integers(0, 9), st.floats(0, 2e9, allow_nan=False)),
        st.tuples(st.just("forget"), st.integers(0, 9)),
        st.tuples(st.just("scrape")),
        st.tuples(st.just("scrape")),
    ),
    max_size=25,
)


@given(_STEPS)
def test_the_served_exposition_is_what_the_library_renders(steps: list[tuple[Any, ...]]) -> None:
    """/metrics is rendered by the operator (each resource's lines kept until its snapshot
    changes), not by prometheus_client's generic path: byte for byte the same text, through
    updates, touches, forgets and scrapes in any order."""
    collector = _SnapshotCollector()
    registry = CollectorRegistry()
    registry.register(collector)
    keys: list[tuple[str, str]] = []
    for step in steps:
        if step[0] == "update":
            collector.update(step[1])
            keys.append((step[1].namespace, step[1].name))
        elif step[0] == "touch" and keys:
            collector.touch(*keys[step[1] % len(keys)], step[2])
        elif step[0] == "forget" and keys:
            collector.forget(*keys[step[1] % len(keys)])
        else:
            assert collector.exposition() == generate_latest(registry)
    assert collector.exposition() == generate_latest(registry)


def test_each_guide_row_has_one_verdict_at_1_and_the_others_at_0() -> None:
    collector = _SnapshotCollector()
    target = TargetSnapshot("aws", {}, 0, 0, False, 1.0, rows=(("ALL-IN-1", "violated"),))
    collector.update(ResourceSnapshot("ns", "svh", "Drifted", 1.0, 60, (target,)))
    text = collector.exposition().decode()
    prefix = 'server_hardening_guide_row{name="svh",namespace="ns",row="ALL-IN-1",target="aws"'
    assert f'{prefix},verdict="violated"}} 1.0' in text
    assert f'{prefix},verdict="holds"}} 0.0' in text
    assert f'{prefix},verdict="unknown"}} 0.0' in text
