"""Whom a cloud event concerns: the groups a CloudTrail record names, the project, network and
firewall an audit log entry names, and the resources that watch them. Recorded shapes from the
providers' documentation (tests/fixtures/cloudevents/SOURCES.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from builders import spec_dict
from server_hardening.cloudevents import (
    SECURITY_GROUP_CALLS,
    AwsInterest,
    GcpInterest,
    aws_concerned,
    gcp_concerned,
    parse_aws_event,
    parse_gcp_entry,
)
from server_hardening.model import EVENTS_DRIFT_CHECK_SECONDS, SpecError, parse_spec

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "cloudevents"
GROUP = "sg-0123456789abcdef0"
RULE = "sgr-0a1b2c3d4e5f60718"
QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/server-hardening-events"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def edited(name: str, **paths: Any) -> str:
    """A fixture with some fields changed, given as dotted paths."""
    doc = json.loads(fixture(name))
    for path, value in paths.items():
        node = doc
        *parents, last = path.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return json.dumps(doc)


AWS = {
    ("ns", "owner"): AwsInterest(
        region="us-east-1", group_ids=frozenset({GROUP, "sg-0aaaaaaaaaaaaaaa1"})
    ),
    ("ns", "other"): AwsInterest(region="us-east-1", group_ids=frozenset({"sg-0bbbbbbbbbbbbbbb2"})),
    ("ns", "elsewhere"): AwsInterest(
        region="eu-west-1", group_ids=frozenset({"sg-0ccccccccccccccc3"})
    ),
}


@pytest.mark.parametrize(
    "name",
    [
        "aws-authorize-security-group-ingress.json",
        "aws-modify-security-group-rules.json",
        "aws-revoke-security-group-ingress.json",
    ],
)
def test_a_record_naming_a_group_concerns_the_resources_that_manage_it(name: str) -> None:
    change = parse_aws_event(fixture(name))
    assert change is not None
    assert change.group_ids == {GROUP}
    assert RULE in change.rule_ids
    assert aws_concerned(change, AWS) == {("ns", "owner")}


def test_a_bare_cloudtrail_record_is_read_like_an_eventbridge_event() -> None:
    record = json.loads(fixture("aws-modify-security-group-rules.json"))["detail"]
    change = parse_aws_event(json.dumps(record))
    assert change is not None and change.group_ids == {GROUP}


def test_a_record_naming_only_a_rule_concerns_every_resource_of_its_region() -> None:
    change = parse_aws_event(fixture("aws-create-tags-on-a-rule.json"))
    assert change is not None
    assert change.group_ids == frozenset() and change.rule_ids == {RULE}
    assert aws_concerned(change, AWS) == {("ns", "owner"), ("ns", "other")}


def test_tags_on_a_group_and_its_deletion_concern_its_owner() -> None:
    tags = edited(
        "aws-create-tags-on-a-rule.json",
        detail__requestParameters={"resourcesSet": {"items": [{"resourceId": GROUP}]}},
    )
    deleted = edited(
        "aws-revoke-security-group-ingress.json",
        detail__eventName="DeleteSecurityGroup",
        detail__requestParameters={"groupId": "sg-0bbbbbbbbbbbbbbb2"},
    )
    tagged, gone = parse_aws_event(tags), parse_aws_event(deleted)
    assert tagged is not None and gone is not None
    assert aws_concerned(tagged, AWS) == {("ns", "owner")}
    assert aws_concerned(gone, AWS) == {("ns", "other")}


def test_a_group_nobody_manages_concerns_nobody() -> None:
    change = parse_aws_event(
        edited(
            "aws-modify-security-group-rules.json",
            detail__requestParameters={
                "ModifySecurityGroupRulesRequest": {"GroupId": "sg-0ddddddddddddddd4"}
            },
        )
    )
    assert change is not None and aws_concerned(change, AWS) == set()


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        "{}",
        json.dumps(
            {"detail": {"eventName": "RunInstances", "requestParameters": {"groupId": GROUP}}}
        ),
        json.dumps(
            {"detail": {"eventName": "AuthorizeSecurityGroupIngress", "requestParameters": None}}
        ),
        json.dumps(
            {
                "detail": {
                    "eventName": "AuthorizeSecurityGroupIngress",
                    "requestParameters": {"groupId": 7},
                }
            }
        ),
    ],
)
def test_what_is_not_a_security_group_record_concerns_nobody(body: str) -> None:
    change = parse_aws_event(body)
    assert change is None or aws_concerned(change, AWS) == set()


PREFIX = "svh-0123456789-"
GCP = {
    ("ns", "owner"): GcpInterest(
        project="example-project", network="example-network", name_prefix=PREFIX
    ),
    ("ns", "neighbour"): GcpInterest(
        project="example-project", network="other-network", name_prefix="svh-abcdefabcd-"
    ),
    ("ns", "elsewhere"): GcpInterest(
        project="other-project", network="example-network", name_prefix="svh-ffffffffff-"
    ),
}


def test_an_insert_concerns_the_resources_of_the_network_it_names() -> None:
    change = parse_gcp_entry(fixture("gcp-firewall-insert.json"))
    assert change is not None
    assert (change.project, change.network) == ("example-project", "example-network")
    assert gcp_concerned(change, GCP) == {("ns", "owner")}


def test_a_delete_of_a_managed_firewall_concerns_its_owner_by_name_prefix() -> None:
    name = f"projects/example-project/global/firewalls/{PREFIX}k8s-in-allow-nodes"
    change = parse_gcp_entry(edited("gcp-firewall-delete.json", protoPayload__resourceName=name))
    assert change is not None and change.network == ""
    assert change.firewall == f"{PREFIX}k8s-in-allow-nodes"
    assert gcp_concerned(change, GCP) == {("ns", "owner")}


def test_a_delete_of_a_firewall_nobody_here_owns_concerns_the_whole_project() -> None:
    change = parse_gcp_entry(fixture("gcp-firewall-delete.json"))
    assert change is not None
    assert gcp_concerned(change, GCP) == {("ns", "owner"), ("ns", "neighbour")}


def test_a_firewall_policy_change_concerns_the_project_or_everyone_without_one() -> None:
    change = parse_gcp_entry(fixture("gcp-network-firewall-policy-patch-rule.json"))
    assert change is not None and change.policy
    assert gcp_concerned(change, GCP) == {("ns", "owner"), ("ns", "neighbour")}
    org = json.loads(fixture("gcp-network-firewall-policy-patch-rule.json"))
    org["resource"] = {"type": "gce_firewall_policy", "labels": {"organization_id": "1"}}
    org["protoPayload"]["resourceName"] = "locations/global/firewallPolicies/123"
    org["protoPayload"]["methodName"] = "v1.compute.firewallPolicies.patchRule"
    hierarchical = parse_gcp_entry(json.dumps(org))
    assert hierarchical is not None and gcp_concerned(hierarchical, GCP) == set(GCP)


@pytest.mark.parametrize(
    "body",
    ["", "{}", json.dumps({"protoPayload": {"methodName": "v1.compute.instances.insert"}})],
)
def test_an_entry_about_something_else_concerns_nobody(body: str) -> None:
    assert parse_gcp_entry(body) is None


# -- the spec -------------------------------------------------------------------------------


def aws_events(**aws: Any) -> dict[str, Any]:
    return {
        "region": "us-east-1",
        "securityGroups": {"kubernetesNodes": GROUP},
        "events": {"queueUrl": QUEUE},
        **aws,
    }


def test_with_events_the_timer_defaults_to_ten_minutes_and_falls_back_to_a_minute() -> None:
    spec = parse_spec(spec_dict(aws=aws_events()))
    assert spec.events_configured
    assert spec.drift_check_seconds == EVENTS_DRIFT_CHECK_SECONDS == 600
    assert spec.fallback_check_seconds == 60
    without = parse_spec(spec_dict())
    assert not without.events_configured and without.drift_check_seconds == 60


def test_an_interval_the_spec_sets_is_kept_with_events() -> None:
    body = spec_dict(aws=aws_events())
    body["driftCheckInterval"] = "2m"
    spec = parse_spec(body)
    assert spec.drift_check_seconds == spec.fallback_check_seconds == 120


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ({"queueUrl": "sqs.us-east-1.amazonaws.com/123456789012/q"}, "spec.aws.events.queueUrl"),
        ({"queueUrl": "https://sqs.us-east-1.amazonaws.com/12345/q"}, "spec.aws.events.queueUrl"),
        ({}, "spec.aws.events.queueUrl"),
    ],
)
def test_a_bad_queue_url_is_refused_naming_the_field(events: dict[str, Any], field: str) -> None:
    body = spec_dict(aws=aws_events())
    body["aws"]["events"] = events
    with pytest.raises(SpecError) as refused:
        parse_spec(body)
    assert [e.path for e in refused.value.errors] == [field]


@pytest.mark.parametrize(
    "subscription",
    [
        "projects/example-project/topics/server-hardening",
        "server-hardening",
        "projects/example-project/subscriptions/goog-events",
        "projects/example-project/subscriptions/1abc",
    ],
)
def test_a_bad_subscription_is_refused_naming_the_field(subscription: str) -> None:
    gcp = {
        "project": "example-project",
        "network": "example-network",
        "targetTags": {"kubernetesNodes": "k8s-node"},
        "events": {"subscription": subscription},
    }
    with pytest.raises(SpecError) as refused:
        parse_spec(spec_dict(gcp=gcp))
    assert [e.path for e in refused.value.errors] == ["spec.gcp.events.subscription"]


# -- the shipped plumbing says the same -------------------------------------------------------

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def test_the_shipped_eventbridge_rules_route_exactly_the_calls_the_operator_reads() -> None:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    text = (DEPLOY / "aws" / "events" / "cloudformation.yaml").read_text()
    template = yaml.load(text, Loader=Loader)  # noqa: S506 - CloudFormation's tags read as None
    routed: set[str] = set()
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Events::Rule":
            pattern = resource["Properties"]["EventPattern"]
            assert pattern["detail-type"] == ["AWS API Call via CloudTrail"]
            routed |= set(pattern["detail"]["eventName"])
    assert routed == set(SECURITY_GROUP_CALLS)


def test_the_operator_policy_allows_only_reading_and_deleting_one_queue() -> None:
    policy = json.loads((DEPLOY / "aws" / "events" / "operator-policy.json").read_text())
    (statement,) = policy["Statement"]
    assert sorted(statement["Action"]) == ["sqs:DeleteMessage", "sqs:ReceiveMessage"]
    assert statement["Resource"].startswith("arn:aws:sqs:") and "*" not in statement["Resource"]


def test_the_shipped_log_sink_keeps_the_admin_activity_firewall_entries() -> None:
    terraform = (DEPLOY / "gcp" / "events" / "main.tf").read_text()
    assert "cloudaudit.googleapis.com%2Factivity" in terraform
    for methods in ("compute.firewalls.", "compute.networkFirewallPolicies."):
        assert f'protoPayload.methodName:\\"{methods}\\"' in terraform
    assert re.search(r'role\s+= "roles/pubsub.subscriber"', terraform)
