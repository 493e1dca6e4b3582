"""The election's loop (server_hardening.elector) over a Lease kept in memory the way the API
server keeps it (resourceVersions, conflicts), on a clock the test moves; and the write gate
it keeps."""

from __future__ import annotations

import math
from typing import Any

import pytest
import urllib3

from server_hardening.election import JITTER_FACTOR, Elector, LeaseRecord, LeaseTimings, Observed
from server_hardening.elector import LeaderElection
from server_hardening.targets import gate
from server_hardening.targets.gate import NotLeading, WriteGate
from server_hardening.targets.kubeapi import KubeApi
from server_hardening.targets.kubeconfig import Credentials
from server_hardening.targets.lease import LeaseClient, LeaseConflict, LeaseUnavailable
from server_hardening.targets.retry import Retrier, Verdict


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class MemoryLease:
    """One Lease with the API server's optimistic concurrency; ``down`` fails every call."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.record: LeaseRecord | None = None
        self.version = 0
        self.down = False
        self.writes: list[tuple[float, str, LeaseRecord]] = []
        self.reads: list[tuple[float, str]] = []

    def describe(self) -> str:
        return "Lease ns/lease"

    def _check(self) -> None:
        if self.down:
            raise LeaseUnavailable("read Lease ns/lease: the API server is down")

    def get(self, *, timeout: float) -> Observed:
        self._check()
        self.reads.append((self.clock(), str(self.version)))
        return Observed(self.record, str(self.version) if self.record else "")

    def create(self, record: LeaseRecord, *, timeout: float) -> str:
        self._check()
        if self.record is not None:
            raise LeaseConflict("create Lease ns/lease: already exists")
        return self._store(record)

    def update(self, record: LeaseRecord, resource_version: str, *, timeout: float) -> str:
        self._check()
        if resource_version != str(self.version):
            raise LeaseConflict("update Lease ns/lease: the object has been modified")
        return self._store(record)

    def _store(self, record: LeaseRecord) -> str:
        self.record = record
        self.version += 1
        self.writes.append((self.clock(), str(self.version), record))
        return str(self.version)


#: client-go's timings, which the tests below count in; the defaults are scheduled apart.
CLIENT_GO = LeaseTimings(15.0, 10.0, 2.0)


class Candidate:
    def __init__(
        self,
        identity: str,
        lease: MemoryLease,
        clock: Clock,
        timings: LeaseTimings = CLIENT_GO,
        jitter: float = 0.0,
    ) -> None:
        self.started = 0
        self.lost: list[str] = []
        self.gate = WriteGate(clock)
        self.clock = clock
        self.election = LeaderElection(
            lease,  # type: ignore[arg-type]
            Elector(identity, timings),
            on_started=self._started,
            on_lost=self.lost.append,
            writes=self.gate,
            clock=clock,
            wall=lambda: f"t{clock():.1f}",
            jitter=lambda: jitter,
        )
        self.gate.elect()

    def _started(self) -> None:
        self.started += 1

    def tick(self) -> None:
        """One turn of the loop: a try, then the loss check."""
        self.election.try_once()
        self.election._check_lost()

    def due(self) -> float:
        """When the loop (``LeaderElection.run``) would try next."""
        return self.election.elector.next_try(self.clock(), self.election.jitter())


def run_loops(clock: Clock, candidates: list[Candidate], until: float) -> None:
    """The candidates' loops as ``LeaderElection.run`` schedules them, on the test's clock."""
    due = {id(c): clock() for c in candidates}
    while True:
        first = min(candidates, key=lambda c: due[id(c)])
        if due[id(first)] > until:
            clock.now = until
            return
        clock.now = due[id(first)]
        first.tick()
        due[id(first)] = first.due()


def test_a_free_lease_is_acquired_once_and_the_gate_opens_until_the_renew_deadline() -> None:
    clock = Clock()
    lease = MemoryLease(clock)
    a = Candidate("a", lease, clock)
    assert not a.gate.is_open()
    a.tick()
    assert lease.record is not None and lease.record.holder == "a"
    assert a.started == 1
    assert a.gate.is_open()
    clock.now += 9.9
    assert a.gate.is_open()
    clock.now += 0.1
    assert not a.gate.is_open()  # by time, without the loop's help


def test_the_holder_renews_without_reading_and_keeps_the_gate_open() -> None:
    clock = Clock()
    lease = MemoryLease(clock)
    a = Candidate("a", lease, clock)
    a.tick()
    for _ in range(5):
        clock.now += 2.0
        a.tick()
    assert [r.holder for _, _, r in lease.writes] == ["a"] * 6
    assert len({r.renew_time for _, _, r in lease.writes}) == 6
    assert a.started == 1  # started once, not at every renewal
    assert a.gate.is_open() and not a.lost


def test_a_standby_waits_a_full_lease_after_the_last_change_it_saw_then_takes_over() -> None:
    clock = Clock()
    lease = MemoryLease(clock)
    a, b = Candidate("a", lease, clock), Candidate("b", lease, clock)
    a.tick()
    b.tick()
    assert b.started == 0 and not b.gate.is_open()
    assert b.election.holder == "a"
    # a dies (SIGKILL: no release). b keeps trying every 2 s.
    crashed = clock.now
    while b.started == 0:
        clock.now += 2.0
        b.tick()
        assert not a.lost  # a is dead: nobody runs its loop
    assert clock.now - crashed == 16.0  # first try at or after 15 s of silence
    assert lease.record is not None
    assert lease.record.holder == "b" and lease.record.transitions == 1
    assert b.gate.is_open()


@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999])
@pytest.mark.parametrize("killed_after", [10.0, 10.3, 10.9])
def test_with_the_defaults_a_standby_takes_over_at_the_expiry_it_counts_from_the_last_renewal(
    jitter: float, killed_after: float
) -> None:
    """The loops as they run, the holder killed between two renewals: the standby takes over
    exactly one lease duration after it first read the last renewal, which it read at most one
    jittered retry period late; the dead holder's gate had closed 3 s before."""
    clock = Clock()
    lease = MemoryLease(clock)
    timings = LeaseTimings()
    a = Candidate("a", lease, clock, timings, jitter)
    b = Candidate("b", lease, clock, timings, jitter)
    run_loops(clock, [a, b], clock.now + killed_after)  # a leads and renews; then a is killed
    assert a.started == 1 and b.started == 0
    renewed_at, last = max((at, v) for at, v, record in lease.writes if record.holder == "a")
    gate_closed = a.election.elector.act_until()
    run_loops(clock, [b], clock.now + 30.0)
    assert b.started == 1
    taken = next(at for at, _, record in lease.writes if record.holder == "b")
    seen = min(at for at, version in lease.reads if version == last)
    assert seen - renewed_at <= timings.retry_period * (1 + JITTER_FACTOR * jitter)
    assert taken == seen + timings.lease_duration  # at the instant, not a jittered try after
    assert gate_closed <= taken - (timings.lease_duration - timings.renew_deadline)


def test_a_holder_cut_off_from_the_api_server_stops_before_the_standby_may_take_over() -> None:
    clock = Clock()
    lease = MemoryLease(clock)
    a, b = Candidate("a", lease, clock), Candidate("b", lease, clock)
    a.tick()
    renewed = clock.now
    b.tick()  # b sees a's last renewal at once: the earliest it can expire for b
    lease.down = True  # from here a cannot renew
    while not a.lost:
        clock.now += 0.5
        a.tick()
    stopped = clock.now
    assert stopped - renewed == 10.0  # its renew deadline, counted from the renewal sent
    assert a.lost[0].startswith("not renewed within 10s")
    assert not a.gate.is_open()
    lease.down = False  # b can reach the API server again
    while b.started == 0:
        clock.now += 0.5
        b.tick()
    assert clock.now - renewed >= 15.0
    assert clock.now - stopped >= 5.0  # lease duration - renew deadline


def test_a_holder_that_finds_another_holder_loses_at_once() -> None:
    clock = Clock()
    lease = MemoryLease(clock)
    a = Candidate("a", lease, clock)
    a.tick()
    # Someone else wrote the Lease (an operator's hand, or a partition healed late).
    lease.record = LeaseRecord("intruder", 15, "x", "x", 9)
    lease.version += 1
    clock.now += 2.0
    a.tick()  # the renewal conflicts
    assert not a.lost
    clock.now += 2.0
    a.tick()  # the read shows the other holder
    assert a.lost == ["the Lease is held by intruder"]
    assert not a.gate.is_open()


