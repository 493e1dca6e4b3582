"""GCP VPC firewall rules through the Compute Engine v1 API (with :mod:`.client`, the only code
importing google.cloud).

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
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from server_hardening.drift import (
    Claim,
    Claimer,
    DesiredItem,
    ObservedItem,
    Plan,
    UnmanagedJudge,
    Update,
    fingerprint,
)
from server_hardening.model import GcpSpec, ResourceRef, UnmanagedRules
from server_hardening.ownership import (
    description_owner,
    description_uid,
    gcp_name_prefix,
    installation_owner_key,
    released_description,
)
from server_hardening.policy.gcp import (
    judge_firewall,
    judge_firewall_policies,
    judge_foreign_firewall,
)
from server_hardening.policy.owners import gcp_firewall_controller
from server_hardening.renderers.gcp import (
    TARGET,
    FirewallBody,
    RenderedFirewalls,
    firewall_items,
    normalise_firewall,
    render_firewalls,
)
from server_hardening.rules import Finding, FindingCode, Rule
from server_hardening.targets.base import (
    ApiCallRecorder,
    ApplyResult,
    Observation,
    PermanentTargetError,
    TransientTargetError,
    ignore_call,
)
from server_hardening.targets.gcp.client import (
    CALL_TIMEOUT,
    LIMIT_RE,
    PAGE_SIZE,
    QUOTA_REASONS,
    ClientFactory,
    GcpClients,
    OperationFailedError,
    QuotaExhaustedError,
    Send,
    classify,
    kind_of,
    make_clients,
    message_of,
    permanent_error,
    policies_to_dicts,
    to_dict,
    to_firewall,
)
from server_hardening.targets.retry import Retrier, RetryPolicy

T = TypeVar("T")


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
        self._prefix = gcp_name_prefix(owner, gcp.installation_id)
        self._mine = installation_owner_key(owner, gcp.installation_id)

    @classmethod
    def from_rules(
        cls, rules: Sequence[Rule], gcp: GcpSpec, owner: ResourceRef, **kwargs: Any
    ) -> GcpTarget:
        return cls(render_firewalls(rules, gcp, owner), gcp, owner, **kwargs)

    # -- Target protocol -----------------------------------------------------------------------

    def desired(self) -> Sequence[DesiredItem[FirewallBody]]:
        return firewall_items(self.rendered)

    def observe(self) -> Observation[FirewallBody]:
        """One paged list of the network's VPC rules, and its effective firewall policies
        (hierarchical and network: Google evaluates them before the VPC rules, so one of
        them can undo a guide row that no VPC rule could)."""
        self._retrier.new_pass()
        items = [self._observed(body) for body in self._list()]
        return Observation(
            items=tuple(items), findings=(*self.rendered.findings, *self._policy_findings())
        )

    def _policy_findings(self) -> list[Finding]:
        try:
            response = self._call(
                "networks.getEffectiveFirewalls",
                self.gcp.network,
                functools.partial(
                    self._api.networks.get_effective_firewalls,
                    project=self.gcp.project,
                    network=self.gcp.network,
                    retry=None,
                    timeout=CALL_TIMEOUT,
                ),
            )
        except PermanentTargetError as exc:
            # Reading policies is an extra: without the permission the VPC rules are still
            # enforced; say what is not seen.
            return [
                Finding.of(
                    FindingCode.FIREWALL_POLICY_OVERRIDES,
                    f"the network's firewall policies cannot be read ({exc}); a hierarchical or "
                    "network firewall policy could override the guide unseen",
                    target=TARGET,
                )
            ]
        return judge_firewall_policies(policies_to_dicts(response), self.rendered)

    def judge_foreign(self) -> UnmanagedJudge[FirewallBody]:
        rendered = self.rendered

        def judge(item: ObservedItem[FirewallBody]) -> Finding | None:
            return judge_foreign_firewall(item.payload, item.controller, rendered)

        return judge

    def claimer(self) -> Claimer[FirewallBody]:
        """An unmarked rule under one of our names (the prefix is a digest of this resource):
        adopted when it is exactly the desired rule, else taken back (its marks were stripped,
        or an orphaning release left it)."""
        project = self.gcp.project
        logging = self.rendered.manages_logging

        def content(body: FirewallBody) -> dict[str, Any]:
            normal = normalise_firewall(body, project, with_logging=logging)
            normal.pop("description", None)
            return normal

        def claim(
            item: ObservedItem[FirewallBody], desired: DesiredItem[FirewallBody]
        ) -> Claim | None:
            if not item.key.startswith(self._prefix):
                return None
            return (
                Claim.ADOPT
                if content(item.payload) == content(desired.payload)
                else Claim.TAKE_BACK
            )

        return claim

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
            for adoption in plan.adopt:
                if self._update(self._keeping_logging(adoption), result):
                    result.adopted += 1
            for item in plan.create:
                self._create(item, result)
            for change in plan.update:
                if self._update(self._keeping_logging(change), result):
                    result.updated += 1
        except QuotaExhaustedError as exc:
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
                    self._api.firewalls.patch_unary,
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
    def _api(self) -> GcpClients:
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
                    self._api.firewalls.list, request=request, retry=None, timeout=CALL_TIMEOUT
                ),
            )
            # The pager's attributes are the first page's; later pages are asked for here, so
            # each page is one retried, recorded call.
            out.extend(to_dict(f) for f in pager.items)
            token = pager.next_page_token
            if not token:
                return out

    def _observed(self, body: FirewallBody) -> ObservedItem[FirewallBody]:
        """Ownership by the mark, never by the name alone: ours when the name has our prefix
        and the mark is ours (this namespace/name and installation, and this resource's UID when
        the mark records one). A mark of our namespace/name with another UID is another
        cluster's resource of the same name: a clash, named and never overwritten. Another
        resource's rules count as a conflict only where they reach our managed tags."""
        name = str(body.get("name", ""))
        description = str(body.get("description", ""))
        marked = description_owner(description)
        uid = description_uid(description)
        ours = marked == self._mine and (not uid or not self.owner.uid or uid == self.owner.uid)
        other = ""
        if marked and not ours and (name.startswith(self._prefix) or self._reaches_our_tags(body)):
            other = marked if marked != self._mine else f"{marked} in another cluster (uid {uid})"
        return ObservedItem(
            key=name,
            fingerprint=fingerprint(
                normalise_firewall(
                    body, self.gcp.project, with_logging=self.rendered.manages_logging
                )
            ),
            payload=body,
            owned=name.startswith(self._prefix) and ours,
            native_id=name,
            owner=other,
            controller="" if marked else gcp_firewall_controller(name, description),
        )

    def _reaches_our_tags(self, body: FirewallBody) -> bool:
        targets = set(body.get("targetTags") or [])
        return not targets or bool(targets & set(self.rendered.tags.values()))

    def _keeping_logging(self, change: Update[FirewallBody]) -> DesiredItem[FirewallBody]:
        """A PUT replaces the whole rule: with ``logging: Keep`` the rule's own logConfig rides
        along, so a repair never switches Firewall Rules Logging off."""
        kept = change.observed.payload.get("logConfig")
        if self.rendered.manages_logging or not kept:
            return change.desired
        return replace(change.desired, payload={**change.desired.payload, "logConfig": kept})

    # -- writing -------------------------------------------------------------------------------

    def _quota_allows(self, inserts: int, result: ApplyResult) -> bool:
        project = self._call(
            "projects.get",
            self.gcp.project,
            lambda: self._api.projects.get(
                project=self.gcp.project, retry=None, timeout=CALL_TIMEOUT
            ),
        )
        for quota in project.quotas:
            if quota.metric != "FIREWALLS":
                continue
            free = int(quota.limit - quota.usage)
            if inserts > free:
                result.findings.append(
                    Finding.of(
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
        limit = LIMIT_RE.search(message)
        numbers = f" (limit {limit[1]})" if limit else ""
        return Finding.of(
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
                    self._api.firewalls.insert_unary,
                    compute_v1.InsertFirewallRequest(
                        project=self.gcp.project, firewall_resource=to_firewall(item.payload)
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
        existing = to_dict(
            self._call(
                "firewalls.get",
                item.key,
                lambda: self._api.firewalls.get(
                    project=self.gcp.project,
                    firewall=item.key,
                    retry=None,
                    timeout=CALL_TIMEOUT,
                ),
            )
        )
        if (
            fingerprint(
                normalise_firewall(
                    existing, self.gcp.project, with_logging=self.rendered.manages_logging
                )
            )
            == item.fingerprint
        ):
            result.created += 1
            return
        other = description_owner(str(existing.get("description", "")))
        if item.key.startswith(self._prefix) and other in ("", self._mine):
            if self._update(item, result):
                result.updated += 1
                result.findings.append(
                    Finding.of(
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
                self._api.firewalls.update_unary,
                compute_v1.UpdateFirewallRequest(
                    project=self.gcp.project,
                    firewall=item.key,
                    firewall_resource=to_firewall(item.payload),
                ),
            ),
            result,
        )
        return len(result.errors) == errors

    @staticmethod
    def _sender(method: Callable[..., compute_v1.Operation], request: Any) -> Send:
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
                    self._api.firewalls.delete_unary,
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
        send: Send,
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
            result.errors.append(f"{operation} {resource}: {message_of(exc)}")
        except (gexc.GoogleAPICallError, OperationFailedError) as exc:
            result.errors.append(f"{operation} {resource}: {message_of(exc)}")

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
                    self._api.operations.wait,
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
                raise QuotaExhaustedError(text)
            raise OperationFailedError(f"operation {op.name} failed: {text}")

    # -- one call, with retries and error translation -------------------------------------------

    def _call(self, operation: str, resource: str, fn: Callable[[], T]) -> T:
        """One call: the shared retry loop, then this SDK's errors translated once."""
        try:
            return self._retrier.call(operation, resource, fn, classify)
        except Exception as exc:
            kind = kind_of(exc)
            if kind == "quota":
                raise QuotaExhaustedError(message_of(exc)) from exc
            if kind in ("permission", "auth"):
                raise permanent_error(operation, resource, exc, self.gcp.project) from exc
            raise


def owned_names(items: Iterable[ObservedItem[FirewallBody]]) -> list[str]:
    return sorted(i.key for i in items if i.owned)
