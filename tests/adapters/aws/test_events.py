"""Security-group drift repaired from a CloudTrail event, on moto's EventBridge and SQS with the
shipped plumbing (deploy/aws/events/cloudformation.yaml): the operator's real service, event
reader, scheduler and AWS adapter; the timer at 10 minutes never fires. moto's EC2 emits no
CloudTrail records, so the tests put recorded ones on the bus (tests/fixtures/cloudevents)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from adapters.aws.double import MotoDouble
from adapters.aws.events_support import (
    EXAMPLE_GROUP,
    EXAMPLE_RULE,
    NAME,
    NS,
    MemoryResources,
    Plumbing,
    cloudtrail_record,
    make_operator,
    make_plumbing,
    operator_spec,
    register,
    until,
)
from adapters.aws.world import World
from server_hardening import metrics, service
from server_hardening.rules import Role
from server_hardening.service import OperatorState

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def plumbing(bare_world: World, moto_double: MotoDouble) -> Plumbing:
    """Made after the world (which resets moto), in it."""
    return make_plumbing(moto_double)


@pytest.fixture
def world(bare_world: World) -> World:
    """Groups without AWS's default allow-all egress (which is unmanaged widening)."""
    return bare_world


def managed_ingress(world: World) -> dict[str, Any]:
    group = world.groups[Role.NOMAD_CLIENTS]
    rules = [r for r in world.rules(group) if not r["IsEgress"]]
    assert rules, "the converge wrote no inbound rule on the Nomad clients' group"
    return rules[0]


def full_checks() -> float:
    return metrics.DRIFT_CHECKS.labels(how="full")._value.get()


def event_checks() -> float:
    return metrics.EVENT_CHECKS.labels(provider="aws")._value.get()


async def converge(state: OperatorState) -> None:
    register(state)
    await service.request_reconcile(state, NS, NAME)  # writes the guide's rules
    await service.request_reconcile(state, NS, NAME)  # finds them in place
    status = state.resources.body["status"]  # type: ignore[attr-defined]
    assert status["phase"] == "Enforced", (status["findings"], status["targets"])


def test_a_revoked_rule_is_back_after_its_cloudtrail_event_without_the_timer(
    world: World, plumbing: Plumbing
) -> None:
    spec = operator_spec(
        world,
        driftCheckInterval="10m",
        aws={**operator_spec(world)["aws"], "events": {"queueUrl": plumbing.queue_url}},
    )
    state = make_operator(spec, poll_wait=1.0)

    async def scenario() -> None:
        scheduler = asyncio.create_task(service.run_drift_checks(state))
        try:
            await converge(state)
            assert state.registered[(NS, NAME)].interval == 600
            rule = managed_ingress(world)
            group = rule["GroupId"]
            world.ec2.revoke_security_group_ingress(
                GroupId=group, SecurityGroupRuleIds=[rule["SecurityGroupRuleId"]]
            )
            timed, by_events = full_checks(), event_checks()
            plumbing.put(
                cloudtrail_record(
                    "aws-revoke-security-group-ingress.json",
                    **{EXAMPLE_GROUP: group, EXAMPLE_RULE: rule["SecurityGroupRuleId"]},
                )
            )
            await until(
                lambda: any(_same(r, rule) for r in world.rules(group)), "the rule to be back"
            )
            await until(lambda: plumbing.waiting() == 0, "the event to be deleted")
            assert full_checks() == timed, "a timed check ran: the timer, not the event, repaired"
            assert event_checks() == by_events + 1
            status = state.resources.body["status"]  # type: ignore[attr-defined]
            events = {c["type"]: c for c in status["conditions"]}["EventsReceived"]
            assert (events["status"], events["reason"]) == ("True", "Reading")
        finally:
            scheduler.cancel()
            assert state.event_sources is not None
            state.event_sources.stop()

    asyncio.run(scenario())


