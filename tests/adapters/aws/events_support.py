"""The shipped event plumbing (deploy/aws/events/cloudformation.yaml) made in moto: its queue, its
EventBridge rules with their event patterns and targets, and CloudTrail-shaped records put on
the bus as AWS delivers them. Also an in-process operator over moto for the event tests and the
benchmark: the real service, scheduler, event reader and AWS adapter, with the resource held in
memory instead of a Kubernetes API server."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import yaml

from adapters.aws.double import DUMMY, REGION, MotoDouble
from adapters.aws.world import World
from server_hardening import service
from server_hardening.service import OperatorState
from server_hardening.targets.factory import LiveTargets

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / "deploy" / "aws" / "events" / "cloudformation.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "cloudevents"
EXAMPLE_GROUP = "sg-0123456789abcdef0"
EXAMPLE_RULE = "sgr-0a1b2c3d4e5f60718"
NS, NAME = "circleci-server", "circleci"


class _CloudFormationLoader(yaml.SafeLoader):
    """CloudFormation's short tags (!Ref, !GetAtt) as their long forms."""


def _tag(name: str) -> Callable[[yaml.SafeLoader, yaml.Node], Any]:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return {name: loader.construct_scalar(node)}
        return {name: loader.construct_sequence(node)}  # type: ignore[arg-type]

    return construct


for _short, _long in (("!Ref", "Ref"), ("!GetAtt", "Fn::GetAtt")):
    _CloudFormationLoader.add_constructor(_short, _tag(_long))


def template() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CloudFormationLoader)  # noqa: S506
    return loaded


def client(double: MotoDouble, service_name: str) -> Any:
    return boto3.session.Session().client(
        service_name, region_name=REGION, endpoint_url=double.moto_url, **DUMMY
    )


@dataclass
class Plumbing:
    """The queue and rules as the template makes them."""

    double: MotoDouble
    queue_url: str
    queue_arn: str
    rules: list[str]

    def put(self, record: dict[str, Any], times: int = 1) -> None:
        """CloudTrail records on the default bus, as AWS delivers them (10 per PutEvents)."""
        events = client(self.double, "events")
        entry = {
            "Source": "aws.ec2",
            "DetailType": "AWS API Call via CloudTrail",
            "Detail": json.dumps(record),
        }
        for start in range(0, times, 10):
            answer = events.put_events(Entries=[entry] * min(10, times - start))
            assert answer["FailedEntryCount"] == 0, answer

    def waiting(self) -> int:
        """Messages on the queue, visible or in flight."""
        sqs = client(self.double, "sqs")
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        found = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)
        return sum(int(found["Attributes"][n]) for n in names)


def make_plumbing(double: MotoDouble) -> Plumbing:
    """The template's Queue, QueuePolicy and Rules (with their patterns and targets) in moto."""
    resources = template()["Resources"]
    sqs, events = client(double, "sqs"), client(double, "events")
    queue = resources["Queue"]["Properties"]
    attributes = {
        "MessageRetentionPeriod": str(queue["MessageRetentionPeriod"]),
        "ReceiveMessageWaitTimeSeconds": str(queue["ReceiveMessageWaitTimeSeconds"]),
        "VisibilityTimeout": str(queue["VisibilityTimeout"]),
    }
    url = sqs.create_queue(QueueName="server-hardening-events", Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    rule_arns: dict[str, str] = {}
    for logical, resource in resources.items():
        if resource["Type"] != "AWS::Events::Rule":
            continue
        props = resource["Properties"]
        rule_arns[logical] = events.put_rule(
            Name=logical,
            EventPattern=json.dumps(props["EventPattern"]),
            State=props["State"],
        )["RuleArn"]
        events.put_targets(
            Rule=logical, Targets=[{"Id": t["Id"], "Arn": arn} for t in props["Targets"]]
        )
    policy = copy.deepcopy(resources["QueuePolicy"]["Properties"]["PolicyDocument"])
    for statement in policy["Statement"]:
        statement["Resource"] = arn
        sources = statement["Condition"]["ArnEquals"]["aws:SourceArn"]
        statement["Condition"]["ArnEquals"]["aws:SourceArn"] = [
            rule_arns[s["Fn::GetAtt"].split(".")[0]] for s in sources
        ]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
    return Plumbing(double=double, queue_url=url, queue_arn=arn, rules=list(rule_arns))


def cloudtrail_record(name: str, **replace: str) -> dict[str, Any]:
    """A recorded record (its ``detail``), the example IDs replaced by the test's."""
    text = (FIXTURES / name).read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    detail: dict[str, Any] = json.loads(text)["detail"]
    return detail


@dataclass
class MemoryResources:
    """The ServerHardening the operator reads, its status and Events, held in memory."""

    body: dict[str, Any]
    gets: int = 0
    events: list[tuple[str, str]] = field(default_factory=list)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.gets += 1
        return copy.deepcopy(self.body)

    def patch_status(self, namespace: str, name: str, status: Any) -> None:
        self.body["status"] = json.loads(json.dumps(status))

    def publish_report(self, report: Any, owner: Any) -> bool:
        return True

    def post_event(self, body: Any, type_: str, reason: str, message: str) -> str:
        self.events.append((reason, message))
        return reason

    def post_or_count_event(
        self, body: Any, type_: str, reason: str, message: str, *, repeat_of: Any = None
    ) -> tuple[str, int]:
        self.events.append((reason, message))
        return reason, 1


def operator_spec(world: World, **extra: Any) -> dict[str, Any]:
    spec = world.spec().model_dump(by_alias=True, mode="json", exclude_unset=True)
    spec["kubernetes"] = {"networkPolicies": {"enabled": False}}
    spec.update(extra)
    return spec


def make_operator(spec: dict[str, Any], **event_options: Any) -> OperatorState:
    body = {
        "metadata": {"namespace": NS, "name": NAME, "uid": "uid-events", "generation": 1},
        "spec": spec,
    }
    state = OperatorState(factory=LiveTargets(None), resources=MemoryResources(body))
    service.event_sources(state, **event_options)
    return state


def register(state: OperatorState) -> None:
    body = state.resources.body  # type: ignore[attr-defined]
    meta = body["metadata"]
    service.register(
        state, NS, NAME, meta["uid"], body["spec"], meta["generation"], body.get("status")
    )


async def until(predicate: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    """Wait for ``predicate`` (checked off the event loop: it may call moto)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)
