"""The AWS target (the only package that imports boto3): :mod:`.adapter` observes and executes,
:mod:`.errors` configures the client and translates its errors; the call order is planned by
:mod:`server_hardening.planners.aws` and unmanaged rules are judged by
:mod:`server_hardening.policy.aws`."""

from server_hardening.targets.aws.adapter import AwsTarget
from server_hardening.targets.aws.errors import (
    AwsPermanentError,
    AwsTransientError,
    client_config,
    default_client,
)
from server_hardening.targets.retry import RetryPolicy

__all__ = [
    "AwsPermanentError",
    "AwsTarget",
    "AwsTransientError",
    "RetryPolicy",
    "client_config",
    "default_client",
]
