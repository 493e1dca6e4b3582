"""The readers of cloud event sources, over a scripted source: a burst is one request per
resource, a source that cannot be read says so (condition, metric, fallback) and recovers, and
resources naming the same source share one reader. No SDK here: the adapters are tested on moto
and the Pub/Sub emulator (tests/adapters)."""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from builders import spec_dict
from server_hardening import eventsources, metrics
from server_hardening.eventsources import EventSources, SourceKey
from server_hardening.model import ResourceRef, parse_spec
from server_hardening.targets.base import PermanentTargetError

QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/server-hardening-events"
GROUPS = {"a": "sg-0aaaaaaaaaaaaaaa1", "b": "sg-0bbbbbbbbbbbbbbb2"}


@dataclass
class Message:
    body: str


@dataclass
class ScriptedSource:
    """Answers each receive with the next scripted batch (or an error), then waits."""

    script: queue.Queue[list[Message] | Exception] = field(default_factory=queue.Queue)
    deleted: list[Message] = field(default_factory=list)
    receives: int = 0

    def receive(self, wait_seconds: Any) -> list[Message]:
        self.receives += 1
        try:
            step = self.script.get(timeout=float(wait_seconds) or 0.001)
        except queue.Empty:
            return []
        if isinstance(step, Exception):
            raise step
        return step

    def delete(self, messages: list[Message]) -> None:
        self.deleted.extend(messages)


def record(group: str) -> Message:
    return Message(
        json.dumps(
            {
                "detail-type": "AWS API Call via CloudTrail",
                "detail": {
                    "eventName": "RevokeSecurityGroupIngress",
                    "awsRegion": "us-east-1",
                    "requestParameters": {"groupId": group},
                },
            }
        )
    )


class Recorder:
    def __init__(self) -> None:
        self.requests: list[set[tuple[str, str]]] = []
        self.health: list[tuple[frozenset[tuple[str, str]], bool]] = []
        self.changed = threading.Condition()

    def request(self, provider: str, keys: set[tuple[str, str]]) -> None:
        with self.changed:
            self.requests.append(set(keys))
            self.changed.notify_all()

    def health_changed(self, keys: set[tuple[str, str]], up: bool) -> None:
        with self.changed:
            self.health.append((frozenset(keys), up))
            self.changed.notify_all()

    def wait(self, predicate: Any) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout=30)


def subscribe(hub: EventSources, name: str) -> None:
    spec = parse_spec(
        spec_dict(
            aws={
                "region": "us-east-1",
                "securityGroups": {"kubernetesNodes": GROUPS[name]},
                "events": {"queueUrl": QUEUE},
            }
        )
    )
    hub.subscribe(("ns", name), ResourceRef("ns", name, f"uid-{name}"), spec)


def make_hub(source: ScriptedSource, recorder: Recorder) -> tuple[EventSources, list[SourceKey]]:
    opened: list[SourceKey] = []

    def opener(key: SourceKey, region: str) -> ScriptedSource:
        opened.append(key)
        return source

    hub = EventSources(recorder.request, recorder.health_changed, opener=opener, poll_wait=0.05)
    return hub, opened


def test_a_burst_of_fifty_duplicates_is_one_request_per_resource_and_all_are_deleted() -> None:
    source, recorder = ScriptedSource(), Recorder()
    burst = [record(GROUPS["a"]) for _ in range(45)] + [record(GROUPS["b"]) for _ in range(5)]
    for start in range(0, 50, 10):  # as SQS hands them out: ten a receive
        source.script.put(burst[start : start + 10])
    hub, opened = make_hub(source, recorder)
    subscribe(hub, "a")
    subscribe(hub, "b")
    try:
        recorder.wait(lambda: len(source.deleted) == 50)
        assert recorder.requests == [{("ns", "a"), ("ns", "b")}]
        assert opened == [("aws", QUEUE)]  # two resources, one reader
    finally:
        hub.stop()


def test_an_unreadable_queue_says_why_falls_back_and_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, recorder = ScriptedSource(), Recorder()
    refused = PermanentTargetError("sqs:ReceiveMessage on the queue was refused (AccessDenied)")
    source.script.put(refused)
    hub, _ = make_hub(source, recorder)
    # The first backoff is 5 s; the scripted recovery is read after it.
    monkeypatch.setattr(eventsources, "BACKOFF_FIRST", 0.05)
    try:
        subscribe(hub, "a")
        recorder.wait(lambda: recorder.health)
        assert recorder.health == [(frozenset({("ns", "a")}), False)]
        assert hub.unreadable(("ns", "a"))
        condition = hub.condition(("ns", "a"))
        assert condition is not None
        ok, reason, message = condition
        assert (ok, reason) == (False, "SourceUnreadable") and "AccessDenied" in message
        assert metrics.EVENT_SOURCE_UP.labels("aws", QUEUE)._value.get() == 0
        source.script.put([record(GROUPS["a"])])
        recorder.wait(lambda: len(recorder.health) == 2 and recorder.requests)
        assert recorder.health[1] == (frozenset({("ns", "a")}), True)
        assert not hub.unreadable(("ns", "a"))
        assert hub.condition(("ns", "a")) == (True, "Reading", f"reading {QUEUE}")
        assert metrics.EVENT_SOURCE_UP.labels("aws", QUEUE)._value.get() == 1
    finally:
        hub.stop()


def test_the_reader_stops_when_the_last_resource_leaves_and_its_series_go() -> None:
    source, recorder = ScriptedSource(), Recorder()
    hub, _ = make_hub(source, recorder)
    subscribe(hub, "a")
    subscribe(hub, "b")
    reader = hub.readers[("aws", QUEUE)]
    deadline = time.monotonic() + 30
    while not up_series() and time.monotonic() < deadline:  # the first read sets it
        time.sleep(0.01)
    assert up_series() == [1.0]
    hub.unsubscribe(("ns", "a"))
    assert not reader.stop.is_set()
    hub.unsubscribe(("ns", "b"))
    assert reader.stop.is_set()
    reader.thread.join(timeout=30)
    assert not reader.thread.is_alive()
    assert hub.condition(("ns", "b")) is None
    assert up_series() == []


def up_series() -> list[float]:
    samples = metrics.EVENT_SOURCE_UP.collect()[0].samples
    return [s.value for s in samples if s.labels.get("source") == QUEUE]


def test_a_stop_returns_at_once_and_what_the_last_poll_brings_is_left_for_the_next_reader() -> None:
    source, recorder = ScriptedSource(), Recorder()
    hub, _ = make_hub(source, recorder)
    hub.poll_wait = 5.0  # a long poll in flight when the stop comes
    subscribe(hub, "a")
    reader = hub.readers[("aws", QUEUE)]
    deadline = time.monotonic() + 30
    while source.receives == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    hub.stop()  # returns without waiting for the poll
    assert reader.stop.is_set() and reader.thread.is_alive()
    source.script.put([record(GROUPS["a"])])  # the in-flight poll receives it after the stop
    reader.thread.join(timeout=30)
    assert not reader.thread.is_alive()
    assert recorder.requests == [] and source.deleted == []
