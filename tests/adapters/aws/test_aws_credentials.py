"""An AWS target without credentials: botocore finds none at the first call
(``NoCredentialsError``); the adapter says what to configure and the pipeline makes it the
target's status and an Event, without a single request sent."""

from __future__ import annotations

import boto3
import pytest

from adapters.aws.world import World
from builders import make_spec
from server_hardening.reconcile import Event, run_target
from server_hardening.targets.aws import AwsTarget
from server_hardening.targets.aws.errors import client_config


def test_no_credentials_is_the_targets_error_naming_what_to_configure(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    aws = world.aws_spec()
    client = boto3.session.Session().client(
        "ec2", region_name=aws.region, endpoint_url=aws.endpoint_url, config=client_config()
    )
    target = AwsTarget(world.guide_rendering(), aws, world.owner, client=client,
                       record_call=world.record)  # fmt: skip
    world.double.proxy.reset()
    events: list[Event] = []

    report = run_target("aws", lambda: target, make_spec(), 0, events)

    assert not report.observed
    assert "no usable AWS credentials" in report.last_error and "IRSA" in report.last_error
    assert [e.reason for e in events] == ["TargetError"]
    assert world.double.counts() == {}  # refused before any request left
