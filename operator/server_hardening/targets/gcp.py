"""GCP VPC firewall rules through the Compute Engine v1 API: the only module importing google.cloud.

- **Observe**: one filtered, paged ``firewalls.list`` (``network eq ".*/global/networks/<n>$"``)
  per reconcile. A rule is *owned* when its name carries this resource's prefix
  (``ownership.gcp_name_prefix``) and its description this resource's mark; a mark of another
  resource sets :attr:`ObservedItem.owner`; the rest are unmanaged, judged by
  :func:`~server_hardening.policy.gcp.judge_firewall`.
- **Apply**: a quota check first (``projects.get``, the FIREWALLS metric), so a plan that cannot
  fit writes nothing; then inserts, then in-place updates (PUT: the whole rule is replaced, so a
  field that must become empty does), then deletes, and deletes only when every insert and update
  succeeded. Every write carries a ``requestId`` (a UUID kept across retries), so a retried insert
  is not applied twice; every returned operation is waited for and its error surfaced.
- **Errors**: 429/``rateLimitExceeded`` and 5xx/connection errors are retried by the shared
  :class:`~server_hardening.targets.retry.Retrier` (full jitter, a sleep budget per pass), then
  raise
  :class:`~server_hardening.targets.base.TransientTargetError`; ``quotaExceeded`` becomes a
  ``QuotaExceeded`` finding with the numbers; other 403s and 401 raise
  :class:`~server_hardening.targets.base.PermanentTargetError` naming the missing permission; 409 on
  insert of a rule that is already there as desired counts as success.
- **Release**: ``delete=True`` deletes the owned rules; ``delete=False`` (orphan) patches their
  descriptions so they no longer carry the mark (the rows stay readable): they are left in place,
  unmanaged. A resource re-created under the same name takes such a rule back when its insert meets
  it (same name prefix, no other resource's mark).

The operation clients are built here, not taken from ``FirewallsClient.insert(...).result()``:
that helper polls through a ``GlobalOperationsClient`` built without the caller's
``client_options``, i.e. against compute.googleapis.com whatever the endpoint override says.
"""

from __future__ import annotations

import functools
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth import credentials as gauth_credentials
from google.auth import exceptions as gauth_exceptions
from google.cloud import compute_v1

from server_hardening.drift import DesiredItem, ObservedItem, Plan, UnmanagedJudge, fingerprint
from server_hardening.model import GcpSpec, ResourceRef, UnmanagedRules
from server_hardening.ownership import (
    description_owner,
    gcp_name_prefix,
    owner_key,
    released_description,
)
from server_hardening.policy.gcp import judge_firewall
from server_hardening.renderers.gcp import (
    TARGET,
    FirewallBody,
    RenderedFirewalls,
    firewall_items,
    normalise_firewall,
    render_firewalls,
)
from server_hardening.rules import Finding, FindingCode, Rule, Severity
from server_hardening.targets.base import (
    ApiCallRecorder,
    ApplyResult,
    Observation,
    PermanentTargetError,
    TransientTargetError,
    ignore_call,
)
from server_hardening.targets.retry import Retrier, RetryPolicy, Verdict

T = TypeVar("T")

PAGE_SIZE = 500
CALL_TIMEOUT = 30.0
THROTTLE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"}
QUOTA_REASONS = {"quotaExceeded", "QUOTA_EXCEEDED"}
PERMISSIONS = {
    "firewalls.list": "compute.firewalls.list",
    "firewalls.get": "compute.firewalls.get",
    "firewalls.insert": "compute.firewalls.create",
    "firewalls.update": "compute.firewalls.update",
    "firewalls.patch": "compute.firewalls.update",
    "firewalls.delete": "compute.firewalls.delete",
    "globalOperations.wait": "compute.globalOperations.get",
    "projects.get": "compute.projects.get",
}
_PERMISSION_RE = re.compile(r"Required '([A-Za-z0-9_.]+)' permission")
_LIMIT_RE = re.compile(r"Limit:\s*([0-9.]+)")


@dataclass(frozen=True)
class GcpClients:
    firewalls: compute_v1.FirewallsClient
    operations: compute_v1.GlobalOperationsClient
    projects: compute_v1.ProjectsClient


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
    )


_Send = Callable[[str], compute_v1.Operation]


class _QuotaError(Exception):
    pass


class _OperationError(Exception):
    pass


def _reason(exc: gexc.GoogleAPICallError) -> str:
    if exc.reason:
        return str(exc.reason)
    for err in exc.errors or ():
        if isinstance(err, dict) and err.get("reason"):
            return str(err["reason"])
    return ""


