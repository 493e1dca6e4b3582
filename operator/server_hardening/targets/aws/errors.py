"""AWS errors, translated once: the EC2 client's configuration, which error codes mean what,
and the two errors an apply or release raises with what it got done. The only place that reads
botocore's errors."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from server_hardening.model import AwsSpec
from server_hardening.targets.base import (
    ApplyResult,
    PermanentTargetError,
    TargetError,
    TransientTargetError,
)
from server_hardening.targets.retry import Verdict

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

_SG_ID = re.compile(r"\bsg-[0-9a-f]{8,17}\b")

THROTTLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "EC2ThrottledException",
        "SlowDown",
    }
)
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
    }
)
# The identity is known but its policy does not allow this one call: that call's step fails,
# the other steps of the pass go on (PermissionRefusedError).
PERMISSION_CODES = frozenset({"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"})
AUTH_CODES = PERMISSION_CODES | frozenset(
    {
        "AuthFailure",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "UnrecognizedClientException",
        "ExpiredToken",
        "OptInRequired",
        "Blocked",
    }
)
GROUP_MISSING_CODES = frozenset(
    {"InvalidGroup.NotFound", "InvalidGroupId.NotFound", "InvalidGroupId.Malformed"}
)
DUPLICATE_CODES = frozenset({"InvalidPermission.Duplicate"})
RULE_GONE_CODES = frozenset({"InvalidPermission.NotFound", "InvalidSecurityGroupRuleId.NotFound"})
QUOTA_CODES = frozenset({"RulesPerSecurityGroupLimitExceeded"})

# The statement of deploy/aws/iam-policy.json that allows each call (docs/aws.md, "IAM"), named
# in the error when AWS refuses the call.
POLICY_STATEMENTS = {
    "DescribeSecurityGroups": "ReadSecurityGroupsAndTheMachinesBehindThem",
    "DescribeSecurityGroupRules": "ReadSecurityGroupsAndTheMachinesBehindThem",
    "DescribeNetworkInterfaces": "ReadSecurityGroupsAndTheMachinesBehindThem",
    "DescribeInstances": "ReadSecurityGroupsAndTheMachinesBehindThem",
    "DescribeSubnets": "ReadSecurityGroupsAndTheMachinesBehindThem",
    "DescribeNetworkAcls": "ReadSecurityGroupsAndTheMachinesBehindThem",
    "DescribeAutoScalingGroups": "ReadSecurityGroupsAndTheMachinesBehindThem",
    "AuthorizeSecurityGroupIngress": "ChangeRulesOfTheManagedGroupsOnly (and, for the tags it "
    "writes, MarkRulesAsThisResourcesOnly)",
    "AuthorizeSecurityGroupEgress": "ChangeRulesOfTheManagedGroupsOnly (and, for the tags it "
    "writes, MarkRulesAsThisResourcesOnly)",
    "RevokeSecurityGroupIngress": "ChangeRulesOfTheManagedGroupsOnly",
    "RevokeSecurityGroupEgress": "ChangeRulesOfTheManagedGroupsOnly",
    "ModifySecurityGroupRules": "ChangeRulesOfTheManagedGroupsOnly",
    "CreateTags": "MarkRulesAsThisResourcesOnly",
    "DeleteTags": "DropOnlyThisResourcesMarks",
}

_CONNECTION_ERRORS = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
)


def client_config() -> Config:
    """Retries are the adapter's own (bounded, jittered, every attempt recorded), so botocore
    makes one attempt per call: ``standard`` mode with ``total_max_attempts=1``. Letting both
    retry would multiply attempts and hide throttling from the metrics."""
    return Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=30,
        user_agent_extra="server-hardening",
    )


def default_client(aws: AwsSpec) -> EC2Client:
    """The default credential chain; region from the spec; endpoint ``spec.aws.endpointUrl``,
    else botocore's own ``AWS_ENDPOINT_URL_EC2``/``AWS_ENDPOINT_URL``, else the regional one."""
    session = boto3.session.Session()
    return session.client(
        "ec2",
        region_name=aws.region,
        endpoint_url=aws.endpoint_url or None,
        config=client_config(),
    )


def autoscaling_client_like(ec2: Any, aws: AwsSpec) -> Any:
    """An Auto Scaling client with the EC2 client's credentials and region; its endpoint is the
    EC2 one only where the spec overrides it (a private endpoint, the tests' double)."""
    session = boto3.session.Session()
    return session.client(
        "autoscaling",
        region_name=aws.region,
        endpoint_url=aws.endpoint_url or _endpoint_override(ec2),
        config=client_config(),
    )


def _endpoint_override(ec2: Any) -> str | None:
    """The EC2 client's endpoint when it is not AWS's own (a double, a VPC endpoint)."""
    url = str(getattr(getattr(ec2, "meta", None), "endpoint_url", "") or "")
    return url if url and not url.endswith(".amazonaws.com") else None


class AlreadyDoneError(Exception):
    """An error code the caller said means "already done" (a duplicate rule, a rule gone)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class GroupChangeRefusedError(Exception):
    """A 4xx that concerns one group's change, not the whole target (bad parameter, quota)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class PermissionRefusedError(PermanentTargetError):
    """The operator's identity may not make this call (its IAM policy refused it). Permanent for
    this call, but only this call's step fails: the rest of the pass goes on."""