def test_a_lost_race_for_an_expired_lease_is_a_conflict_not_two_leaders() -> None:
    clock = Clock()
    lease = MemoryLease(clock)
    lease.record = LeaseRecord("gone", 15, "x", "x", 0)
    lease.version = 1
    b, c = Candidate("b", lease, clock), Candidate("c", lease, clock)
    b.tick()
    c.tick()
    clock.now += 15.0
    # Both read version 1 and decide to take it; b's update lands first.
    step_b = b.election.elector.decide(clock.now, lease.get(timeout=1), "tb")
    step_c = c.election.elector.decide(clock.now, lease.get(timeout=1), "tc")
    assert step_b.record is not None and step_c.record is not None
    lease.update(step_b.record, step_b.resource_version, timeout=1)
    with pytest.raises(LeaseConflict):
        lease.update(step_c.record, step_c.resource_version, timeout=1)


def test_release_hands_over_at_the_standbys_next_try() -> None:
    clock = Clock()
    lease = MemoryLease(clock)
    a, b = Candidate("a", lease, clock), Candidate("b", lease, clock)
    a.tick()
    b.tick()
    a.election.stop(timeout=0)
    assert a.election.release()
    assert not a.gate.is_open()
    assert lease.record is not None
    assert (lease.record.holder, lease.record.lease_duration_seconds) == ("", 1)
    clock.now += 2.0
    b.tick()
    assert b.started == 1
    assert lease.record.holder == "b"


def test_a_leader_standing_down_writes_nothing_more_but_keeps_the_lease_until_released() -> None:
    clock = Clock()
    lease = MemoryLease(clock)
    a, b = Candidate("a", lease, clock), Candidate("b", lease, clock)
    a.tick()
    b.tick()
    a.election.stand_down()
    assert not a.gate.is_open()
    clock.now += 2.0
    a.tick()  # renewed, so nobody may take over yet, but the gate stays shut
    assert lease.record is not None and lease.record.holder.startswith("a")
    assert not a.gate.is_open()
    clock.now += 14.0
    b.tick()
    assert b.started == 0  # a's renewal 14 s ago still holds for b
    assert a.election.release()
    clock.now += 2.0
    b.tick()
    assert b.started == 1


def test_an_unreachable_api_server_is_reported_and_the_last_contact_kept() -> None:
    clock = Clock()
    lease = MemoryLease(clock)
    a, b = Candidate("a", lease, clock), Candidate("b", lease, clock)
    a.tick()
    b.tick()
    contact = b.election.last_contact
    lease.down = True
    clock.now += 5
    b.tick()
    assert b.election.last_contact == contact
    assert "the API server is down" in b.election.error
    assert b.started == 0


# -- the write gate on the operator's write paths --------------------------------------------


@pytest.fixture
def closed_gate() -> Any:
    gate.WRITES.elect()
    yield gate.WRITES
    gate.WRITES.open_until(math.inf)


def test_a_closed_gate_refuses_every_kubernetes_write_before_it_is_sent(closed_gate: Any) -> None:
    # Nothing listens on port 9: a request that got past the gate would fail to connect.
    api = KubeApi(Credentials(server="https://127.0.0.1:9"))
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        with pytest.raises(NotLeading, match=f"{method} /api/v1/namespaces/x/events"):
            api.request(method, "/api/v1/namespaces/x/events", body={})


def test_a_closed_gate_lets_reads_and_the_elections_own_client_through(closed_gate: Any) -> None:
    api = KubeApi(Credentials(server="https://127.0.0.1:9"), read_timeout=0.5)
    with pytest.raises(urllib3.exceptions.NewConnectionError):  # it went out, found nobody
        api.get("/readyz")
    lease = LeaseClient(api.fork(gated=False), "ns", "lease")
    with pytest.raises(LeaseUnavailable):  # sent, not refused by the gate
        lease.create(LeaseRecord("me", 15), timeout=0.5)


def test_a_closed_gate_stops_every_cloud_call(closed_gate: Any) -> None:
    calls: list[str] = []
    retrier = Retrier()
    with pytest.raises(NotLeading, match="AuthorizeSecurityGroupIngress on sg-1"):
        retrier.call(
            "AuthorizeSecurityGroupIngress",
            "sg-1",
            lambda: calls.append("sent"),
            lambda exc: Verdict("error"),
        )
    assert calls == []


def test_without_leader_election_the_gate_is_open() -> None:
    assert WriteGate().is_open()
