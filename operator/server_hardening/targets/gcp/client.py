"""The Compute Engine clients, and this SDK's errors translated once: which are retried, which
mean a missing permission or quota, and the conversions between the SDK's Firewall and the
project's firewall bodies. The only module besides the adapter that imports google."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth import credentials as gauth_credentials
from google.auth import exceptions as gauth_exceptions
from google.cloud import compute_v1

from server_hardening.model import GcpSpec
from server_hardening.targets.base import PermanentTargetError
from server_hardening.targets.retry import Verdict

PAGE_SIZE = 500
CALL_TIMEOUT = 30.0
THROTTLE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"}
QUOTA_REASONS = {"quotaExceeded", "QUOTA_EXCEEDED"}
# "The resource 'projects/p/global/networks/n' is not ready": the network is busy with another
# change (GKE writing its own rules, a peering). As a 400 on the write, or as the error of an
# operation that ended DONE without applying anything. Retried with backoff.
NOT_READY_REASONS = {"resourceNotReady", "RESOURCE_NOT_READY"}
# globalOperations.wait returns when the operation is DONE or near its 2-minute deadline.
WAIT_DEADLINE = 120.0
PERMISSIONS = {
    "firewalls.list": "compute.firewalls.list",
    "firewalls.get": "compute.firewalls.get",
    "firewalls.insert": "compute.firewalls.create",
    "firewalls.update": "compute.firewalls.update",
    "firewalls.patch": "compute.firewalls.update",
    "firewalls.delete": "compute.firewalls.delete",
    "globalOperations.wait": "compute.globalOperations.get",
    "projects.get": "compute.projects.get",
    "networks.getEffectiveFirewalls": "compute.networks.getEffectiveFirewalls",
    "networks.get": "compute.networks.get",
    "instances.aggregatedList": "compute.instances.list",
}
_PERMISSION_RE = re.compile(r"Required '([A-Za-z0-9_.]+)' permission")
LIMIT_RE = re.compile(r"Limit:\s*([0-9.]+)")


@dataclass(frozen=True)
class GcpClients:
    firewalls: compute_v1.FirewallsClient
    operations: compute_v1.GlobalOperationsClient
    projects: compute_v1.ProjectsClient
    networks: compute_v1.NetworksClient
    instances: compute_v1.InstancesClient


ClientFactory = Callable[[GcpSpec], GcpClients]


def make_clients(
    gcp: GcpSpec, credentials: gauth_credentials.Credentials | None = None
) -> GcpClients:
    """REST clients for ``gcp.endpoint`` (or the public endpoint). Without ``credentials``:
    Application Default Credentials (Workload Identity on GKE, a key file elsewhere)."""
    options = ClientOptions(api_endpoint=gcp.endpoint) if gcp.endpoint else None
    return GcpClients(
        firewalls=compute_v1.FirewallsClient(
            credentials=credentials, transport="rest", client_options=options
        ),
        operations=compute_v1.GlobalOperationsClient(
            credentials=credentials, transport="rest", client_options=options
        ),
        projects=compute_v1.ProjectsClient(
            credentials=credentials, transport="rest", client_options=options
        ),
        networks=compute_v1.NetworksClient(
            credentials=credentials, transport="rest", client_options=options
        ),
        instances=compute_v1.InstancesClient(
            credentials=credentials, transport="rest", client_options=options
        ),
    )


def build_clients(factory: ClientFactory, gcp: GcpSpec) -> GcpClients:
    """The clients, or a permanent error naming what to configure when no credentials can be
    found: the SDK looks for them as the clients are built (``DefaultCredentialsError``), before
    any call, so this is where that error is translated."""
    try:
        return factory(gcp)
    except gauth_exceptions.GoogleAuthError as exc:
        raise PermanentTargetError(
            f"no GCP credentials for project {gcp.project}: {message_of(exc)}; give the "
            "operator's ServiceAccount a Google service account through Workload Identity "
            "(the iam.gke.io/gcp-service-account annotation, values-gcp.yaml) or set "
            "GOOGLE_APPLICATION_CREDENTIALS to a key file",
            operation="credentials",
            resource=gcp.project,
        ) from exc


class QuotaExhaustedError(Exception):
    pass


def _reason(exc: gexc.GoogleAPICallError) -> str:
    if exc.reason:
        return str(exc.reason)
    for err in exc.errors or ():
        if isinstance(err, dict) and err.get("reason"):
            return str(err["reason"])
    return ""


def kind_of(exc: Exception) -> str:  # noqa: PLR0911 - one answer per error family
    if isinstance(exc, requests.exceptions.RequestException | ConnectionError | TimeoutError):
        return "transient"
    if isinstance(exc, gauth_exceptions.GoogleAuthError):
        return "auth"
    if not isinstance(exc, gexc.GoogleAPICallError):
        return "other"
    reason = _reason(exc)
    if isinstance(exc, gexc.TooManyRequests) or reason in THROTTLE_REASONS:
        return "throttled"
    if reason in QUOTA_REASONS:
        return "quota"
    if reason in NOT_READY_REASONS:
        return "not_ready"
    if isinstance(exc, gexc.ServerError):
        return "transient"
    if isinstance(exc, gexc.Forbidden | gexc.PermissionDenied):
        return "permission"
    if isinstance(exc, gexc.Unauthorized | gexc.Unauthenticated):
        return "auth"
    return "other"


def classify(exc: Exception) -> Verdict:
    """Retry throttling, 5xx and connection errors; the rest is final."""
    kind = kind_of(exc)
    if kind == "throttled":
        return Verdict("throttled", retry=True, why=message_of(exc))
    if kind == "transient":
        return Verdict("transient_error", retry=True, why=message_of(exc))
    if kind == "not_ready":
        # Not retried in place: the adapter sends it again after the rest of its wave, with
        # a fresh request ID (see targets/gcp/adapter.py).
        return Verdict("transient_error")
    return Verdict("error")


def wait_operation(
    clients: GcpClients, project: str, operation: str, timeout: float
) -> compute_v1.Operation | None:
    """One ``globalOperations.wait``, given at most ``timeout`` seconds on this side: ``None``
    when that ran out first (the operation's state is unknown, which is no error)."""
    try:
        return clients.operations.wait(
            project=project, operation=operation, retry=None, timeout=timeout
        )
    except requests.exceptions.ReadTimeout:
        return None


def message_of(exc: Exception) -> str:
    return str(getattr(exc, "message", "") or exc)


def to_dict(firewall: compute_v1.Firewall) -> dict[str, Any]:
    text = compute_v1.Firewall.to_json(
        firewall, indent=None, always_print_fields_with_no_presence=False
    )
    out: dict[str, Any] = json.loads(text)
    return out


def to_firewall(body: dict[str, Any] | Any) -> compute_v1.Firewall:
    firewall: compute_v1.Firewall = compute_v1.Firewall.from_json(json.dumps(dict(body)))
    return firewall


def permanent_error(
    operation: str, resource: str, exc: Exception, project: str
) -> PermanentTargetError:
    """A refusal a person must act on: refused credentials, or the permission that is missing."""
    message = message_of(exc)
    found = _PERMISSION_RE.search(message)
    permission = found[1] if found else PERMISSIONS.get(operation, "")
    if isinstance(exc, gauth_exceptions.GoogleAuthError | gexc.Unauthorized):
        text = f"{operation} {resource}: the credentials were refused: {message}"
    else:
        text = (
            f"{operation} {resource}: permission {permission} is missing on project "
            f"{project} (see deploy/gcp/iam-role.yaml): {message}"
        )
    return PermanentTargetError(text, operation=operation, resource=resource)


def policies_to_dicts(
    response: compute_v1.NetworksGetEffectiveFirewallsResponse,
) -> list[dict[str, Any]]:
    """The firewall policies of an effective-firewalls answer, as REST JSON (camelCase)."""
    out: list[dict[str, Any]] = []
    for policy in response.firewall_policys:
        text = compute_v1.NetworksGetEffectiveFirewallsResponseEffectiveFirewallPolicy.to_json(
            policy, indent=None, always_print_fields_with_no_presence=False
        )
        out.append(json.loads(text))
    return out