def iam_resource(resource: str) -> str:
    """The resource a call was about, as its ARN's resource part (``security-group/sg-1``)."""
    first = resource.split(",", maxsplit=1)[0]
    if first.startswith("sgr-"):
        return f"security-group-rule/{resource}"
    if first.startswith("sg-"):
        return f"security-group/{resource}"
    return resource


class _StoppedApplyError(TargetError):
    """An error that stopped an apply or release; ``result`` says what was applied before it."""

    def __init__(
        self, message: str, *, operation: str = "", resource: str = "", result: ApplyResult
    ) -> None:
        super().__init__(message, operation=operation, resource=resource)
        self.result = result


class AwsPermanentError(_StoppedApplyError, PermanentTargetError):
    """A permanent error during apply/release."""


class AwsTransientError(_StoppedApplyError, TransientTargetError):
    """Retries ran out during apply/release."""


def _code(exc: ClientError) -> tuple[str, str, int]:
    error = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return str(error.get("Code", "")), str(error.get("Message", "")), status


def classify(exc: Exception, benign: frozenset[str] = frozenset()) -> Verdict:
    """One failed attempt: retry throttling, 5xx and dropped connections; the rest is final."""
    if isinstance(exc, ClientError):
        code, message, status = _code(exc)
        if code in benign:
            return Verdict("ok")
        if code in THROTTLE_CODES:
            return Verdict("throttled", retry=True, why=f"{code}: {message}")
        if code in TRANSIENT_CODES or status >= 500:
            return Verdict("transient_error", retry=True, why=f"{code}: {message}")
        return Verdict("error")
    if isinstance(exc, _CONNECTION_ERRORS):
        return Verdict("transient_error", retry=True, why=str(exc))
    return Verdict("error")


def translate(  # noqa: PLR0911 - one answer per error family
    exc: Exception,
    operation: str,
    resource: str,
    *,
    region: str,
    role_of: Callable[[str], str],
    benign: frozenset[str] = frozenset(),
) -> Exception:
    """A final (not retried) SDK error as what the adapter raises: :class:`AlreadyDoneError`,
    :class:`GroupChangeRefusedError` (one group's change), or a permanent target error naming the
    group, the missing IAM action or the credentials."""
    if isinstance(exc, ClientError):
        code, message, _ = _code(exc)
        if code in benign:
            return AlreadyDoneError(code)
        if code in GROUP_MISSING_CODES:
            # Name the group the error is about: the call's own group, or one its rules
            # reference (AWS puts the ID in the message).
            named = [g for g in dict.fromkeys(_SG_ID.findall(message)) if g] or resource.split(",")
            groups = ", ".join(
                f"{g} (spec.aws.securityGroups.{role_of(g)})" if role_of(g) else g for g in named
            )
            return PermanentTargetError(
                f"{operation} on {resource}: security group {groups} does not exist in "
                f"{region} ({code}: {message})",
                operation=operation,
                resource=",".join(named),
            )
        if code in PERMISSION_CODES:
            statement = POLICY_STATEMENTS.get(operation, "")
            allows = (
                f"; the shipped policy's statement {statement} (deploy/aws/iam-policy.json) "
                "allows it"
                if statement
                else "; deploy/aws/iam-policy.json does not grant it"
            )
            service = "autoscaling" if operation == "DescribeAutoScalingGroups" else "ec2"
            return PermissionRefusedError(
                f"{service}:{operation} on {iam_resource(resource)}: refused ({code}){allows} "
                f"({message})",
                operation=operation,
                resource=resource,
            )
        if code in AUTH_CODES:
            return PermanentTargetError(
                f"{operation} on {resource} was refused ({code}): the operator's AWS identity "
                f"lacks ec2:{operation} or its credentials are invalid; see "
                f"deploy/aws/iam-policy.json ({message})",
                operation=operation,
                resource=resource,
            )
        return GroupChangeRefusedError(code, message)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | NoRegionError):
        return PermanentTargetError(
            f"{operation}: no usable AWS credentials or region ({exc}); give the operator's "
            "ServiceAccount an IAM role (IRSA: the eks.amazonaws.com/role-arn annotation, "
            "values-aws.yaml, with deploy/aws/iam-policy.json) or set the AWS_* environment",
            operation=operation,
            resource=resource,
        )
    if isinstance(exc, BotoCoreError):
        return PermanentTargetError(
            f"{operation} on {resource}: {exc}", operation=operation, resource=resource
        )
    return exc


@contextmanager
def saying_what_was_applied(result: ApplyResult) -> Iterator[None]:
    """Re-raise an error that stops an apply or release with what was and was not applied."""
    try:
        yield
    except (PermanentTargetError, TransientTargetError) as exc:
        kind = AwsPermanentError if isinstance(exc, PermanentTargetError) else AwsTransientError
        raise kind(
            f"{exc}; {_summary(result)}",
            operation=exc.operation,
            resource=exc.resource,
            result=result,
        ) from exc


def _summary(result: ApplyResult) -> str:
    done = (
        f"applied before the error: created {result.created}, updated {result.updated}, "
        f"deleted {result.deleted}, removed unmanaged {result.removed_unmanaged}"
    )
    if result.errors:
        done += "; not applied: " + " | ".join(result.errors)
    return done
