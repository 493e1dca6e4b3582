"""The leader election's state machine (pure): acquire, renew, lose, expiry by the observer's
own clock, conflicts, release. Times are seconds on a clock the test moves; the record's own
times are never compared (they are another machine's)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server_hardening.election import (
    Elector,
    Kind,
    LeaseRecord,
    LeaseTimings,
    Observed,
    TimingError,
)

#: client-go's defaults (kube-controller-manager's, kube-scheduler's): the reference the
#: state machine is checked against; the product's own defaults are tested apart.
T = LeaseTimings(15.0, 10.0, 2.0)


def held_by(holder: str, *, renew: str = "r1", transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder, 15, "a0", renew, transitions)


def leading(identity: str = "me", at: float = 0.0) -> tuple[Elector, LeaseRecord]:
    """A candidate that has just acquired a free Lease at ``at``."""
    elector = Elector(identity, T)
    step = elector.decide(at, Observed(None), "w0")
    assert step.kind is Kind.CREATE and step.record is not None
    elector.written(at, at + 0.1, step.record, "1")
    return elector, step.record


def test_the_defaults_are_shorter_than_client_gos_in_its_proportions() -> None:
    """8/5/1 s: the renew deadline is five retry periods, as client-go's 10/2 s, and the holder
    stops 3 s before anyone may take over (client-go: 5 s)."""
    d = LeaseTimings()
    assert (d.lease_duration, d.renew_deadline, d.retry_period) == (8.0, 5.0, 1.0)
    assert Elector("me").timings == d


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "names"),
    [
        (10, 10, 2, "shorter than the lease duration"),
        (10, 12, 2, "shorter than the lease duration"),
        (15, 2, 2, "1.2 x the retry period"),
        (15.5, 10, 2, "whole seconds"),
        (0, 0, 0, "at least 1 s"),
        (15, 10, 0, "at least 1 s"),
    ],
)
def test_timings_that_cannot_keep_one_leader_are_refused(
    lease: float, renew: float, retry: float, names: str
) -> None:
    with pytest.raises(TimingError, match=names):
        LeaseTimings(lease, renew, retry)


def test_a_missing_lease_is_created_with_this_candidate_as_holder() -> None:
    step = Elector("me", T).decide(0.0, Observed(None), "2026-01-01T00:00:00.000000Z")
    assert step.kind is Kind.CREATE
    assert step.record == LeaseRecord(
        "me", 15, "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:00.000000Z", 0
    )


def test_a_created_lease_makes_the_candidate_the_leader_until_its_renew_deadline() -> None:
    elector, _ = leading(at=100.0)
    assert elector.leading
    assert elector.act_until() == 110.0  # from when the write was sent, not answered
    assert not elector.lost(109.9)
    assert elector.lost(110.0)
    assert not elector.leading


def test_a_lease_held_by_another_is_waited_for_until_it_expires_by_the_observers_clock() -> None:
    elector = Elector("me", T)
    record = held_by("other")
    assert elector.decide(50.0, Observed(record, "7"), "w").kind is Kind.WAIT
    # The same record, unchanged: the holder has not renewed. Held until 50 + 15 by our clock.
    assert elector.decide(64.9, Observed(record, "7"), "w").kind is Kind.WAIT
    step = elector.decide(65.0, Observed(record, "7"), "w1")
    assert step.kind is Kind.UPDATE
    assert step.resource_version == "7"  # conditional on what was read
    assert step.record == LeaseRecord("me", 15, "w1", "w1", 1)  # a transition


def test_the_records_own_times_are_never_trusted_only_their_change() -> None:
    """A record whose renewTime is far in the past (another clock) is still held for a full
    lease duration after it was first seen; one that keeps changing is never expired."""
    elector = Elector("me", T)
    stale = LeaseRecord("other", 15, "1970-01-01T00:00:00Z", "1970-01-01T00:00:00Z", 3)
    assert elector.decide(0.0, Observed(stale, "1"), "w").kind is Kind.WAIT
    assert elector.decide(14.0, Observed(stale, "1"), "w").kind is Kind.WAIT
    for now in range(2, 100, 2):
        renewed = held_by("other", renew=f"r{now}")
        assert elector.decide(float(now), Observed(renewed, str(now)), "w").kind is Kind.WAIT


def test_the_lease_duration_is_the_records_not_the_candidates() -> None:
    """A holder configured with a longer lease is waited for that long (client-go reads the
    record's leaseDurationSeconds)."""
    elector = Elector("me", T)
    record = LeaseRecord("other", 60, "a", "r", 0)
    assert elector.decide(0.0, Observed(record, "1"), "w").kind is Kind.WAIT
    assert elector.decide(59.0, Observed(record, "1"), "w").kind is Kind.WAIT
    assert elector.decide(60.0, Observed(record, "1"), "w").kind is Kind.UPDATE


def test_a_candidate_tries_at_the_instant_the_lease_it_waits_for_expires() -> None:
    """Not up to a jittered retry period later, as client-go would; and never earlier."""
    elector = Elector("me", T)
    record = held_by("other")
    elector.decide(50.0, Observed(record, "7"), "w")  # first seen at 50: held until 65
    assert elector.expires_at() == 65.0
    assert elector.next_try(60.0, 0.0) == 62.0  # the jittered try comes first
    assert elector.next_try(64.0, 0.9) == 65.0  # instead of 64 + 2 x 2.08
    assert elector.decide(64.0, Observed(record, "7"), "w").kind is Kind.WAIT
    assert elector.decide(65.0, Observed(record, "7"), "w1").kind is Kind.UPDATE


def test_a_renewal_seen_moves_the_instant_of_the_next_try() -> None:
    elector = Elector("me", T)
    elector.decide(50.0, Observed(held_by("other"), "7"), "w")
    elector.decide(63.0, Observed(held_by("other", renew="r2"), "8"), "w")  # renewed
    assert elector.expires_at() == 78.0
    assert elector.next_try(64.0, 0.9) == pytest.approx(64.0 + 2.0 * (1 + 1.2 * 0.9))


def test_without_another_holder_a_candidate_keeps_its_jittered_tries() -> None:
    for seen in (None, LeaseRecord("", 1, "w", "w", 4), LeaseRecord("me", 15, "w", "w", 4)):
        elector = Elector("me", T)
        if seen is not None:
            elector.observe(0.0, Observed(seen, "3"))
        assert elector.expires_at() is None
        assert elector.next_try(0.0, 0.5) == pytest.approx(2.0 * (1 + 1.2 * 0.5))


def test_a_released_lease_is_taken_at_once() -> None:
    elector = Elector("me", T)
    released = LeaseRecord("", 1, "w", "w", 4)
    step = elector.decide(0.0, Observed(released, "9"), "w2")
    assert step.kind is Kind.UPDATE
    assert step.record == LeaseRecord("me", 15, "w2", "w2", 5)


def test_the_holder_renews_from_its_last_write_keeping_acquire_time_and_transitions() -> None:
    elector, record = leading(at=0.0)
    step = elector.renew_step("w1")
    assert step is not None and step.kind is Kind.UPDATE
    assert step.resource_version == "1"
    assert step.record == LeaseRecord("me", 15, record.acquire_time, "w1", record.transitions)
    elector.written(2.0, 2.05, step.record, "2")
    assert elector.act_until() == 12.0
    assert elector.renew_step("w2") is not None
    assert elector.renew_step("w2").resource_version == "2"  # type: ignore[union-attr]


def test_a_candidate_has_no_renewal_and_no_time_to_act() -> None:
    elector = Elector("me", T)
    assert elector.renew_step("w") is None
    assert elector.act_until() == float("-inf")
    assert not elector.lost(1e9)  # never led: nothing to lose


def test_a_conflicting_renewal_makes_the_next_try_read_first() -> None:
    elector, _ = leading(at=0.0)
    elector.refused()
    assert elector.renew_step("w") is None  # never an unconditional update
    assert elector.leading  # until its deadline
    # The read shows the Lease still ours (someone touched it otherwise): renew from it.
    mine = LeaseRecord("me", 15, "w0", "w0", 0)
    step = elector.decide(3.0, Observed(mine, "5"), "w3")
    assert step.kind is Kind.UPDATE and step.resource_version == "5"


def test_a_holder_that_reads_another_holder_has_lost_at_once() -> None:
    elector, _ = leading(at=0.0)
    elector.refused()
    step = elector.decide(3.0, Observed(held_by("other"), "6"), "w")
    assert step.kind is Kind.WAIT
    assert not elector.leading
    assert elector.lost(3.0)


def test_renewals_that_fail_until_the_deadline_lose_the_lease() -> None:
    elector, _ = leading(at=0.0)
    for now in (2.0, 4.0, 6.0, 8.0):  # every write and read fails
        elector.refused()
        assert not elector.lost(now)
        assert elector.leading
    assert elector.lost(10.0)
    assert elector.lost(11.0)  # stays lost


def test_a_lost_leader_stops_before_anyone_may_acquire() -> None:
    """The holder renews at t=0 (sent) and then nothing gets through. An observer that saw the
    renewal at the earliest possible moment (t=0) may acquire at 15; the holder stopped at 10."""
    holder, record = leading("a", at=0.0)
    observer = Elector("b", T)
    assert observer.decide(0.0, Observed(record, "1"), "w").kind is Kind.WAIT
    first_allowed = next(
        t / 10
        for t in range(0, 400)
        if observer.decide(t / 10, Observed(record, "1"), "w").kind is Kind.UPDATE
    )
    stopped = next(t / 10 for t in range(0, 400) if holder.lost(t / 10))
    assert stopped == 10.0
    assert first_allowed == 15.0
    assert stopped + (T.lease_duration - T.renew_deadline) == first_allowed


@given(
    sent=st.floats(0, 1000),
    latency=st.floats(0, 30),
    seen_after=st.floats(0, 30),
)
def test_the_holders_deadline_always_ends_before_the_observers_expiry(
    sent: float, latency: float, seen_after: float
) -> None:
    """However slow the answer (``latency``) and however late the observer reads the renewal
    (``seen_after`` its sending, at the earliest when it was sent), the holder stops acting
    ``lease - renew`` seconds before the observer may take over."""
    holder = Elector("a", T)
    create = holder.decide(sent, Observed(None), "w")
    assert create.record is not None
    holder.written(sent, sent + latency, create.record, "1")
    observer = Elector("b", T)
    observer.decide(sent + seen_after, Observed(create.record, "1"), "w")
    assert observer.observed_at is not None
    expiry = observer.observed_at + create.record.lease_duration_seconds
    assert holder.act_until() <= expiry - (T.lease_duration - T.renew_deadline) + 1e-9


def test_a_pod_restarted_under_the_same_name_renews_its_own_lease_at_once() -> None:
    elector = Elector("me", T)
    mine = LeaseRecord("me", 15, "a0", "r9", 2)
    step = elector.decide(0.0, Observed(mine, "3"), "w")
    assert step.kind is Kind.UPDATE
    assert step.record == LeaseRecord("me", 15, "a0", "w", 2)  # not a new transition


def test_two_candidates_that_see_an_expired_lease_both_try_and_the_version_decides() -> None:
    stale = held_by("gone")
    a, b = Elector("a", T), Elector("b", T)
    for elector in (a, b):
        elector.decide(0.0, Observed(stale, "4"), "w")
    step_a = a.decide(15.0, Observed(stale, "4"), "wa")
    step_b = b.decide(15.0, Observed(stale, "4"), "wb")
    assert step_a.resource_version == step_b.resource_version == "4"
    # The API server accepts a's update (version 5) and refuses b's (a conflict).
    assert step_a.record is not None
    a.written(15.0, 15.1, step_a.record, "5")
    b.refused()
    assert a.leading and not b.leading
    assert b.decide(17.0, Observed(step_a.record, "5"), "w").kind is Kind.WAIT


def test_a_write_of_another_holder_does_not_make_this_candidate_lead() -> None:
    elector = Elector("me", T)
    elector.written(0.0, 0.1, held_by("other"), "2")
    assert not elector.leading
    assert elector.holder == "other"


def test_tries_come_every_retry_period_for_the_holder_and_jittered_for_a_candidate() -> None:
    elector = Elector("me", T)
    assert elector.next_try(0.0, 0.0) == 2.0
    assert elector.next_try(0.0, 0.5) == pytest.approx(2.0 * (1 + 1.2 * 0.5))
    holder, _ = leading(at=0.0)
    assert holder.next_try(1.0, 0.9) == 3.0
    # Never past the deadline: the holder must notice it on time.
    assert holder.next_try(9.0, 0.0) == 10.0


def test_release_writes_an_empty_holder_for_one_second_and_keeps_the_transitions() -> None:
    elector = Elector("me", T)
    stale = held_by("old", transitions=6)
    elector.decide(0.0, Observed(stale, "1"), "w")
    step = elector.decide(15.0, Observed(stale, "1"), "w1")
    assert step.record is not None
    elector.written(15.0, 15.1, step.record, "2")
    release = elector.release_step("w9")
    assert release is not None and release.kind is Kind.UPDATE
    assert release.resource_version == "2"
    assert release.record == LeaseRecord("", 1, "w9", "w9", 7)
    assert not elector.leading
    assert elector.act_until() == float("-inf")


def test_only_the_holder_releases() -> None:
    assert Elector("me", T).release_step("w") is None
    elector = Elector("me", T)
    elector.decide(0.0, Observed(held_by("other"), "1"), "w")
    assert elector.release_step("w") is None


def test_an_identity_is_required() -> None:
    with pytest.raises(ValueError, match="identity"):
        Elector("")
