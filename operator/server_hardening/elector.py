"""The leader election's loop: reads and writes the Lease on a thread of its own, and tells
the runner when this replica starts leading and when it must stop.

The decisions are :class:`server_hardening.election.Elector`'s (pure); the calls are
:class:`server_hardening.targets.lease.LeaseClient`'s. This module owns the clock and the
thread, and keeps the process's write gate (:mod:`server_hardening.targets.gate`) open exactly
until the holder's renew deadline, so a replica that stopped renewing (its thread stuck, the
API server unreachable) writes nothing past it, whatever else happens.

Every call is bounded: the holder's by the time left until its deadline (so it notices the
deadline on time, as client-go's renew context does), a candidate's by the renew deadline.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable

from server_hardening.election import Elector, Kind
from server_hardening.targets import gate
from server_hardening.targets.lease import LeaseClient, LeaseConflict, LeaseUnavailable

log = logging.getLogger("server_hardening")

#: The shortest timeout a call gets (a holder close to its deadline still sends its renewal).
MIN_CALL_TIMEOUT = 0.2
#: How long a release (one update, at a graceful stop) may take.
RELEASE_TIMEOUT = 5.0


def wall_now() -> str:
    """The wall-clock time as a Lease's MicroTime."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElection:
    """Runs :meth:`run` on a thread. ``on_started`` is called (on that thread) once the Lease is
    first held; ``on_lost`` once leadership is lost (the renew deadline passed, or another
    holder was seen): by then the gate is closed, and the runner ends the process."""

    def __init__(
        self,
        client: LeaseClient,
        elector: Elector,
        *,
        on_started: Callable[[], None],
        on_lost: Callable[[str], None],
        writes: gate.WriteGate = gate.WRITES,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], str] = wall_now,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.elector = elector
        self.on_started = on_started
        self.on_lost = on_lost
        self.writes = writes
        self.clock = clock
        self.wall = wall
        self.jitter = jitter
        self.stopping = threading.Event()
        self.standing_down = False
        self.thread: threading.Thread | None = None
        #: When the API server last answered a Lease call (this clock; until the first answer,
        #: when the election was made), whether it ever has, and the last error.
        self.last_contact = clock()
        self.answered = False
        self.error = ""
        self.reported_holder = ""

    @property
    def leading(self) -> bool:
        return self.elector.leading

    @property
    def holder(self) -> str:
        return self.elector.holder

    def start(self) -> LeaderElection:
        self.writes.elect()
        self.thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        self.thread.start()
        return self

    def run(self) -> None:
        log.info("leader election: %s as %s", self.client.describe(), self.elector.identity)
        while not self.stopping.is_set():
            self.try_once()
            if self._check_lost():
                return
            now = self.clock()
            self.stopping.wait(max(0.0, self.elector.next_try(now, self.jitter()) - now))
            if self._check_lost():
                return

    def _check_lost(self) -> bool:
        if not self.elector.lost(self.clock()):
            return False
        self.writes.close()
        why = (
            f"the Lease is held by {self.elector.holder}"
            if self.elector.holder and self.elector.holder != self.elector.identity
            else f"not renewed within {self.elector.timings.renew_deadline:g}s ({self.error})"
        )
        self.on_lost(why)
        return True

    def try_once(self) -> None:
        """One try: the holder renews; a candidate reads the Lease and takes it if it may."""
        timings = self.elector.timings
        step = self.elector.renew_step(self.wall())
        if step is None:
            try:
                seen = self.client.get(timeout=self._timeout())
            except LeaseUnavailable as exc:
                self._failed(str(exc))
                return
            self.last_contact = self.clock()
            self.answered = True
            step = self.elector.decide(self.clock(), seen, self.wall())
            self._report_holder()
        if step.kind is Kind.WAIT or step.record is None:
            return
        sent = self.clock()
        try:
            if step.kind is Kind.CREATE:
                version = self.client.create(step.record, timeout=self._timeout())
            else:
                version = self.client.update(
                    step.record, step.resource_version, timeout=self._timeout()
                )
        except LeaseConflict as exc:
            self.elector.refused()
            self.last_contact = self.clock()
            self._failed(str(exc), level=logging.DEBUG)
            return
        except LeaseUnavailable as exc:
            self.elector.refused()
            self._failed(str(exc))
            return
        answered = self.clock()
        self.last_contact = answered
        self.error = ""
        was_leading = self.elector.leading
        self.elector.written(sent, answered, step.record, version)
        if not self.elector.leading:
            return
        if not self.standing_down:
            self.writes.open_until(self.elector.act_until())
        self._report_holder()
        if not was_leading:
            log.info(
                "leader election: acquired %s (renewing every %gs)",
                self.client.describe(),
                timings.retry_period,
            )
            self.on_started()

    def _timeout(self) -> float:
        if self.elector.leading:
            left = self.elector.act_until() - self.clock()
            return max(MIN_CALL_TIMEOUT, left)
        return self.elector.timings.renew_deadline

    def _failed(self, why: str, *, level: int = logging.WARNING) -> None:
        self.error = why
        log.log(level, "leader election: %s", why)

    def _report_holder(self) -> None:
        holder = self.elector.holder
        if holder != self.reported_holder:
            self.reported_holder = holder
            log.info("leader election: the leader is %s", holder or "(none)")

    def stand_down(self) -> None:
        """A graceful stop began: write nothing more (the gate closes and renewals no longer
        open it), while the Lease is still renewed until kopf has stopped and it is released:
        nobody acts in between, and nobody may take over before the release."""
        self.standing_down = True
        self.writes.close()

    def stop(self, timeout: float) -> None:
        """Stop trying (a graceful stop); the thread ends after its current call."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout)

    def release(self) -> bool:
        """Give the Lease up (client-go's ReleaseOnCancel): after :meth:`stop`, once this
        replica has stopped acting. Writes close first. True when released (or not held)."""
        self.writes.close()
        step = self.elector.release_step(self.wall())
        if step is None or step.record is None:
            return True
        try:
            self.client.update(step.record, step.resource_version, timeout=RELEASE_TIMEOUT)
        except (LeaseConflict, LeaseUnavailable) as exc:
            log.warning("leader election: could not release %s: %s", self.client.describe(), exc)
            return False
        log.info("leader election: released %s", self.client.describe())
        return True