def test_a_burst_of_fifty_duplicate_events_is_one_check(
    world: World, plumbing: Plumbing, moto_double: MotoDouble
) -> None:
    without_events = operator_spec(world, driftCheckInterval="10m")
    state = make_operator(without_events, poll_wait=1.0)
    resources: MemoryResources = state.resources  # type: ignore[assignment]

    async def scenario() -> None:
        await converge(state)
        # What one check reads when nothing changed.
        before = moto_double.counts()
        await service.request_reconcile(state, NS, NAME)
        reads_per_check = _delta(before, moto_double.counts())
        assert reads_per_check.get("DescribeSecurityGroupRules", 0) >= 1
        rule = managed_ingress(world)
        group = rule["GroupId"]
        world.ec2.revoke_security_group_ingress(
            GroupId=group, SecurityGroupRuleIds=[rule["SecurityGroupRuleId"]]
        )
        record = cloudtrail_record(
            "aws-revoke-security-group-ingress.json",
            **{EXAMPLE_GROUP: group, EXAMPLE_RULE: rule["SecurityGroupRuleId"]},
        )
        plumbing.put(record, times=50)
        assert await asyncio.to_thread(plumbing.waiting) == 50
        # The spec gains the queue (as an edit would): the reader starts and finds the burst.
        gets, before = resources.gets, moto_double.counts()
        resources.body["spec"]["aws"]["events"] = {"queueUrl": plumbing.queue_url}
        resources.body["metadata"]["generation"] = 2
        register(state)
        try:
            await until(lambda: plumbing.waiting() == 0, "the burst to be read and deleted")
            await until(lambda: not state.event_tasks, "the checks it asked for to end")
            lock = state.locks[(NS, NAME)]
            async with lock:  # nothing queued behind it either
                pass
        finally:
            assert state.event_sources is not None
            state.event_sources.stop()
        assert resources.gets - gets == 1, f"50 events, {resources.gets - gets} checks"
        after = _delta(before, moto_double.counts())
        assert (
            after.get("DescribeSecurityGroupRules") == reads_per_check["DescribeSecurityGroupRules"]
        )
        assert after.get("AuthorizeSecurityGroupIngress") == 1
        assert any(_same(r, rule) for r in world.rules(group))

    asyncio.run(scenario())


def test_an_unreadable_queue_turns_the_condition_and_the_timer_takes_over(
    world: World, plumbing: Plumbing
) -> None:
    missing = plumbing.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    spec = operator_spec(
        world, aws={**operator_spec(world)["aws"], "events": {"queueUrl": missing}}
    )
    state = make_operator(spec, poll_wait=1.0)
    resources: MemoryResources = state.resources  # type: ignore[assignment]

    async def scenario() -> None:
        state.loop = asyncio.get_running_loop()
        try:
            register(state)
            assert state.event_sources is not None
            await until(lambda: state.event_sources.unreadable((NS, NAME)), "the reader to fail")  # type: ignore[union-attr]
            # The resource's timer falls back to the 60 s default while events cannot be read.
            await until(lambda: state.registered[(NS, NAME)].interval == 60, "the fallback")
            await until(lambda: "status" in resources.body, "the check the failure asked for")
            await until(
                lambda: any(
                    c["type"] == "EventsReceived" for c in resources.body["status"]["conditions"]
                ),
                "the condition",
            )
            condition = {c["type"]: c for c in resources.body["status"]["conditions"]}[
                "EventsReceived"
            ]
            assert (condition["status"], condition["reason"]) == ("False", "SourceUnreadable")
            assert (
                "does not exist" in condition["message"] and "no-such-queue" in condition["message"]
            )
            up = metrics.EVENT_SOURCE_UP.labels("aws", missing)._value.get()
            assert up == 0
        finally:
            assert state.event_sources is not None
            state.event_sources.stop()

    asyncio.run(scenario())


def _same(observed: dict[str, Any], wanted: dict[str, Any]) -> bool:
    keys = ("IsEgress", "IpProtocol", "FromPort", "ToPort", "CidrIpv4", "Description")
    return all(observed.get(k) == wanted.get(k) for k in keys)


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }
