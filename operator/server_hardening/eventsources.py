"""The cloud event sources: one reader per SQS queue or Pub/Sub subscription that specs name,
shared by every resource naming it, each in a thread of its own (the SDKs are synchronous).

A reader long-polls its source; when messages come it drains what is queued (up to
:data:`DRAIN_MAX` messages), asks :mod:`server_hardening.cloudevents` whom each concerns, requests
one check of each resource concerned (through the service's coalescing runner: a burst checks a
resource once, and whatever gates the service's writes gates these too), then deletes or
acknowledges the messages. Events are hints: a message lost, duplicated or reordered changes only
when a check runs; a message whose handling was cut short comes back (at-least-once delivery).

A source that cannot be read (a refused permission, a missing queue, an outage) is retried with
backoff (:data:`BACKOFF_FIRST` doubling to :data:`BACKOFF_MAX`); meanwhile its resources fall back
to the timer (the service shortens their interval), their ``EventsReceived`` condition is False
with the error, and ``server_hardening_event_source_up`` is 0.

Stopping is prompt: :meth:`EventSources.stop` returns at once; a reader in the middle of a long
poll ends when the poll returns (at most :data:`~.targets.aws.events.LONG_POLL_SECONDS`), and
handles nothing it received after the stop (those messages come back to the next reader).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from server_hardening import cloudevents, metrics
from server_hardening.cloudevents import AwsInterest, GcpInterest, Key
from server_hardening.model import ResourceRef, ServerHardeningSpec, configured_by_role
from server_hardening.ownership import gcp_name_prefix
from server_hardening.targets.base import TargetError

log = logging.getLogger("server_hardening")

POLL_WAIT_SECONDS = 20.0  # one long poll; an idle source costs 3 reads a minute
DRAIN_MAX = 100  # messages read before the checks they ask for are requested
# An empty answer sooner than this is followed by a pause until it has passed: a server that
# answers an empty pull at once (allowed for Pub/Sub's synchronous pull) is not polled in a loop.
MIN_EMPTY_POLL_SECONDS = 5.0
BACKOFF_FIRST = 5.0
BACKOFF_MAX = 60.0
CONDITION = "EventsReceived"

SourceKey = tuple[str, str]  # provider (aws | gcp), the queue URL or subscription


class Message(Protocol):
    @property
    def body(self) -> str | bytes: ...


class Source(Protocol):
    """What an adapter offers (:class:`~.targets.aws.events.SqsQueue`,
    :class:`~.targets.gcp.events.PubSubSubscription`)."""

    def receive(self, wait_seconds: Any) -> Sequence[Any]: ...

    def delete(self, messages: Sequence[Any]) -> None: ...


def open_source(source: SourceKey, region: str) -> Source:
    """The production adapters; the SDK is imported only when a spec names a source."""
    provider, address = source
    if provider == "aws":
        from server_hardening.targets.aws.events import SqsQueue

        return SqsQueue(address, region, record_call=metrics.recorder_for("aws"))
    from server_hardening.targets.gcp.events import PubSubSubscription

    return PubSubSubscription(address, record_call=metrics.recorder_for("gcp"))


@dataclass(frozen=True)
class Health:
    """A source's state: readable (None until its first read), since when, and why not."""

    up: bool | None
    since: float
    reason: str = ""


Interest = AwsInterest | GcpInterest


def interests_of(
    ref: ResourceRef, spec: ServerHardeningSpec
) -> dict[SourceKey, tuple[Interest, str]]:
    """The sources a spec names, and what the resource watches on each (with the AWS region)."""
    found: dict[SourceKey, tuple[Interest, str]] = {}
    if spec.aws is not None and spec.aws.events is not None:
        groups = frozenset(configured_by_role(spec.aws.security_groups).values())
        interest = AwsInterest(region=spec.aws.region, group_ids=groups)
        found[("aws", spec.aws.events.queue_url)] = (interest, spec.aws.region)
    gcp = spec.gcp
    if gcp is not None and gcp.events is not None:
        prefix = gcp_name_prefix(ref, gcp.installation_id)
        interest_gcp = GcpInterest(project=gcp.project, network=gcp.network, name_prefix=prefix)
        found[("gcp", gcp.events.subscription)] = (interest_gcp, "")
    return found


class EventSources:
    """Every source in use, who is on it, and how it is doing. ``request`` asks for checks of
    resources (called from reader threads); ``health_changed`` is told which resources' source
    became readable or not (also from reader threads)."""

    def __init__(
        self,
        request: Callable[[str, set[Key]], None],
        health_changed: Callable[[set[Key], bool], None],
        *,
        opener: Callable[[SourceKey, str], Source] = open_source,
        poll_wait: float = POLL_WAIT_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.request = request
        self.health_changed = health_changed
        self.opener = opener
        self.poll_wait = poll_wait
        self.clock = clock
        self.lock = threading.Lock()
        self.subscribers: dict[SourceKey, dict[Key, Interest]] = {}
        self.regions: dict[SourceKey, str] = {}
        self.health: dict[SourceKey, Health] = {}
        self.readers: dict[SourceKey, _Reader] = {}

    # -- who is on which source ---------------------------------------------------------------

    def subscribe(self, key: Key, ref: ResourceRef, spec: ServerHardeningSpec) -> None:
        """Put a resource on the sources its spec names (and off those it no longer names)."""
        wanted = interests_of(ref, spec)
        with self.lock:
            for source, (interest, region) in wanted.items():
                self.subscribers.setdefault(source, {})[key] = interest
                self.regions.setdefault(source, region)
            gone = [s for s, on in self.subscribers.items() if key in on and s not in wanted]
            for source in gone:
                del self.subscribers[source][key]
            self._start_and_stop()

    def unsubscribe(self, key: Key) -> None:
        with self.lock:
            for on in self.subscribers.values():
                on.pop(key, None)
            self._start_and_stop()

    def _start_and_stop(self) -> None:
        for source in [s for s, on in self.subscribers.items() if not on]:
            del self.subscribers[source]
            self.regions.pop(source, None)
            self.health.pop(source, None)
            reader = self.readers.pop(source, None)
            if reader is not None:
                reader.stop.set()
            with _suppress_missing():
                metrics.EVENT_SOURCE_UP.remove(*source)
            with _suppress_missing():
                metrics.EVENTS_RECEIVED.remove(*source)
        for source in self.subscribers:
            if source not in self.readers:
                self.health[source] = Health(up=None, since=self.clock())
                reader = _Reader(self, source)
                self.readers[source] = reader
                reader.start()

    def sources_of(self, key: Key) -> list[SourceKey]:
        with self.lock:
            return sorted(s for s, on in self.subscribers.items() if key in on)

    def unreadable(self, key: Key) -> bool:
        """Whether a source of this resource cannot be read now (its checks fall back to the
        timer)."""
        with self.lock:
            return any(
                self.health.get(s, Health(None, 0.0)).up is False
                for s, on in self.subscribers.items()
                if key in on
            )

    def condition(self, key: Key) -> tuple[bool, str, str] | None:
        """The ``EventsReceived`` condition of a resource: (status, reason, message), or None
        when its spec names no source."""
        with self.lock:
            mine = [(s, self.health.get(s)) for s, on in self.subscribers.items() if key in on]
        if not mine:
            return None
        down = [(s, h) for s, h in mine if h is not None and h.up is False]
        if down:
            text = "; ".join(f"{s[1]}: {h.reason}" for s, h in down)
            return False, "SourceUnreadable", f"{text} - the timer checks meanwhile"
        return True, "Reading", "reading " + ", ".join(s[1] for s, _ in mine)

    def stop(self) -> None:
        with self.lock:
            for reader in self.readers.values():
                reader.stop.set()
            self.readers.clear()

    # -- what readers report ------------------------------------------------------------------

    def _set_health(self, source: SourceKey, up: bool, reason: str = "") -> None:
        with self.lock:
            if source not in self.subscribers:
                return
            before = self.health.get(source)
            flipped = before is None or before.up is not up
            if flipped or before is None or before.reason != reason:
                self.health[source] = Health(up=up, since=self.clock(), reason=reason)
            keys = set(self.subscribers[source])
        metrics.EVENT_SOURCE_UP.labels(*source).set(1 if up else 0)
        if flipped and (not up or (before is not None and before.up is False)):
            # Down, or back up after being down (a first successful read changes nothing).
            self.health_changed(keys, up)

    def _handle(self, source: SourceKey, bodies: Sequence[str | bytes]) -> int:
        """Whom a batch concerns; requests one check of each. Returns how many."""
        provider = source[0]
        metrics.EVENTS_RECEIVED.labels(*source).inc(len(bodies))
        with self.lock:
            interests = dict(self.subscribers.get(source, {}))
        concerned: set[Key] = set()
        for body in bodies:
            if provider == "aws":
                change = cloudevents.parse_aws_event(body)
                if change is not None:
                    aws = {k: i for k, i in interests.items() if isinstance(i, AwsInterest)}
                    concerned |= cloudevents.aws_concerned(change, aws)
            else:
                gcp_change = cloudevents.parse_gcp_entry(body)
                if gcp_change is not None:
                    gcp = {k: i for k, i in interests.items() if isinstance(i, GcpInterest)}
                    concerned |= cloudevents.gcp_concerned(gcp_change, gcp)
        if concerned:
            metrics.EVENT_CHECKS.labels(provider=provider).inc(len(concerned))
            self.request(provider, concerned)
        return len(concerned)


class _suppress_missing:  # noqa: N801 - a context manager
    """prometheus_client's ``remove`` raises KeyError for a series never set."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *_: object) -> bool:
        return kind is KeyError


class _Reader:
    """One source's thread: poll, drain, hand over, delete; back off while it cannot read."""

    def __init__(self, hub: EventSources, source: SourceKey) -> None:
        self.hub = hub
        self.source = source
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"events-{source[0]}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        backoff = BACKOFF_FIRST
        adapter: Source | None = None
        while not self.stop.is_set():
            try:
                if adapter is None:
                    adapter = self.hub.opener(self.source, self.hub.regions.get(self.source, ""))
                polled = time.monotonic()
                batch = list(adapter.receive(self.hub.poll_wait))
                while batch and len(batch) < DRAIN_MAX and not self.stop.is_set():
                    more = adapter.receive(0)
                    if not more:
                        break
                    batch.extend(more)
            except TargetError as exc:
                log.warning("cannot read events from %s: %s", self.source[1], exc)
                self.hub._set_health(self.source, False, str(exc))
                self.stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            except Exception as exc:  # a bug or an SDK surprise: say so, keep the reader alive
                log.exception("reading events from %s failed", self.source[1])
                self.hub._set_health(self.source, False, f"{type(exc).__name__}: {exc}")
                adapter = None
                self.stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if self.stop.is_set():
                return  # what this poll received comes back to the next reader
            backoff = BACKOFF_FIRST
            self.hub._set_health(self.source, True)
            if not batch:
                early = min(self.hub.poll_wait, MIN_EMPTY_POLL_SECONDS) - (
                    time.monotonic() - polled
                )
                if early > 0:
                    self.stop.wait(early)
                continue
            self.hub._handle(self.source, [m.body for m in batch])
            try:
                adapter.delete(batch)
            except TargetError as exc:
                # They come back after their visibility timeout and ask for a check again.
                log.warning("could not delete events from %s: %s", self.source[1], exc)