def _kind(exc: Exception) -> str:  # noqa: PLR0911 - one answer per error family
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
    if isinstance(exc, gexc.ServerError):
        return "transient"
    if isinstance(exc, gexc.Forbidden | gexc.PermissionDenied):
        return "permission"
    if isinstance(exc, gexc.Unauthorized | gexc.Unauthenticated):
        return "auth"
    return "other"


def classify(exc: Exception) -> Verdict:
    """Retry throttling, 5xx and connection errors; the rest is final."""
    kind = _kind(exc)
    if kind == "throttled":
        return Verdict("throttled", retry=True, why=_message(exc))
    if kind == "transient":
        return Verdict("transient_error", retry=True, why=_message(exc))
    return Verdict("error")


def _message(exc: Exception) -> str:
    return str(getattr(exc, "message", "") or exc)


def _to_dict(firewall: compute_v1.Firewall) -> dict[str, Any]:
    text = compute_v1.Firewall.to_json(
        firewall, indent=None, always_print_fields_with_no_presence=False
    )
    out: dict[str, Any] = json.loads(text)
    return out


def _to_firewall(body: dict[str, Any] | Any) -> compute_v1.Firewall:
    firewall: compute_v1.Firewall = compute_v1.Firewall.from_json(json.dumps(dict(body)))
    return firewall


