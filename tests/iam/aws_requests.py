"""Every AWS call a client really makes, recorded, and turned into the IAM requests AWS
authorizes for it (the Service Authorization Reference for Amazon EC2 and EC2 Auto Scaling).

The requests are built from the recorded parameters, never from a list of expected calls, so a
call the adapter starts to make later is evaluated too; a call this module cannot map fails
loudly (:class:`UnmappedCallError`) instead of being waved through.

What each call is authorized as:

- ``Describe*`` (EC2, Auto Scaling): the action on ``*`` (no resource-level permissions).
- ``AuthorizeSecurityGroupIngress/Egress``: the action on the group; with ``TagSpecifications``
  also on the new ``security-group-rule`` (``aws:RequestTag/<key>``, ``aws:TagKeys``) and the
  implicit ``ec2:CreateTags`` on it with ``ec2:CreateAction`` = the authorise action.
- ``RevokeSecurityGroupIngress/Egress`` and ``ModifySecurityGroupRules``: the action on the group
  and on each rule named by ID (with the rule's tags as ``aws:ResourceTag/<key>`` and
  ``ec2:ResourceTag/<key>``).
- ``CreateTags`` / ``DeleteTags``: the action on each resource (``security-group-rule`` for
  ``sgr-``, ``security-group`` for ``sg-``) with ``aws:RequestTag/<key>`` for each tag given a
  value, ``aws:TagKeys`` and the resource's tags at the moment of the call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from iam.evaluator import ContextValue, Request, evaluate

ACCOUNT = "123456789012"  # moto's account


class UnmappedCallError(Exception):
    """A recorded call this module does not know how to authorize."""


@dataclass(frozen=True)
class RecordedCall:
    service: str
    operation: str
    params: Mapping[str, Any]
    resource_tags: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Tags of the resources the call names, read just before the call."""

    def label(self) -> str:
        target = self.params.get("GroupId") or ",".join(self.params.get("Resources", [])[:3])
        return f"{self.service}:{self.operation}" + (f" {target}" if target else "")


TagLookup = Callable[[Sequence[str]], Mapping[str, Mapping[str, str]]]


def record_calls(
    client: Any,
    service: str,
    tags_of: TagLookup | None = None,
    into: list[RecordedCall] | None = None,
) -> list[RecordedCall]:
    """Record every call ``client`` makes from now on (operation, parameters and the current
    tags of the rules it names, read with ``tags_of`` through another client), in ``into`` if
    given (several clients, one list)."""
    seen: list[RecordedCall] = [] if into is None else into

    def hook(params: dict[str, Any], model: Any, **_: Any) -> None:
        ids = named_ids(str(model.name), params)
        tags = dict(tags_of(ids)) if (ids and tags_of is not None) else {}
        seen.append(RecordedCall(service, str(model.name), dict(params), tags))

    client.meta.events.register(f"provide-client-params.{service}", hook)
    return seen


def named_ids(operation: str, params: Mapping[str, Any]) -> list[str]:
    """The existing resources a call names (whose tags IAM may look at)."""
    if operation in ("CreateTags", "DeleteTags"):
        return [str(r) for r in params.get("Resources", [])]
    if operation.startswith("Revoke"):
        return [str(r) for r in params.get("SecurityGroupRuleIds", [])]
    if operation == "ModifySecurityGroupRules":
        return [str(r["SecurityGroupRuleId"]) for r in params.get("SecurityGroupRules", [])]
    return []


def ec2_arn(region: str, resource_id: str, account: str = ACCOUNT) -> str:
    if resource_id.startswith("sgr-") or resource_id == "*":
        kind = "security-group-rule"
    elif resource_id.startswith("sg-"):
        kind = "security-group"
    else:
        raise UnmappedCallError(f"no ARN type known for resource {resource_id}")
    return f"arn:aws:ec2:{region}:{account}:{kind}/{resource_id}"


def _resource_context(tags: Mapping[str, str]) -> dict[str, ContextValue]:
    out: dict[str, ContextValue] = {}
    for key, value in tags.items():
        out[f"aws:ResourceTag/{key}"] = value
        out[f"ec2:ResourceTag/{key}"] = value
    return out


def _request_context(tags: Sequence[Mapping[str, Any]]) -> dict[str, ContextValue]:
    out: dict[str, ContextValue] = {
        f"aws:RequestTag/{t['Key']}": str(t["Value"]) for t in tags if "Value" in t
    }
    out["aws:TagKeys"] = [str(t["Key"]) for t in tags]
    return out


