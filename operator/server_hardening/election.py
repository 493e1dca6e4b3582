"""Leader election on a Lease, as client-go's ``leaderelection`` does it: the pure state machine.

Pure: no I/O, no clock. Every decision takes ``now`` (a monotonic reading of the caller's own
clock, in seconds) and, where a record is written, ``wall`` (the wall-clock time written into
the record, for people reading it). The loop that reads and writes the Lease is
:mod:`server_hardening.elector`; the API calls are :mod:`server_hardening.targets.lease`.

What client-go does, and so this:

- A candidate never trusts the times written in the record (another machine's clock). It
  remembers *when it last saw the record change* (``observed_at``, by its own clock) and
  counts the lease as held until ``observed_at + leaseDurationSeconds`` (the record's
  duration). A holder that stops renewing stops changing the record, so after one lease
  duration of silence by the observer's own clock the lease is free. Skew between clocks does
  not matter; only their rates do (``lease_duration / renew_deadline`` is the tolerated ratio).
- A record with no holder is free at once (a graceful release writes that).
- The holder renews every ``retry_period``. When it has not renewed for ``renew_deadline`` it
  has lost the lease and stops acting. ``renew_deadline < lease_duration``, so it stops before
  anyone else may acquire. This machine is a little stricter than client-go: the deadline
  counts from when the last successful renewal was *sent*, not answered. The API server wrote
  that renewal after it was sent, so no observer can have seen it earlier: the holder's
  deadline ends at least ``lease_duration - renew_deadline`` (3 s by default) before any
  observer's expiry, however slow the answer was.
- Writes carry the ``resourceVersion`` they were decided on (optimistic concurrency): of two
  candidates that both see an expired lease, the API server accepts one update and refuses the
  other with a conflict.
- A holder seen in the record that is this candidate's own identity is this candidate (a pod
  restarted under the same name): it renews at once, as client-go's ``IsLeader`` does.
- Releasing (a graceful stop, client-go's ``ReleaseOnCancel``) writes an empty holder and a
  one-second duration, so a standby takes over at its next try instead of a lease later.

One departure from client-go, which only makes a takeover sooner, never earlier than allowed:
a candidate that waits for another's lease also tries at the instant that lease expires by its
own clock, when that comes before its next jittered try. client-go only looks at its jittered
tries, so a crashed holder's lease stays unclaimed for up to one more jittered retry period
(2 to 4.4 s with its timings) after it has expired. Which instant a candidate chooses to try
changes nothing about who may win: the expiry is still counted from when this candidate saw
the record change, and the write is still conditional on the version it read.

The default timings are shorter than client-go's 15/10/2 s (see :class:`LeaseTimings`): a
crashed leader is replaced 8 to 10.2 s after its last renewal instead of 15 to 23.8 s, at the
price of a leader that gives up after 5 s without a successful renewal (a slow or restarting
API server) instead of 10 s.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

#: client-go's jitter for a candidate's tries: each wait is ``retry_period * (1 + 1.2 * r)``
#: for r uniform in [0, 1), so candidates started together do not try in lockstep.
JITTER_FACTOR = 1.2


class TimingError(ValueError):
    """Lease timings that cannot guarantee one leader (the message names the setting)."""


@dataclass(frozen=True)
class LeaseTimings:
    """The election's timings, checked as client-go checks them.

    ``lease_duration``: seconds a candidate waits, after it last saw the record change, before
    it takes the lease over (written into the record as ``leaseDurationSeconds``). A crashed
    holder is replaced this long after a candidate last saw it renew, which is at most one
    jittered retry period (``retry_period * 2.2``) after its last renewal.
    ``renew_deadline``: seconds the holder keeps trying to renew before it gives up leading;
    smaller than ``lease_duration``, so it stops before anyone may take over, by a margin of
    ``lease_duration - renew_deadline`` seconds for a write that passed the gate just before.
    ``retry_period``: seconds between tries (renewals by the holder, reads by a candidate).

    The defaults, 8/5/1 s, replace a crashed holder 8 to 10.2 s after its last renewal
    (client-go's 15/10/2 s: 15 to 19.4 s, and up to 23.8 s without the try at the expiry, as
    client-go itself takes it). They keep client-go's proportions where they matter: the
    renew deadline is five retry periods, as in client-go, and the holder stops 3 s
    (client-go: 5 s) before anyone may take over. The price is a holder that gives up after
    5 s without a successful renewal (client-go: 10 s), and twice the Lease calls (the holder
    renews every second).
    """

    lease_duration: float = 8.0
    renew_deadline: float = 5.0
    retry_period: float = 1.0

    def __post_init__(self) -> None:
        # client-go's own checks (NewLeaderElector).
        if self.lease_duration < 1 or self.renew_deadline <= 0 or self.retry_period <= 0:
            raise TimingError(
                "lease duration must be at least 1 s, renew deadline and retry period above 0 "
                f"(got {self.lease_duration:g}, {self.renew_deadline:g}, {self.retry_period:g})"
            )
        if self.lease_duration != int(self.lease_duration):
            raise TimingError(
                f"lease duration {self.lease_duration:g}s: whole seconds "
                "(the Lease stores leaseDurationSeconds)"
            )
        if self.lease_duration <= self.renew_deadline:
            raise TimingError(
                f"renew deadline {self.renew_deadline:g}s must be shorter than the lease "
                f"duration {self.lease_duration:g}s (a holder that cannot renew must stop "
                "before another may take over)"
            )
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise TimingError(
                f"renew deadline {self.renew_deadline:g}s must be longer than "
                f"{JITTER_FACTOR:g} x the retry period {self.retry_period:g}s"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec as the election reads and writes it (times are the writer's wall
    clock, RFC 3339 with microseconds, for people: the election never compares them)."""

    holder: str = ""
    lease_duration_seconds: int = 0
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0