class GcpTarget:
    """The ``gcp`` target: VPC firewall rules of one network (see the module doc)."""

    name = TARGET

    def __init__(
        self,
        rendered: RenderedFirewalls,
        gcp: GcpSpec,
        owner: ResourceRef,
        *,
        unmanaged_rules: UnmanagedRules = UnmanagedRules.REPORT,
        client_factory: ClientFactory | None = None,
        record_call: ApiCallRecorder = ignore_call,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        operation_wait_rounds: int = 20,
    ) -> None:
        self.rendered = rendered
        self.gcp = gcp
        self.owner = owner
        self.unmanaged_rules = unmanaged_rules
        self._factory: ClientFactory = client_factory or make_clients
        self._clients: GcpClients | None = None
        self._retrier = Retrier(retry, record_call, sleep=sleep)
        self._wait_rounds = operation_wait_rounds
        self._prefix = gcp_name_prefix(owner)

    @classmethod
    def from_rules(
        cls, rules: Sequence[Rule], gcp: GcpSpec, owner: ResourceRef, **kwargs: Any
    ) -> GcpTarget:
        return cls(render_firewalls(rules, gcp, owner), gcp, owner, **kwargs)

    # -- Target protocol -----------------------------------------------------------------------

    def desired(self) -> Sequence[DesiredItem[FirewallBody]]:
        return firewall_items(self.rendered)

    def observe(self) -> Observation[FirewallBody]:
        self._retrier.new_pass()
        items = [self._observed(body) for body in self._list()]
        return Observation(items=tuple(items), findings=self.rendered.findings)

    def judge_unmanaged(self) -> UnmanagedJudge[FirewallBody]:
        rendered = self.rendered

        def judge(item: ObservedItem[FirewallBody]) -> Finding | None:
            return judge_firewall(item.payload, rendered)

        return judge

    def apply(self, plan: Plan[FirewallBody]) -> ApplyResult:
        self._retrier.new_pass()
        result = ApplyResult()
        if plan.empty:
            return result
        try:
            if plan.create and not self._quota_allows(len(plan.create), result):
                return result
            for item in plan.create:
                self._create(item, result)
            for change in plan.update:
                if self._update(change.desired, result):
                    result.updated += 1
        except _QuotaError as exc:
            result.findings.append(self._quota_finding(str(exc)))
            result.errors.append(f"quota exceeded: {exc}; nothing further was written")
            return result
        if result.errors:
            result.errors.append(
                "deletes skipped: not every insert or update succeeded, and removing first "
                "could leave access narrower than both the old and the new rules"
            )
            return result
        for stale in plan.delete:
            if self._delete(stale.native_id or stale.key, result):
                result.deleted += 1
        if self.unmanaged_rules is UnmanagedRules.REMOVE:
            for unmanaged in plan.remove_unmanaged:
                if self._delete(unmanaged.native_id or unmanaged.key, result):
                    result.removed_unmanaged += 1
        return result

    def release(self, observed: Observation[FirewallBody], *, delete: bool) -> ApplyResult:
        self._retrier.new_pass()
        result = ApplyResult()
        for item in observed.items:
            if not item.owned:
                continue
            name = item.native_id or item.key
            if delete:
                if self._delete(name, result):
                    result.deleted += 1
                continue
            description = released_description(str(item.payload.get("description", "")))
            errors = len(result.errors)
            self._write(
                "firewalls.patch",
                name,
                self._sender(
                    self._c.firewalls.patch_unary,
                    compute_v1.PatchFirewallRequest(
                        project=self.gcp.project,
                        firewall=name,
                        firewall_resource=compute_v1.Firewall(description=description),
                    ),
                ),
                result,
            )
            if len(result.errors) == errors:
                result.updated += 1
        return result

    # -- observing -----------------------------------------------------------------------------

    @property
    def _c(self) -> GcpClients:
        if self._clients is None:
            self._clients = self._factory(self.gcp)
        return self._clients

    def list_filter(self) -> str:
        return f'network eq ".*/global/networks/{self.gcp.network}$"'

    def _list(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            request = compute_v1.ListFirewallsRequest(
                project=self.gcp.project,
                filter=self.list_filter(),
                max_results=PAGE_SIZE,
                page_token=token,
            )
            pager = self._call(
                "firewalls.list",
                self.gcp.network,
                functools.partial(
                    self._c.firewalls.list, request=request, retry=None, timeout=CALL_TIMEOUT
                ),
            )
            # The pager's attributes are the first page's; later pages are asked for here, so
            # each page is one retried, recorded call.
            out.extend(_to_dict(f) for f in pager.items)
            token = pager.next_page_token
            if not token:
                return out

    def _observed(self, body: FirewallBody) -> ObservedItem[FirewallBody]:
        name = str(body.get("name", ""))
        marked = description_owner(str(body.get("description", "")))
        mine = owner_key(self.owner)
        return ObservedItem(
            key=name,
            fingerprint=fingerprint(normalise_firewall(body, self.gcp.project)),
            payload=body,
            owned=name.startswith(self._prefix) and marked == mine,
            native_id=name,
            owner=marked if marked and marked != mine else "",
        )

    # -- writing -------------------------------------------------------------------------------

    def _quota_allows(self, inserts: int, result: ApplyResult) -> bool:
        project = self._call(
            "projects.get",
            self.gcp.project,
            lambda: self._c.projects.get(
                project=self.gcp.project, retry=None, timeout=CALL_TIMEOUT
            ),
        )
        for quota in project.quotas:
            if quota.metric != "FIREWALLS":
                continue
            free = int(quota.limit - quota.usage)
            if inserts > free:
                result.findings.append(
                    Finding(
                        Severity.ERROR,
                        FindingCode.QUOTA_EXCEEDED,
                        f"the FIREWALLS quota of project {self.gcp.project} is "
                        f"{quota.limit:.0f} with {quota.usage:.0f} in use: {inserts} new "
                        f"rule(s) need {inserts - free} more; nothing was written (raise the "
                        "quota or remove rules)",
                        target=TARGET,
                    )
                )
                result.errors.append(
                    f"FIREWALLS quota: {inserts} insert(s) needed, {max(free, 0)} free"
                )
                return False
        return True

    def _quota_finding(self, message: str) -> Finding:
        limit = _LIMIT_RE.search(message)
        numbers = f" (limit {limit[1]})" if limit else ""
        return Finding(
            Severity.ERROR,
            FindingCode.QUOTA_EXCEEDED,
            f"project {self.gcp.project} ran out of firewall quota{numbers} while applying: "
            f"{message}; later changes were not written",
            target=TARGET,
        )

    def _create(self, item: DesiredItem[FirewallBody], result: ApplyResult) -> None:
        errors = len(result.errors)
        try:
            self._write(
                "firewalls.insert",
                item.key,
                self._sender(
                    self._c.firewalls.insert_unary,
                    compute_v1.InsertFirewallRequest(
                        project=self.gcp.project, firewall_resource=_to_firewall(item.payload)
                    ),
                ),
                result,
                raise_conflict=True,
            )
        except gexc.Conflict:
            self._resolve_conflict(item, result)
            return
        if len(result.errors) == errors:
            result.created += 1

    def _resolve_conflict(self, item: DesiredItem[FirewallBody], result: ApplyResult) -> None:
        """409 on insert: the name is taken. Identical: success. Ours by name and unmarked by
        anyone else (an orphaned rule of a resource of the same name): take it back."""
        existing = _to_dict(
            self._call(
                "firewalls.get",
                item.key,
                lambda: self._c.firewalls.get(
                    project=self.gcp.project,
                    firewall=item.key,
                    retry=None,
                    timeout=CALL_TIMEOUT,
                ),
            )
        )
        if fingerprint(normalise_firewall(existing, self.gcp.project)) == item.fingerprint:
            result.created += 1
            return
        other = description_owner(str(existing.get("description", "")))
        if item.key.startswith(self._prefix) and other in ("", owner_key(self.owner)):
            if self._update(item, result):
                result.updated += 1
                result.findings.append(
                    Finding(
                        Severity.INFO,
                        FindingCode.FIREWALL_ADOPTED,
                        f"{item.key} existed without this resource's mark (released earlier?) "
                        "and was taken back",
                        target=TARGET,
                    )
                )
            return
        result.errors.append(
            f"firewalls.insert {item.key}: the name is taken by a rule "
            f"{'of ' + other if other else 'this resource does not own'}"
        )

    def _update(self, item: DesiredItem[FirewallBody], result: ApplyResult) -> bool:
        """PUT the whole desired rule in place (so fields that must become empty do)."""
        errors = len(result.errors)
        self._write(
            "firewalls.update",
            item.key,
            self._sender(
                self._c.firewalls.update_unary,
                compute_v1.UpdateFirewallRequest(
                    project=self.gcp.project,
                    firewall=item.key,
                    firewall_resource=_to_firewall(item.payload),
                ),
            ),
            result,
        )
        return len(result.errors) == errors

    @staticmethod
    def _sender(method: Callable[..., compute_v1.Operation], request: Any) -> _Send:
        """A call that stamps ``request_id`` on the request: the same ID on every retry."""

        def send(request_id: str) -> compute_v1.Operation:
            request.request_id = request_id
            return method(request=request, retry=None, timeout=CALL_TIMEOUT)

        return send

    def _delete(self, name: str, result: ApplyResult) -> bool:
        errors = len(result.errors)
        try:
            self._write(
                "firewalls.delete",
                name,
                self._sender(
                    self._c.firewalls.delete_unary,
                    compute_v1.DeleteFirewallRequest(project=self.gcp.project, firewall=name),
                ),
                result,
                raise_not_found=True,
            )
        except gexc.NotFound:
            return True  # already gone: the goal is met
        return len(result.errors) == errors

    def _write(
        self,
        operation: str,
        resource: str,
        send: _Send,
        result: ApplyResult,
        *,
        raise_conflict: bool = False,
        raise_not_found: bool = False,
    ) -> None:
        """One write and its operation. Per-change API refusals land in ``result.errors``;
        throttling past the budget, permissions and quota raise."""
        request_id = str(uuid.uuid4())
        try:
            op = self._call(operation, resource, lambda: send(request_id))
            self._wait(op, operation, resource)
        except gexc.Conflict:
            if raise_conflict:
                raise
            result.errors.append(f"{operation} {resource}: conflict")
        except gexc.NotFound as exc:
            if raise_not_found:
                raise
            result.errors.append(f"{operation} {resource}: {_message(exc)}")
        except (gexc.GoogleAPICallError, _OperationError) as exc:
            result.errors.append(f"{operation} {resource}: {_message(exc)}")

    def _wait(self, op: compute_v1.Operation, operation: str, resource: str) -> None:
        rounds = 0
        while op.status != compute_v1.Operation.Status.DONE:
            rounds += 1
            if rounds > self._wait_rounds:
                raise TransientTargetError(
                    f"operation {op.name} for {operation} {resource} is not done yet",
                    operation=operation,
                    resource=resource,
                )
            op = self._call(
                "globalOperations.wait",
                op.name,
                functools.partial(
                    self._c.operations.wait,
                    project=self.gcp.project,
                    operation=op.name,
                    retry=None,
                    timeout=CALL_TIMEOUT,
                ),
            )
        errors = list(op.error.errors) if op.error else []
        if errors:
            codes = {e.code for e in errors}
            text = "; ".join(f"{e.code}: {e.message}" for e in errors)
            if codes & QUOTA_REASONS:
                raise _QuotaError(text)
            raise _OperationError(f"operation {op.name} failed: {text}")

    # -- one call, with retries and error translation -------------------------------------------

    def _call(self, operation: str, resource: str, fn: Callable[[], T]) -> T:
        """One call: the shared retry loop, then this SDK's errors translated once."""
        try:
            return self._retrier.call(operation, resource, fn, classify)
        except Exception as exc:
            kind = _kind(exc)
            if kind == "quota":
                raise _QuotaError(_message(exc)) from exc
            if kind in ("permission", "auth"):
                raise self._permanent(operation, resource, exc) from exc
            raise

    def _permanent(self, operation: str, resource: str, exc: Exception) -> PermanentTargetError:
        message = _message(exc)
        found = _PERMISSION_RE.search(message)
        permission = found[1] if found else PERMISSIONS.get(operation, "")
        if isinstance(exc, gauth_exceptions.GoogleAuthError | gexc.Unauthorized):
            text = f"{operation} {resource}: the credentials were refused: {message}"
        else:
            text = (
                f"{operation} {resource}: permission {permission} is missing on project "
                f"{self.gcp.project} (see deploy/gcp/iam-role.yaml): {message}"
            )
        return PermanentTargetError(text, operation=operation, resource=resource)


def owned_names(items: Iterable[ObservedItem[FirewallBody]]) -> list[str]:
    return sorted(i.key for i in items if i.owned)
