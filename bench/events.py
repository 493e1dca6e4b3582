"""Cloud events against the timer: how soon a change in the cloud is repaired, and what an idle
operator costs in API calls, with events on and off. Called by ``bench/run.py`` (sections
``events-aws`` and ``events-gcp``).

The operator runs in-process: its real service, scheduler, event reader and cloud adapter; the
resource is held in memory (no API server: this measures the event path, not Kubernetes).

- **AWS**: moto in server mode with the shipped plumbing (deploy/aws/events/cloudformation.yaml:
  EventBridge rules, the SQS queue), the reader long-polling as in production (20 s). A change is
  a managed inbound rule revoked; with events, the recorded CloudTrail record is put on the bus
  and the clock starts when PutEvents returns (the event delivered); with the timer alone, the
  clock starts at the revoke.
- **GCP**: Google's Pub/Sub emulator and the Compute fake. A change is a managed firewall deleted;
  the recorded audit-log entry is published and the clock starts when the publish is
  acknowledged.

The timer's figures are measured with ``--timer-interval`` (default 10 s, to keep the run
short); the timer's repair time is spread evenly over its interval, so at the default 60 s its
p50 is about 30 s and its p99 about 59 s, and at the 10-minute default with events, minutes.
Idle API calls a minute: one resource, nothing changing, over ``--events-idle-seconds``, counted
by the operator's own API-call metric (every call it makes, to the cloud and to the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from server_hardening import metrics, service
from server_hardening.service import OperatorState

Row = Callable[[str, str, str], None]
# Where changes fall, and the pauses between them: the same every run.
RNG = random.Random(24)  # noqa: S311
# Seconds between two changes with events on (the timer-alone runs pause up to one interval).
EVENT_PAUSE = (0.2, 1.0)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _figure(latencies: list[float]) -> str:
    return (
        f"p50 {_pct(latencies, 0.5):.2f} s, p99 {_pct(latencies, 0.99):.2f} s "
        f"(max {max(latencies):.2f} s, {len(latencies)} changes)"
    )


def _calls(target: str) -> dict[str, float]:
    """The operator's API calls so far, by operation, for one target's recorder."""
    found: dict[str, float] = {}
    for family in metrics.API_CALLS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["target"] == target:
                operation = sample.labels["operation"]
                found[operation] = found.get(operation, 0.0) + sample.value
    return found


async def _until(predicate: Callable[[], bool], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError("the change was not repaired")
        await asyncio.sleep(0.02)


async def _latencies(
    changes: int, change: Callable[[], Callable[[], bool]], pause: tuple[float, float]
) -> list[float]:
    """``changes`` times: ``change`` (in a thread) makes a change, and for the event runs
    delivers its event, and returns "it is back"; the clock starts when it returns. Then a
    pause drawn from ``pause`` seconds."""
    latencies = []
    for _ in range(changes):
        back = await asyncio.to_thread(change)
        started = time.monotonic()
        await _until(back)
        latencies.append(time.monotonic() - started)
        await asyncio.sleep(RNG.uniform(*pause))
    return latencies


async def _run_with_scheduler(state: OperatorState, body: Callable[[], Any]) -> Any:
    scheduler = asyncio.create_task(service.run_drift_checks(state))
    try:
        return await body()
    finally:
        scheduler.cancel()
        if state.event_sources is not None:
            state.event_sources.stop()


async def _converge(state: OperatorState, ns: str, name: str) -> None:
    body = state.resources.body  # type: ignore[attr-defined]
    meta = body["metadata"]
    service.register(state, ns, name, meta["uid"], body["spec"], meta["generation"])
    await service.request_reconcile(state, ns, name)
    await service.request_reconcile(state, ns, name)
    if body["status"]["phase"] != "Enforced":
        raise RuntimeError(f"the converge did not end Enforced: {body['status']}")


async def _idle(
    state: OperatorState, target: str, seconds: float, *, from_a_check: bool = False
) -> str:
    """API calls a minute over ``seconds``; ``from_a_check``: over two timer intervals from the
    end of a timed check instead (a fixed window starting anywhere holds one check more or
    fewer)."""
    checks = metrics.DRIFT_CHECKS.labels(how="full")

    async def a_check_ends() -> None:
        seen = checks._value.get()
        while checks._value.get() == seen:  # counted as the check starts
            await asyncio.sleep(0.05)
        while any(lock.locked() for lock in state.locks.values()):  # and it has ended
            await asyncio.sleep(0.05)

    if from_a_check:
        # From the end of one timed check to the end of the second after it: two whole
        # intervals and exactly two checks, however late a loaded machine runs them.
        await a_check_ends()
        before, started = _calls(target), time.monotonic()
        await a_check_ends()
        await a_check_ends()
        seconds = time.monotonic() - started
    else:
        # Let the first poll and anything the converge scheduled settle first.
        await asyncio.sleep(2.0)
        before = _calls(target)
        await asyncio.sleep(seconds)
    after = _calls(target)
    per_minute = {
        op: (after.get(op, 0.0) - before.get(op, 0.0)) * 60.0 / seconds
        for op in after
        if after.get(op, 0.0) != before.get(op, 0.0)
    }
    total = sum(per_minute.values())
    detail = ", ".join(f"{op} {n:.1f}" for op, n in sorted(per_minute.items())) or "none"
    return f"{total:.1f} calls/min ({detail})"


# -- AWS ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _moto() -> Iterator[Any]:
    import os

    from adapters.aws.double import MotoDouble

    # Dummy credentials, no real AWS configuration read (as the adapter tests run).
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"):
        os.environ.pop(name, None)
    os.environ.update(
        AWS_CONFIG_FILE="/dev/null",
        AWS_SHARED_CREDENTIALS_FILE="/dev/null",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",  # noqa: S106 - moto's dummy
    )
    double = MotoDouble()
    try:
        yield double
    finally:
        double.stop()


def aws(row: Row, changes: int, timer_interval: float, idle_seconds: float) -> None:
    from adapters.aws.events_support import (
        EXAMPLE_GROUP,
        EXAMPLE_RULE,
        NAME,
        NS,
        MemoryResources,
        cloudtrail_record,
        make_plumbing,
        operator_spec,
    )
    from adapters.aws.world import make_world
    from server_hardening.rules import Role
    from server_hardening.targets.factory import LiveTargets

    def operator(spec: dict[str, Any]) -> OperatorState:
        body = {
            "metadata": {"namespace": NS, "name": NAME, "uid": "uid-bench", "generation": 1},
            "spec": spec,
        }
        state = OperatorState(
            factory=LiveTargets(None, recorder=metrics.recorder_for),
            resources=MemoryResources(body),
        )
        service.event_sources(state)  # the production reader: 20 s long polls
        return state

    def revoke(world: Any) -> tuple[str, dict[str, Any], Callable[[], bool]]:
        group = world.groups[Role.NOMAD_CLIENTS]
        rules = [r for r in world.rules(group) if not r["IsEgress"]]
        rule = RNG.choice(rules)
        world.ec2.revoke_security_group_ingress(
            GroupId=group, SecurityGroupRuleIds=[rule["SecurityGroupRuleId"]]
        )
        keys = ("IpProtocol", "FromPort", "ToPort", "CidrIpv4", "ReferencedGroupInfo")

        def back() -> bool:
            return any(
                not r["IsEgress"] and all(r.get(k) == rule.get(k) for k in keys)
                for r in world.rules(group)
            )

        return group, rule, back

    with _moto() as double:
        # With events: the timer at 10 minutes never fires during the run.
        world = make_world(double, keep_default_egress=False)
        plumbing = make_plumbing(double)
        spec = operator_spec(world, driftCheckInterval="10m")
        spec["aws"]["events"] = {"queueUrl": plumbing.queue_url}
        state = operator(spec)

        def revoke_and_deliver() -> Callable[[], bool]:
            group, rule, back = revoke(world)
            record = cloudtrail_record(
                "aws-revoke-security-group-ingress.json",
                **{EXAMPLE_GROUP: group, EXAMPLE_RULE: rule["SecurityGroupRuleId"]},
            )
            plumbing.put(record)
            return back

        async def with_events() -> tuple[list[float], str]:
            await _converge(state, NS, NAME)
            latencies = await _latencies(changes, revoke_and_deliver, EVENT_PAUSE)
            return latencies, await _idle(state, "aws", idle_seconds)

        latencies, idle_on = asyncio.run(_run_with_scheduler(state, with_events))
        if changes:
            row(
                "events-aws",
                "event delivered -> rule back (moto, SQS long poll)",
                _figure(latencies),
            )

        # The timer alone.
        world = make_world(double, keep_default_egress=False)
        spec = operator_spec(world, driftCheckInterval=f"{int(timer_interval)}s")
        state = operator(spec)

        async def with_timer() -> list[float]:
            await _converge(state, NS, NAME)
            return await _latencies(changes, lambda: revoke(world)[2], (0.0, timer_interval))

        if changes:
            timer = asyncio.run(_run_with_scheduler(state, with_timer))
            row(
                "events-aws",
                f"timer alone ({timer_interval:.0f} s): rule revoked -> back",
                _figure(timer),
            )

        world = make_world(double, keep_default_egress=False)
        state = operator(operator_spec(world))  # the 60 s default

        async def idle_off() -> str:
            await _converge(state, NS, NAME)
            return await _idle(state, "aws", idle_seconds, from_a_check=True)

        off = asyncio.run(_run_with_scheduler(state, idle_off))
        row("events-aws", "idle API calls, events on (timer 10m, 20 s long poll)", idle_on)
        row("events-aws", "idle API calls, events off (timer 60 s)", off)


# -- GCP ---------------------------------------------------------------------------------------


def gcp(  # noqa: PLR0915 - one scenario, told in order
    row: Row, changes: int, timer_interval: float, idle_seconds: float
) -> None:
    import os

    from adapters.gcp.gcp_support import PROJECT, TAGS, anonymous, make_fake
    from adapters.gcp.pubsub_emulator import PubSubEmulator, find_launcher
    from builders import spec_dict
    from server_hardening.targets.factory import LiveTargets

    launcher, why = find_launcher()
    if launcher is None:
        row("events-gcp", "skipped", why)
        return
    from pathlib import Path

    from adapters.aws.events_support import MemoryResources

    fixture = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "cloudevents"
    entry = (fixture / "gcp-firewall-delete.json").read_text().replace("example-project", PROJECT)
    topic = f"projects/{PROJECT}/topics/server-hardening-events"
    subscription = f"projects/{PROJECT}/subscriptions/server-hardening-events"
    ns, name = "circleci-server", "circleci"
    emulator = PubSubEmulator(launcher).start()
    fake = make_fake()  # the project's network exists, as the adapter's first read needs
    fake.start()
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = emulator.host
    try:
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]

        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        publisher.create_topic(request={"name": topic})
        subscriber.create_subscription(
            request={"name": subscription, "topic": topic, "ack_deadline_seconds": 60}
        )

        def operator(interval: str, events: bool) -> OperatorState:
            gcp: dict[str, Any] = {
                "project": PROJECT,
                "network": "circleci",
                "targetTags": dict(TAGS),
                "endpoint": fake.url,
            }
            if events:
                gcp["events"] = {"subscription": subscription}
            spec = spec_dict(gcp=gcp, kubernetes={"networkPolicies": {"enabled": False}})
            if interval:
                spec["driftCheckInterval"] = interval
            body = {
                "metadata": {"namespace": ns, "name": name, "uid": "uid-bench", "generation": 1},
                "spec": spec,
            }
            state = OperatorState(
                factory=LiveTargets(
                    None, recorder=metrics.recorder_for, gcp_client_factory=anonymous
                ),
                resources=MemoryResources(body),
            )
            service.event_sources(state)
            return state

        def delete() -> tuple[str, Callable[[], bool]]:
            victim = RNG.choice(sorted(fake.rules(PROJECT)))
            fake.remove(PROJECT, victim)
            return victim, lambda: victim in fake.rules(PROJECT)

        state = operator("10m", events=True)

        def delete_and_publish() -> Callable[[], bool]:
            victim, back = delete()
            data = entry.replace("example-firewall", victim).encode()
            publisher.publish(topic, data).result(60)
            return back

        async def with_events() -> tuple[list[float], str]:
            await _converge(state, ns, name)
            latencies = await _latencies(changes, delete_and_publish, EVENT_PAUSE)
            return latencies, await _idle(state, "gcp", idle_seconds)

        latencies, idle_on = asyncio.run(_run_with_scheduler(state, with_events))
        if changes:
            row(
                "events-gcp",
                "entry published -> firewall back (emulator + fake)",
                _figure(latencies),
            )

        state = operator(f"{int(timer_interval)}s", events=False)

        async def with_timer() -> list[float]:
            await _converge(state, ns, name)
            return await _latencies(changes, lambda: delete()[1], (0.0, timer_interval))

        if changes:
            timer = asyncio.run(_run_with_scheduler(state, with_timer))
            row(
                "events-gcp",
                f"timer alone ({timer_interval:.0f} s): firewall deleted -> back",
                _figure(timer),
            )

        state = operator("", events=False)

        async def idle_off() -> str:
            await _converge(state, ns, name)
            return await _idle(state, "gcp", idle_seconds, from_a_check=True)

        off = asyncio.run(_run_with_scheduler(state, idle_off))
        row("events-gcp", "idle API calls, events on (timer 10m, 20 s pull)", idle_on)
        row("events-gcp", "idle API calls, events off (timer 60 s)", off)
    finally:
        if previous is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = previous
        fake.stop()
        emulator.stop()


# -- exceptions on time ------------------------------------------------------------------------


def expiry(row: Row, runs: int) -> None:
    """How late after its ``expires`` instant an exception is reported expired: the scheduler
    checks at the instant (a 10-minute interval would report it up to 10 minutes late). A
    Kubernetes-like target in memory holding one policy the exception excuses."""
    import datetime as dt

    from builders import make_spec
    from unit.service.test_expiry_and_recheck import WithAnUnmanagedPolicy, codes, make_state

    lateness: list[float] = []
    for _ in range(runs):
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=RNG.uniform(2.0, 4.0))
        spec = make_spec().model_dump(by_alias=True, mode="json")
        spec["driftCheckInterval"] = "10m"
        spec["exceptions"] = [
            {
                "target": "kubernetes",
                "name": "extra",
                "reason": "bench",
                "expires": expires.isoformat(),
            }
        ]
        state = make_state(WithAnUnmanagedPolicy({}), spec)

        async def scenario(
            state: OperatorState = state, spec: dict[str, Any] = spec, instant: float = 0.0
        ) -> float:
            async def body() -> float:
                service.register(state, "circleci-server", "circleci", "u-1", spec, 1)
                await service.request_reconcile(state, "circleci-server", "circleci")
                while "ExceptionExpired" not in codes(state):
                    await asyncio.sleep(0.005)
                return time.time() - instant

            result: float = await _run_with_scheduler(state, body)
            return result

        lateness.append(asyncio.run(scenario(instant=expires.timestamp())))
    row(
        "expiry",
        "exception expires at T -> ExceptionExpired in status (timer 10m)",
        f"T + {_pct(lateness, 0.5):.2f} s p50, T + {max(lateness):.2f} s max ({runs} runs)",
    )
