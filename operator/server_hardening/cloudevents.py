"""What a cloud event names, and which resources it concerns. Pure: no SDK, no I/O, no clock.

Events are hints, never truth: a resource an event concerns is checked (observed and compared
in full, as the timer would), so an event read twice, out of order, late or never changes
nothing but when a check runs. What matters here is only *whom* to check; every field read is
optional, and a record this module does not understand concerns nobody (the timer catches what
it meant).

AWS (an SQS message: the EventBridge event whose ``detail`` is the CloudTrail record, see
``deploy/aws/events/``). The groups a record names:

- ``requestParameters.groupId`` (Authorize/RevokeSecurityGroupIngress/Egress,
  UpdateSecurityGroupRuleDescriptions*, DeleteSecurityGroup);
- ``requestParameters.ModifySecurityGroupRulesRequest.GroupId`` (ModifySecurityGroupRules);
- ``requestParameters.resourcesSet.items[].resourceId`` starting ``sg-`` (CreateTags/DeleteTags
  on a group);
- ``responseElements.securityGroupRuleSet.items[].groupId`` (the rules an authorise created).

A record that names only rules (``sgr-``: CreateTags/DeleteTags on a rule, whose record does not
say the rule's group) concerns every resource of that queue in the record's region: a few extra
checks rather than a missed change.

GCP (a Pub/Sub message: the audit ``LogEntry`` the log sink exported, see ``deploy/gcp/events/``).
What an entry names: the project (``resource.labels.project_id``, else ``protoPayload.resourceName``
``projects/P/...``), the network (``protoPayload.request.network``, a URL or a partial path ending
``.../networks/N``, present on inserts and on patches that set it) and the firewall
(``protoPayload.resourceName`` ``projects/P/global/firewalls/NAME``). Whom it concerns:

- a network named: the resources of that project and network;
- no network (a delete, most patches): the resources of the project whose managed firewall-name
  prefix the firewall's name starts with (its owner); when no resource's prefix matches (a firewall
  nobody here owns, which may widen access to a managed network), every resource of the project;
- a firewall policy (hierarchical or network, ``...firewallPolicies...`` in the method name): every
  resource of the project, or every resource of the subscription when the entry names no project
  (an organisation's or folder's policy).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

SECURITY_GROUP_CALLS = (
    "AuthorizeSecurityGroupIngress",
    "AuthorizeSecurityGroupEgress",
    "RevokeSecurityGroupIngress",
    "RevokeSecurityGroupEgress",
    "ModifySecurityGroupRules",
    "UpdateSecurityGroupRuleDescriptionsIngress",
    "UpdateSecurityGroupRuleDescriptionsEgress",
    "CreateTags",
    "DeleteTags",
    "DeleteSecurityGroup",
)
"""The CloudTrail calls the shipped EventBridge rule routes to the queue."""

_GROUP_ID = re.compile(r"^sg-[0-9a-f]{8,17}$")
_RULE_ID = re.compile(r"^sgr-[0-9a-f]{8,17}$")
_PROJECT_PATH = re.compile(r"(?:^|/)projects/([a-z][-a-z0-9]{4,28}[a-z0-9])(?:/|$)")
_NETWORK_PATH = re.compile(r"(?:^|/)networks/([a-z]([-a-z0-9]{0,61}[a-z0-9])?)$")
_FIREWALL_PATH = re.compile(r"(?:^|/)global/firewalls/([a-z]([-a-z0-9]{0,61}[a-z0-9])?)$")

Key = tuple[str, str]  # namespace, name


def _parse(text: str | bytes) -> Mapping[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, Mapping) else None


def _get(value: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _items(value: Any) -> list[Any]:
    items = _get(value, "items") if isinstance(value, Mapping) else value
    return list(items) if isinstance(items, list) else []


# -- AWS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AwsChange:
    """The security groups and rules one CloudTrail record names."""

    event_name: str
    region: str
    group_ids: frozenset[str]
    rule_ids: frozenset[str]


def parse_aws_event(text: str | bytes) -> AwsChange | None:
    """An SQS message's body (an EventBridge event, or a bare CloudTrail record) as the groups
    and rules it names; None when it is not a record of a call this operator cares about."""
    event = _parse(text)
    if event is None:
        return None
    record = event.get("detail") if isinstance(event.get("detail"), Mapping) else event
    name = str(_get(record, "eventName") or "")
    if name not in SECURITY_GROUP_CALLS:
        return None
    request = _get(record, "requestParameters") or {}
    response = _get(record, "responseElements") or {}
    named: set[str] = set()
    for value in (
        _get(request, "groupId"),
        _get(request, "ModifySecurityGroupRulesRequest", "GroupId"),
    ):
        if isinstance(value, str):
            named.add(value)
    for item in _items(_get(request, "resourcesSet")):
        resource = _get(item, "resourceId")
        if isinstance(resource, str):
            named.add(resource)
    for item in _items(_get(response, "securityGroupRuleSet")):
        for key in ("groupId", "securityGroupRuleId"):
            value = _get(item, key)
            if isinstance(value, str):
                named.add(value)
    rule = _get(request, "ModifySecurityGroupRulesRequest", "SecurityGroupRule")
    for item in rule if isinstance(rule, list) else [rule]:
        value = _get(item, "SecurityGroupRuleId")
        if isinstance(value, str):
            named.add(value)
    for item in _items(_get(request, "securityGroupRuleIds")):
        value = item if isinstance(item, str) else _get(item, "securityGroupRuleId")
        if isinstance(value, str):
            named.add(value)
    region = str(_get(record, "awsRegion") or event.get("region") or "")
    return AwsChange(
        event_name=name,
        region=region,
        group_ids=frozenset(v for v in named if _GROUP_ID.match(v)),
        rule_ids=frozenset(v for v in named if _RULE_ID.match(v)),
    )


@dataclass(frozen=True)
class AwsInterest:
    """What a resource on a queue watches: its region and its security groups."""

    region: str
    group_ids: frozenset[str]


def aws_concerned(change: AwsChange, interests: Mapping[Key, AwsInterest]) -> set[Key]:
    """The resources an AWS change concerns: those that manage a group it names; when it names
    rules only, every resource of its region (a rule's record does not say its group)."""
    if change.group_ids:
        return {key for key, i in interests.items() if i.group_ids & change.group_ids}
    if change.rule_ids:
        return {k for k, i in interests.items() if not change.region or i.region == change.region}
    return set()


# -- GCP -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GcpChange:
    """The project, network and firewall one audit log entry names."""

    method: str
    project: str
    network: str
    firewall: str
    policy: bool


def parse_gcp_entry(text: str | bytes) -> GcpChange | None:
    """A Pub/Sub message's data (a ``LogEntry`` as a log sink exports it) as what it names; None
    when it is not an audit entry of a firewall or firewall-policy call."""
    entry = _parse(text)
    if entry is None:
        return None
    payload = entry.get("protoPayload")
    if not isinstance(payload, Mapping):
        return None
    method = str(payload.get("methodName") or "")
    resource_name = str(payload.get("resourceName") or "")
    policy = "firewallpolicies" in method.lower() or "firewallPolicies" in resource_name
    firewall = _FIREWALL_PATH.search(resource_name)
    if not policy and ".firewalls." not in method and firewall is None:
        return None
    project = str(_get(entry, "resource", "labels", "project_id") or "")
    if not project:
        found = _PROJECT_PATH.search(resource_name)
        project = found.group(1) if found else ""
    network_ref = _get(payload, "request", "network")
    network = _NETWORK_PATH.search(network_ref) if isinstance(network_ref, str) else None
    return GcpChange(
        method=method,
        project=project,
        network=network.group(1) if network else "",
        firewall=firewall.group(1) if firewall else "",
        policy=policy,
    )


@dataclass(frozen=True)
class GcpInterest:
    """What a resource on a subscription watches: its project, network and firewall prefix."""

    project: str
    network: str
    name_prefix: str


def gcp_concerned(change: GcpChange, interests: Mapping[Key, GcpInterest]) -> set[Key]:
    """The resources a GCP change concerns (see the module doc for the choices)."""
    if change.policy and not change.project:
        return set(interests)
    in_project = {k: i for k, i in interests.items() if i.project == change.project}
    if change.policy:
        return set(in_project)
    if change.network:
        return {k for k, i in in_project.items() if i.network == change.network}
    owners = {k for k, i in in_project.items() if change.firewall.startswith(i.name_prefix)}
    return owners or set(in_project)


def concerned_by_all(keys: Iterable[set[Key]]) -> set[Key]:
    """The union of what a batch of events concerns: a burst checks each resource once."""
    union: set[Key] = set()
    for found in keys:
        union |= found
    return union