@dataclass(frozen=True)
class Observed:
    """A read of the Lease: its record and resourceVersion (None: there is no Lease)."""

    record: LeaseRecord | None
    resource_version: str = ""


class Kind(enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    WAIT = "wait"


@dataclass(frozen=True)
class Step:
    """What to do now: create the Lease, update it (from ``resource_version``), or wait
    (``reason`` says for whom)."""

    kind: Kind
    record: LeaseRecord | None = None
    resource_version: str = ""
    reason: str = ""


class Elector:
    """One candidate's view of one Lease. Feed it what was read and what the writes came to;
    it says what to write, whether this candidate leads, and until when it may act."""

    def __init__(self, identity: str, timings: LeaseTimings | None = None) -> None:
        if not identity:
            raise ValueError("a candidate needs a non-empty identity")
        self.identity = identity
        self.timings = timings or LeaseTimings()
        self.observed: LeaseRecord | None = None
        self.observed_version = ""
        #: When the observed record last changed, by this candidate's clock (None: never read).
        self.observed_at: float | None = None
        self.leading = False
        #: When the last successful acquire or renewal was sent (the deadline counts from it).
        self.renewed_sent_at: float | None = None

    # -- reading ---------------------------------------------------------------------------

    @property
    def holder(self) -> str:
        """The holder last seen (``""``: none, or not read yet)."""
        return self.observed.holder if self.observed else ""

    def observe(self, now: float, seen: Observed) -> None:
        """Take in a read. The record counts as changed (and its lease as fresh) only when it
        differs from the one seen before; a holder renewing writes a new renewTime each time."""
        if seen.record is None:
            return
        if seen.record != self.observed or self.observed_at is None:
            self.observed = seen.record
            self.observed_at = now
        self.observed_version = seen.resource_version
        if self.leading and seen.record.holder != self.identity:
            # Someone else holds it now (it expired for them): this candidate no longer leads.
            self.leading = False

    def held_by_another(self, now: float) -> bool:
        """The lease names another holder and has not expired by this candidate's clock."""
        expiry = self.expires_at()
        return expiry is not None and now < expiry

    # -- deciding --------------------------------------------------------------------------

    def decide(self, now: float, seen: Observed, wall: str) -> Step:
        """client-go's ``tryAcquireOrRenew`` after its read: create a missing Lease, wait for
        one held by another, else write this candidate in (acquire, or renew its own)."""
        self.observe(now, seen)
        if seen.record is None:
            return Step(Kind.CREATE, self._record(wall, acquired=wall, transitions=0))
        if self.held_by_another(now):
            return Step(Kind.WAIT, reason=f"held by {seen.record.holder}")
        return self._claim(wall, seen.record, seen.resource_version)

    def renew_step(self, wall: str) -> Step | None:
        """The holder's renewal from what it last wrote (client-go's fast path: no read
        first; a conflict means the Lease changed, and the next try reads it). None when this
        candidate does not lead."""
        if not self.leading or self.observed is None or not self.observed_version:
            return None  # never an update without a resourceVersion: it would not be conditional
        return self._claim(wall, self.observed, self.observed_version)

    def _claim(self, wall: str, current: LeaseRecord, version: str) -> Step:
        if current.holder == self.identity:
            record = self._record(
                wall, acquired=current.acquire_time or wall, transitions=current.transitions
            )
        else:
            record = self._record(wall, acquired=wall, transitions=current.transitions + 1)
        return Step(Kind.UPDATE, record, version)

    def _record(self, wall: str, *, acquired: str, transitions: int) -> LeaseRecord:
        return LeaseRecord(
            holder=self.identity,
            lease_duration_seconds=int(self.timings.lease_duration),
            acquire_time=acquired,
            renew_time=wall,
            transitions=transitions,
        )

    # -- outcomes --------------------------------------------------------------------------

    def written(self, sent: float, answered: float, record: LeaseRecord, version: str) -> None:
        """A create or update of ``record`` sent at ``sent`` was accepted at ``answered``
        (as client-go: the record is what was written, observed when the answer came)."""
        self.observed = record
        self.observed_version = version
        self.observed_at = answered
        if record.holder == self.identity:
            self.leading = True
            self.renewed_sent_at = sent

    def refused(self) -> None:
        """A write was refused (a conflict: the Lease changed since it was read) or failed.
        Nothing is known about the Lease now; the next try reads it. A holder keeps leading
        until its deadline (:meth:`lost`)."""
        self.observed_version = ""

    def lost(self, now: float) -> bool:
        """This candidate led and has not renewed within the renew deadline (or saw another
        holder): it must stop acting now. Once lost, it stays lost (the process restarts)."""
        if self.renewed_sent_at is None:
            return False
        if not self.leading:
            return True
        if now >= self.act_until():
            self.leading = False
            return True
        return False

    def act_until(self) -> float:
        """Until when (this candidate's clock) it may act: the renew deadline after the last
        renewal sent. Before it ever led: no time at all."""
        if not self.leading or self.renewed_sent_at is None:
            return float("-inf")
        return self.renewed_sent_at + self.timings.renew_deadline

    def expires_at(self) -> float | None:
        """When (this candidate's clock) the lease of the other holder it last saw expires,
        unless that holder renews first; None when no other holder is known."""
        record = self.observed
        if record is None or not record.holder or record.holder == self.identity:
            return None
        assert self.observed_at is not None
        return self.observed_at + record.lease_duration_seconds

    def next_try(self, now: float, jitter: float) -> float:
        """When to try next: the holder every retry period (after a failed renewal too, as
        client-go's poll does), a candidate after a jittered retry period (``jitter`` in
        [0, 1)), or at the instant the lease it waits for expires when that comes first. A
        holder never sleeps past its deadline: it must notice it at once."""
        period = self.timings.retry_period
        if self.leading:
            return min(now + period, self.act_until())
        jittered = now + period * (1.0 + JITTER_FACTOR * jitter)
        expiry = self.expires_at()
        if expiry is not None and now < expiry < jittered:
            return expiry
        return jittered

    def release_step(self, wall: str) -> Step | None:
        """client-go's ``release``: an empty holder, a one-second duration, the transitions
        kept; only by the holder (None otherwise). The caller has stopped acting first."""
        if self.observed is None or self.renewed_sent_at is None:
            return None
        if self.observed.holder != self.identity:
            return None
        record = replace(
            self.observed,
            holder="",
            lease_duration_seconds=1,
            acquire_time=wall,
            renew_time=wall,
        )
        version = self.observed_version
        self.leading = False
        self.renewed_sent_at = None
        return Step(Kind.UPDATE, record, version)