def requests_for(call: RecordedCall, region: str, account: str = ACCOUNT) -> list[Request]:
    """The IAM requests AWS evaluates for one call (all must be allowed)."""
    op, params, label = call.operation, call.params, call.label()
    action = f"{call.service}:{op}"
    if op.startswith("Describe") and call.service in ("ec2", "autoscaling"):
        return [Request(action, "*", call=label)]
    if call.service != "ec2":
        raise UnmappedCallError(f"{action}: no IAM mapping; add it to tests/iam/aws_requests.py")

    def arn(resource_id: str) -> str:
        return ec2_arn(region, resource_id, account)

    if op in ("AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress"):
        out = [Request(action, arn(str(params["GroupId"])), call=label)]
        for spec in params.get("TagSpecifications", []):
            if spec.get("ResourceType") != "security-group-rule":
                raise UnmappedCallError(f"{action}: tags for {spec.get('ResourceType')}")
            context = _request_context(spec.get("Tags", []))
            out.append(Request(action, arn("*"), context, call=label))
            out.append(
                Request("ec2:CreateTags", arn("*"), {**context, "ec2:CreateAction": op}, call=label)
            )
        return out
    if op in (
        "RevokeSecurityGroupIngress",
        "RevokeSecurityGroupEgress",
        "ModifySecurityGroupRules",
    ):
        out = [Request(action, arn(str(params["GroupId"])), call=label)]
        for rule in named_ids(op, params):
            tags = call.resource_tags.get(rule, {})
            out.append(Request(action, arn(rule), _resource_context(tags), call=label))
        return out
    if op in ("CreateTags", "DeleteTags"):
        context = _request_context(params.get("Tags", []))
        return [
            Request(
                action,
                arn(str(resource)),
                {**context, **_resource_context(call.resource_tags.get(str(resource), {}))},
                call=label,
            )
            for resource in params.get("Resources", [])
        ]
    raise UnmappedCallError(f"{action}: no IAM mapping; add it to tests/iam/aws_requests.py")


# ------------------------------------------------------------------------------------------
# A client under a policy


@dataclass(frozen=True)
class Refusal:
    call: RecordedCall
    request: Request
    reason: str

    def __str__(self) -> str:
        return f"{self.call.label()}: {self.request.describe()}: {self.reason}"


def refusals(
    policy: Mapping[str, Any], calls: Sequence[RecordedCall], region: str, account: str = ACCOUNT
) -> list[Refusal]:
    """Every request of ``calls`` that ``policy`` does not allow."""
    out: list[Refusal] = []
    for call in calls:
        for request in requests_for(call, region, account):
            decision = evaluate(policy, request)
            if not decision.allowed:
                out.append(Refusal(call, request, decision.reason))
    return out


def enforce_policy(
    client: Any,
    service: str,
    policy: Mapping[str, Any],
    tags_of: TagLookup,
    *,
    region: str,
    account: str = ACCOUNT,
    into: list[RecordedCall] | None = None,
) -> list[RecordedCall]:
    """Make ``client`` answer ``UnauthorizedOperation`` (as EC2 does, HTTP 403) to every call
    ``policy`` does not allow, before it is sent: moto itself ignores resources and conditions.
    Returns the calls, refused ones included, as :func:`record_calls` does."""
    seen = record_calls(client, service, tags_of, into)

    def refuse(model: Any, **_: Any) -> None:
        call = seen[-1]
        assert call.operation == str(model.name)
        refused = refusals(policy, [call], region, account)
        if refused:
            raise ClientError(
                {
                    "Error": {
                        "Code": "UnauthorizedOperation",
                        "Message": "You are not authorized to perform this operation. "
                        + "; ".join(str(r) for r in refused),
                    },
                    "ResponseMetadata": {"HTTPStatusCode": 403},
                },
                str(model.name),
            )

    client.meta.events.register(f"provide-client-params.{service}", refuse)
    return seen


def rule_tags(client: Any) -> TagLookup:
    """Tags of security-group rules (and groups) by ID, read through ``client``."""

    def lookup(ids: Sequence[str]) -> dict[str, dict[str, str]]:
        rules = [i for i in ids if i.startswith("sgr-")]
        out: dict[str, dict[str, str]] = {}
        if rules:
            page = client.describe_security_group_rules(
                Filters=[{"Name": "security-group-rule-id", "Values": rules}], MaxResults=1000
            )
            for rule in page["SecurityGroupRules"]:
                out[str(rule["SecurityGroupRuleId"])] = {
                    str(t["Key"]): str(t.get("Value", "")) for t in rule.get("Tags", [])
                }
        return out

    return lookup
