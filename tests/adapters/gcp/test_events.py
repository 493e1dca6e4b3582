"""Firewall drift repaired from an audit-log entry, on Google's Pub/Sub emulator (a log sink's
messages as deploy/gcp/events/ routes them) and the Compute fake: the operator's real service,
event reader, scheduler and GCP adapter; the timer at 10 minutes never fires."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.aws.events_support import MemoryResources
from adapters.gcp.gcp_support import PROJECT, TAGS, anonymous, make_fake
from adapters.gcp.pubsub_emulator import PubSubEmulator, require_launcher
from builders import spec_dict
from fakes.gcp_compute import FakeCompute
from server_hardening import metrics, service
from server_hardening.service import OperatorState
from server_hardening.targets.factory import LiveTargets

pytestmark = pytest.mark.timeout(300)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "cloudevents"
NS, NAME = "circleci-server", "circleci"
TOPIC = f"projects/{PROJECT}/topics/server-hardening-events"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/server-hardening-events"


@pytest.fixture(scope="module")
def emulator() -> Iterator[PubSubEmulator]:
    running = PubSubEmulator(require_launcher()).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def pubsub(emulator: PubSubEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A topic and a subscription on the emulator, as the shipped sink's would be."""
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    publisher.create_topic(request={"name": TOPIC})
    subscriber.create_subscription(
        request={"name": SUBSCRIPTION, "topic": TOPIC, "ack_deadline_seconds": 60}
    )
    try:
        yield publisher
    finally:
        subscriber.delete_subscription(request={"subscription": SUBSCRIPTION})
        publisher.delete_topic(request={"topic": TOPIC})


@pytest.fixture
def fake() -> Iterator[FakeCompute]:
    with make_fake() as server:
        yield server


def operator(fake: FakeCompute) -> OperatorState:
    spec = spec_dict(
        gcp={
            "project": PROJECT,
            "network": "circleci",
            "targetTags": dict(TAGS),
            "endpoint": fake.url,
            "events": {"subscription": SUBSCRIPTION},
        },
        kubernetes={"networkPolicies": {"enabled": False}},
        driftCheckInterval="10m",
    )
    body = {
        "metadata": {"namespace": NS, "name": NAME, "uid": "uid-gcp", "generation": 1},
        "spec": spec,
    }
    state = OperatorState(
        factory=LiveTargets(None, gcp_client_factory=anonymous), resources=MemoryResources(body)
    )
    service.event_sources(state, poll_wait=1.0)
    return state


def audit_entry(firewall: str) -> bytes:
    """The recorded delete entry, naming the test's project and firewall."""
    text = (FIXTURES / "gcp-firewall-delete.json").read_text()
    return text.replace("example-project", PROJECT).replace("example-firewall", firewall).encode()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def test_a_deleted_firewall_is_back_after_its_audit_log_entry_without_the_timer(
    fake: FakeCompute, pubsub: Any
) -> None:
    state = operator(fake)
    resources: MemoryResources = state.resources  # type: ignore[assignment]

    async def scenario() -> None:
        scheduler = asyncio.create_task(service.run_drift_checks(state))
        try:
            meta = resources.body["metadata"]
            service.register(state, NS, NAME, meta["uid"], resources.body["spec"], 1)
            await service.request_reconcile(state, NS, NAME)
            await service.request_reconcile(state, NS, NAME)
            assert resources.body["status"]["phase"] == "Enforced", resources.body["status"]
            assert state.registered[(NS, NAME)].interval == 600
            managed = sorted(fake.rules(PROJECT))
            victim = managed[0]
            kept = fake.rules(PROJECT)[victim]
            fake.remove(PROJECT, victim)
            timed = metrics.DRIFT_CHECKS.labels(how="full")._value.get()
            by_events = metrics.EVENT_CHECKS.labels(provider="gcp")._value.get()
            pubsub.publish(TOPIC, audit_entry(victim)).result(timeout=60)
            await until(lambda: victim in fake.rules(PROJECT), f"{victim} to be back")
            back = fake.rules(PROJECT)[victim]
            compared = (
                "direction",
                "sourceRanges",
                "destinationRanges",
                "allowed",
                "denied",
                "targetTags",
            )
            assert {k: back.get(k) for k in compared} == {k: kept.get(k) for k in compared}
            assert metrics.DRIFT_CHECKS.labels(how="full")._value.get() == timed
            assert metrics.EVENT_CHECKS.labels(provider="gcp")._value.get() == by_events + 1
        finally:
            scheduler.cancel()
            assert state.event_sources is not None
            state.event_sources.stop()

    asyncio.run(scenario())
