"""GCP VPC firewall rules through the Compute Engine v1 API (with :mod:`.client`, the only code
importing google.cloud).

- **Observe**: one filtered, paged ``firewalls.list`` (``network eq ".*/global/networks/<n>$"``)
  per reconcile. A rule is *owned* when its name carries this resource's prefix
  (``ownership.gcp_name_prefix``) and its description this resource's mark; a mark of another
  resource sets :attr:`ObservedItem.owner`; the rest are unmanaged, judged by
  :func:`~server_hardening.policy.gcp.judge_firewall`.
- **Apply**: a quota check first (``projects.get``, the FIREWALLS metric), so a plan that cannot
  fit writes nothing; then the waves of :func:`~server_hardening.planners.gcp.plan_writes`: every
  insert and in-place update (PUT: the whole rule is replaced, so a field that must become empty
  does) of the pass sent together and waited for together, then the deletes, only once every add
  is DONE (never less access than before). Calls go from at most ``max_in_flight`` threads,
  spaced to ``requests_per_minute`` (a share of the project's rate quota); operations run side by
  side on GCP's side, so a pass takes about the slowest operation, not their sum. A pass waits at
  most ``wait_budget_seconds`` for its operations: what still runs then is reported in
  :attr:`ApplyResult.in_progress` (deletes wait for the next pass). Every write carries a
  ``requestId`` (a UUID kept across retries), so a retried insert is not applied twice.
  Cost: a no-op is one list; a change of n rules is n writes, one ``projects.get`` when it
  inserts, and about one ``globalOperations.wait`` per operation not DONE at once.
- **Errors**: 429/``rateLimitExceeded`` and 5xx/connection errors are retried by the shared
  :class:`~server_hardening.targets.retry.Retrier` (full jitter, a sleep budget per pass), then
  are that write's error; ``resourceNotReady`` (the network busy with another change, as a 400 or
  as a failed operation) sends the write again after a backoff, with a new request ID, while the
  others carry on; ``quotaExceeded`` becomes a ``QuotaExceeded`` finding with the numbers; other
  403s and 401 raise :class:`~server_hardening.targets.base.PermanentTargetError` naming the
  missing permission (the first write of a wave goes alone, so that costs one call); 409 on
  insert of a rule that is already there as desired counts as success.
- **Release**: ``delete=True`` deletes the owned rules; ``delete=False`` (orphan) patches their
  descriptions so they no longer carry the mark (the rows stay readable): they are left in place,
  unmanaged. A resource re-created under the same name takes such a rule back when its insert meets
  it (same name prefix, no other resource's mark).

The operation clients are built here, not taken from ``FirewallsClient.insert(...).result()``:
that helper polls through a ``GlobalOperationsClient`` built without the caller's
``client_options``, i.e. against compute.googleapis.com whatever the endpoint override says.

Why this module is past 500 lines: a write here is a small state machine (sent, running,
done, not-ready and sent again, failed, still running after the pass's budget) run for many
writes at once under one pacer, and the observe, the 409 take-back and the release share its
client and retrier. The pure parts are elsewhere: the waves in ``planners/gcp.py``, judging in
``policy/gcp.py``, errors and conversions in :mod:`.client`.
"""

from __future__ import annotations

import enum
import functools
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from server_hardening.drift import (
    DesiredItem,
    ObservedItem,
    Plan,
    fingerprint,
)
from server_hardening.machines import GcpMachines
from server_hardening.model import GcpSpec, ResourceRef, UnmanagedRules
from server_hardening.ownership import (
    Provenance,
    ReleaseAction,
    claimed_provenance,
    description_owner,
    description_provenance,
    description_uid,
    gcp_name_prefix,
    installation_owner_key,
    release_action,
    released_description,
    with_description_provenance,
)
from server_hardening.planners.gcp import (
    PROJECT_REQUESTS_PER_MINUTE,
    SHARE_OF_RATE_QUOTA,
    Write,
    WriteKind,
    fits_quota,
    pacing,
    plan_writes,
    recording,
)
from server_hardening.policy.gcp import (
    GcpPolicy,
    judge_firewall_policies,
)
from server_hardening.policy.owners import gcp_firewall_controller
from server_hardening.renderers.gcp import (
    TARGET,
    FirewallBody,
    RenderedFirewalls,
    normalise_firewall,
    render_firewalls,
)
from server_hardening.rules import Finding, FindingCode, Rule
from server_hardening.targets.base import (
    ApiCallRecorder,
    ApplyResult,
    Observation,
    PermanentTargetError,
    TargetError,
    TransientTargetError,
    ignore_call,
)
from server_hardening.targets.gcp.client import (
    CALL_TIMEOUT,
    LIMIT_RE,
    NOT_READY_REASONS,
    PAGE_SIZE,
    QUOTA_REASONS,
    WAIT_DEADLINE,
    ClientFactory,
    GcpClients,
    QuotaExhaustedError,
    build_clients,
    classify,
    kind_of,
    make_clients,
    message_of,
    permanent_error,
    policies_to_dicts,
    to_dict,
    to_firewall,
    wait_operation,
)
from server_hardening.targets.gcp.machines import (
    NETWORK_POLICY_AFTER_VPC,
    policy_rules_of,
    role_machines,
)
from server_hardening.targets.retry import Retrier, RetryPolicy

T = TypeVar("T")


@dataclass(frozen=True)
class _NetworkView:
    """What one observe read of the network: its VPC rules and its effective firewall policies
    (or why they could not be read), reused by :meth:`GcpTarget.observe_machines`."""

    firewalls: tuple[dict[str, Any], ...]
    policies: tuple[dict[str, Any], ...]
    unreadable: Finding | None = None


class _State(enum.Enum):
    SENDING = "sending"
    DONE = "done"
    RUNNING = "running"  # accepted, operation not DONE when the pass stopped waiting
    NOT_READY = "not_ready"  # the network was busy: send again after a backoff
    FAILED = "failed"
    SKIPPED = "skipped"  # not sent, because an earlier write was refused for good


@dataclass
class _Job:
    """One write's way through a wave (touched by one thread at a time)."""

    write: Write
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    op: compute_v1.Operation | None = None
    state: _State = _State.SENDING
    error: str = ""
    fatal: Exception | None = None
    adopted: bool = False

    def reset(self) -> None:
        self.request_id, self.op, self.state, self.error = (
            str(uuid.uuid4()),
            None,
            _State.SENDING,
            "",
        )


class _Pacer:
    """Spaces this adapter's calls at least ``interval`` seconds apart, across threads."""

    def __init__(self, interval: float = 0.0) -> None:
        self.interval = interval
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class NoSuchNetworkError(PermanentTargetError):
    """``spec.gcp.network`` names a network the project does not have."""


class GcpTarget:
    """The ``gcp`` target: VPC firewall rules of one network (see the module doc)."""

    name = TARGET

    def __init__(
        self,
        rendered: RenderedFirewalls,
        gcp: GcpSpec,
        owner: ResourceRef,
        *,
        policy: GcpPolicy | None = None,
        client_factory: ClientFactory | None = None,
        record_call: ApiCallRecorder = ignore_call,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        wait_budget_seconds: float = 90.0,
        max_in_flight: int = 8,
        requests_per_minute: float = PROJECT_REQUESTS_PER_MINUTE * SHARE_OF_RATE_QUOTA,
    ) -> None:
        self.rendered = rendered
        self.gcp = gcp
        self.owner = owner
        self._factory: ClientFactory = client_factory or make_clients
        self._clients: GcpClients | None = None
        self._retrier = Retrier(retry, record_call, sleep=sleep)
        # How long a pass waits for its operations before it reports them in progress.
        self._wait_budget = wait_budget_seconds
        self._max_in_flight = max_in_flight
        self._rpm = requests_per_minute
        self._pacer = _Pacer()
        self._stop = threading.Event()
        self._prefix = gcp_name_prefix(owner, gcp.installation_id)
        self._mine = installation_owner_key(owner, gcp.installation_id)
        # The target's judgement; built from the spec with the target (see policy.base).
        self.policy = policy or GcpPolicy(rendered, name_prefix=self._prefix)
        self._seen: _NetworkView | None = None  # the last observe's reads, for the machines

    @classmethod
    def from_rules(
        cls,
        rules: Sequence[Rule],
        gcp: GcpSpec,
        owner: ResourceRef,
        *,
        unmanaged_rules: UnmanagedRules = UnmanagedRules.REPORT,
        **kwargs: Any,
    ) -> GcpTarget:
        rendered = render_firewalls(rules, gcp, owner)
        policy = GcpPolicy(
            rendered,
            name_prefix=gcp_name_prefix(owner, gcp.installation_id),
            remove_unmanaged=unmanaged_rules is UnmanagedRules.REMOVE,
        )
        return cls(rendered, gcp, owner, policy=policy, **kwargs)

    # -- Target protocol -----------------------------------------------------------------------

    def observe(self) -> Observation[FirewallBody]:
        """One paged list of the network's VPC rules, and its effective firewall policies
        (hierarchical and network: Google evaluates them around the VPC rules, so one of
        them can undo a guide row that no VPC rule could). A network the project does not have
        is an error naming ``spec.gcp.network``. When a rule of ours is to be created, one more
        list (by our name prefix, project-wide) finds an installation of the same
        namespace/name on another network, whose names ours would collide with."""
        self._retrier.new_pass()
        bodies = self._read(lambda: self._list(self.list_filter()))
        policies, unreadable = self._effective_policies()
        self._seen = _NetworkView(tuple(bodies), policies, unreadable)
        items = [self._observed(body) for body in bodies]
        items.extend(self._read(lambda: self._clashes_elsewhere({i.key for i in items})))
        findings = (
            [unreadable]
            if unreadable is not None
            else judge_firewall_policies(list(policies), self.rendered)
        )
        return Observation(items=tuple(items), findings=(*self.rendered.findings, *findings))

    def _effective_policies(self) -> tuple[tuple[dict[str, Any], ...], Finding | None]:
        """The network's effective firewall policies (REST JSON), or the finding that says they
        cannot be read."""
        try:
            response = self._network_read(
                "networks.getEffectiveFirewalls", self._api.networks.get_effective_firewalls
            )
        except NoSuchNetworkError:
            raise
        except PermanentTargetError as exc:
            # Reading policies is an extra: without the permission the VPC rules are still
            # enforced; say what is not seen.
            return (), Finding.of(
                FindingCode.FIREWALL_POLICY_OVERRIDES,
                f"the network's firewall policies cannot be read ({exc}); a hierarchical or "
                "network firewall policy could override the guide unseen",
                target=TARGET,
            )
        return tuple(policies_to_dicts(response)), None

    def _network_read(self, operation: str, method: Callable[..., T]) -> T:
        """One read about the configured network; a network the project does not have is an
        error naming the field (:class:`NoSuchNetworkError`)."""
        try:
            return self._read(
                lambda: self._call(
                    operation,
                    self.gcp.network,
                    functools.partial(
                        method,
                        project=self.gcp.project,
                        network=self.gcp.network,
                        retry=None,
                        timeout=CALL_TIMEOUT,
                    ),
                )
            )
        except PermanentTargetError as exc:
            if isinstance(exc.__cause__, gexc.NotFound):
                raise self._no_such_network(exc, operation) from exc
            raise

    def _no_such_network(
        self, exc: Exception, operation: str = "networks.getEffectiveFirewalls"
    ) -> PermanentTargetError:
        return NoSuchNetworkError(
            f"spec.gcp.network: project {self.gcp.project} has no network "
            f"{self.gcp.network!r} ({message_of(exc)})",
            operation=operation,
            resource=self.gcp.network,
        )

    def _read(self, fn: Callable[[], T]) -> T:
        """A read whose SDK error is not retried any more becomes the pipeline's error kind: a
        busy network is transient, the rest (a 404, a 400) permanent, naming what failed."""
        try:
            return fn()
        except gexc.GoogleAPICallError as exc:
            text = f"reading project {self.gcp.project}: {message_of(exc)}"
            if kind_of(exc) == "not_ready":
                raise TransientTargetError(text, resource=self.gcp.network) from exc
            raise PermanentTargetError(text, resource=self.gcp.network) from exc

    def _clashes_elsewhere(self, here: set[str]) -> list[ObservedItem[FirewallBody]]:
        """Rules under our names on another network of the project: an installation of the same
        namespace/name (and installationId) elsewhere. Names are unique per project, so ours
        would collide with its rules: a conflict, named, before anything is written. Asked only
        when a desired rule is not on our network (a no-op pass costs nothing more)."""
        if all(d.key in here for d in self.policy.desired()):
            return []
        out: list[ObservedItem[FirewallBody]] = []
        for body in self._list(f'name eq "{re.escape(self._prefix)}.*"'):
            network = str(body.get("network", ""))
            if network.endswith(f"/projects/{self.gcp.project}/global/networks/{self.gcp.network}"):
                continue
            name = str(body.get("name", ""))
            out.append(
                ObservedItem(
                    key=name,
                    fingerprint="",
                    payload=body,
                    owned=False,
                    native_id=name,
                    owner=self._other_installation(body),
                )
            )
        return out

    def _other_installation(self, body: FirewallBody) -> str:
        """Who holds our names on another network, said so the user knows what to change."""
        network = str(body.get("network", "")).rsplit("/", 1)[-1]
        marked = description_owner(str(body.get("description", "")))
        who, _, installation = marked.partition("@")
        if marked:
            holder = f"{who} on network {network}" + (
                f" (installationId {installation!r})" if installation else " (no installationId)"
            )
        else:
            holder = (
                f"an unmarked rule {body.get('name')} on network {network} (released by an "
                "installation of the same namespace/name?)"
            )
        same = "namespace/name and installationId" if installation else "namespace/name"
        return (
            f"{holder}: it has the same {same} as this one, so their firewall names collide in "
            f"project {self.gcp.project}; set spec.gcp.installationId to a value of its own on "
            "each installation"
        )

    def observe_machines(self) -> GcpMachines:
        """The instances of each role on the network (read-only), every VPC rule of the network
        and the firewall-policy rules around them in evaluation order: what
        ``policy.effective`` evaluates per machine. Reuses this pass's :meth:`observe` when it
        ran and nothing was written since (the rules are not listed twice); costs one
        ``networks.get`` and one paged ``instances.aggregatedList`` per role tag (see
        :mod:`.machines`)."""
        seen = self._seen
        if seen is None:
            self._retrier.new_pass()
            bodies = self._read(lambda: self._list(self.list_filter()))
            policies, unreadable = self._effective_policies()
            seen = self._seen = _NetworkView(tuple(bodies), policies, unreadable)
        network = self._network_read("networks.get", self._api.networks.get)
        order = str(network.network_firewall_policy_enforcement_order or NETWORK_POLICY_AFTER_VPC)

        def call(operation: str, resource: str, fn: Callable[[], Any]) -> Any:
            return self._read(lambda: self._call(operation, resource, fn))

        roles, findings = role_machines(self._api, self.gcp, self.rendered.tags, call)
        return GcpMachines(
            roles=roles,
            firewalls=seen.firewalls,
            policy_rules=policy_rules_of(seen.policies, network_order=order),
            findings=(*findings, *([seen.unreadable] if seen.unreadable is not None else [])),
        )

    def apply(self, plan: Plan[FirewallBody]) -> ApplyResult:
        """The writes of :func:`~server_hardening.planners.gcp.plan_writes`: every add of the
        pass sent together and waited for together, then the removes, only once every add is
        DONE."""
        self._retrier.new_pass()
        result = ApplyResult()
        if plan.empty:
            return result
        self._seen = None  # the network changes: the machines are read after the writes
        writes = plan_writes(plan, manages_logging=self.rendered.manages_logging)
        deadline = time.monotonic() + self._wait_budget
        try:
            if writes.inserts and not self._quota_allows(writes.inserts, result):
                return result
            self._run_wave(writes.adds, result, deadline)
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
        if result.in_progress:
            return result  # deletes wait for the next pass, which sees how the adds ended
        self._run_wave(writes.removes, result, deadline)
        return result

    def release(self, observed: Observation[FirewallBody], *, delete: bool) -> ApplyResult:
        """Per :func:`~server_hardening.ownership.release_action`: delete the rules the operator
        created (``Delete``), return every other one unmarked (a patch of its description
        only: the mark becomes "released from ..."). A returned adopted rule loses its
        provenance word; a created one keeps it, so a take-back later knows whose it was."""
        self._retrier.new_pass()
        self._seen = None
        result = ApplyResult()
        owned = [item for item in observed.items if item.owned]
        everyone = [item.provenance for item in owned]
        writes = []
        for item in owned:
            name = item.native_id or item.key
            action = release_action(item.provenance, delete=delete, target_provenances=everyone)
            if action is ReleaseAction.REMOVE:
                writes.append(Write(WriteKind.DELETE, name))
                continue
            description = str(item.payload.get("description", ""))
            if item.provenance is Provenance.ADOPTED:
                description = with_description_provenance(description, Provenance.UNKNOWN)
            writes.append(
                Write(WriteKind.PATCH, name, description=released_description(description))
            )
        self._run_wave(tuple(writes), result, time.monotonic() + self._wait_budget)
        return result

    # -- observing -----------------------------------------------------------------------------

    @property
    def _api(self) -> GcpClients:
        if self._clients is None:
            self._clients = build_clients(self._factory, self.gcp)
        return self._clients

    def list_filter(self) -> str:
        return f'network eq ".*/global/networks/{self.gcp.network}$"'

    def _list(self, list_filter: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token = ""
        while True:
            request = compute_v1.ListFirewallsRequest(
                project=self.gcp.project,
                filter=list_filter,
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
            provenance=description_provenance(description),
        )

    def _reaches_our_tags(self, body: FirewallBody) -> bool:
        targets = set(body.get("targetTags") or [])
        return not targets or bool(targets & set(self.rendered.tags.values()))

    # -- writing -------------------------------------------------------------------------------
    #
    # A wave: the first write is sent alone (a missing permission, refused credentials or an
    # exhausted quota then cost one call, not one per rule), the rest from a small pool of
    # threads spaced to the pass's share of the rate quota; then every operation is waited for
    # (also from the pool), until DONE or the pass's wait budget is spent. Writes refused
    # because the network is busy (``resourceNotReady``, as a 400 or as a failed operation) are
    # sent again after a backoff, with a fresh request ID, while the others carry on.

    def _run_wave(self, writes: Sequence[Write], result: ApplyResult, deadline: float) -> None:
        if not writes:
            return
        self._stop.clear()
        jobs = [_Job(w) for w in writes]
        pace = pacing(len(jobs), max_in_flight=self._max_in_flight, requests_per_minute=self._rpm)
        self._pacer.interval = pace.interval_seconds
        _ = self._api  # build the clients once, before any thread needs them
        todo = jobs
        attempt = 0
        with ThreadPoolExecutor(max_workers=pace.in_flight) as pool:
            while todo:
                attempt += 1
                self._send_all(pool, todo)
                waiting = [j for j in todo if j.op is not None]
                list(pool.map(lambda j: self._await(j, deadline), waiting))
                todo = [j for j in todo if j.state is _State.NOT_READY]
                if todo:
                    todo = self._after_backoff(todo, attempt)
        fatal = next((j.fatal for j in jobs if j.fatal is not None), None)
        for job in jobs:
            self._count(job, result)
        if fatal is not None:
            raise fatal

    def _send_all(self, pool: ThreadPoolExecutor, jobs: Sequence[_Job]) -> None:
        first, rest = jobs[0], jobs[1:]
        self._send(first)
        if first.fatal is not None:
            for job in rest:
                job.state, job.error = _State.SKIPPED, "not sent: " + str(first.fatal)
            return
        list(pool.map(self._send, rest))

    def _send(self, job: _Job) -> None:
        """Send one write; a 409 on insert is resolved here (same rule: done; ours unmarked:
        taken back with an update)."""
        if self._stop.is_set():
            job.state, job.error = _State.SKIPPED, "not sent: an earlier write was refused"
            return
        write = job.write
        try:
            try:
                job.op = self._call(write.kind.value, write.name, self._request(write, job))
            except gexc.Conflict:
                if write.kind is not WriteKind.INSERT or write.desired is None:
                    job.state, job.error = _State.FAILED, "conflict"
                    return
                self._resolve_conflict(job, write.desired)
            except gexc.NotFound as exc:
                if write.kind is WriteKind.DELETE:
                    job.state = _State.DONE  # already gone: the goal is met
                    return
                job.state, job.error = _State.FAILED, message_of(exc)
        except TransientTargetError as exc:
            job.state, job.error = _State.FAILED, str(exc)
        except (QuotaExhaustedError, PermanentTargetError) as exc:
            self._stop.set()
            job.state, job.fatal = _State.FAILED, exc
        except gexc.GoogleAPICallError as exc:
            busy = kind_of(exc) == "not_ready"
            job.state = _State.NOT_READY if busy else _State.FAILED
            job.error = message_of(exc)

    def _request(self, write: Write, job: _Job) -> Callable[[], compute_v1.Operation]:
        """The call for ``write``: one request ID for all its retries (a retried insert whose
        answer was lost is not applied twice), a new one when it is sent again after its
        operation failed."""
        project = self.gcp.project
        request: Any
        if write.kind is WriteKind.INSERT:
            assert write.desired is not None
            method: Callable[..., compute_v1.Operation] = self._api.firewalls.insert_unary
            request = compute_v1.InsertFirewallRequest(
                project=project, firewall_resource=to_firewall(write.desired.payload)
            )
        elif write.kind is WriteKind.UPDATE:
            assert write.desired is not None
            method = self._api.firewalls.update_unary
            request = compute_v1.UpdateFirewallRequest(
                project=project,
                firewall=write.name,
                firewall_resource=to_firewall(write.desired.payload),
            )
        elif write.kind is WriteKind.PATCH:
            method = self._api.firewalls.patch_unary
            request = compute_v1.PatchFirewallRequest(
                project=project,
                firewall=write.name,
                firewall_resource=compute_v1.Firewall(description=write.description),
            )
        else:
            method = self._api.firewalls.delete_unary
            request = compute_v1.DeleteFirewallRequest(project=project, firewall=write.name)
        request.request_id = job.request_id

        def send() -> compute_v1.Operation:
            self._pacer.wait()
            return method(request=request, retry=None, timeout=CALL_TIMEOUT)

        return send

    def _resolve_conflict(self, job: _Job, item: DesiredItem[FirewallBody]) -> None:
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
        normal = normalise_firewall(
            existing, self.gcp.project, with_logging=self.rendered.manages_logging
        )
        if fingerprint(normal) == item.fingerprint:
            job.state = _State.DONE
            return
        if not str(existing.get("network", "")).endswith(
            f"/projects/{self.gcp.project}/global/networks/{self.gcp.network}"
        ):
            # Another installation's rule of the same name: never overwritten (the next
            # observe names it as a conflict).
            job.state = _State.FAILED
            job.error = "the name is taken by " + self._other_installation(existing)
            return
        description = str(existing.get("description", ""))
        other = description_owner(description)
        if item.key.startswith(self._prefix) and other in ("", self._mine):
            provenance = claimed_provenance(description_provenance(description))
            job.write = Write(WriteKind.UPDATE, item.key, desired=recording(item, provenance))
            job.adopted = True
            job.request_id = str(uuid.uuid4())
            job.op = self._call("firewalls.update", item.key, self._request(job.write, job))
            return
        job.state = _State.FAILED
        job.error = (
            f"the name is taken by a rule "
            f"{'of ' + other if other else 'this resource does not own'}"
        )

    def _await(self, job: _Job, deadline: float) -> None:
        """Wait for ``job``'s operation: DONE (with or without an error), or still running when
        the pass's wait budget is spent."""
        op = job.op
        assert op is not None
        try:
            while op.status != compute_v1.Operation.Status.DONE:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    job.state = _State.RUNNING
                    return
                name = op.name
                polled = self._call(
                    "globalOperations.wait",
                    name,
                    functools.partial(
                        self._paced_wait, name, min(WAIT_DEADLINE + 5.0, remaining + 1.0)
                    ),
                )
                op = polled if polled is not None else op
        except TargetError as exc:
            if isinstance(exc, PermanentTargetError):
                self._stop.set()
                job.fatal = exc
            job.state, job.error = _State.FAILED, str(exc)
            return
        errors = list(op.error.errors) if op.error else []
        codes = {e.code for e in errors}
        text = "; ".join(f"{e.code}: {e.message}" for e in errors)
        if not errors:
            job.state = _State.DONE
        elif codes & NOT_READY_REASONS:
            job.state, job.error = _State.NOT_READY, f"operation {op.name} failed: {text}"
        elif codes & QUOTA_REASONS:
            self._stop.set()
            job.state, job.fatal = _State.FAILED, QuotaExhaustedError(text)
        else:
            job.state, job.error = _State.FAILED, f"operation {op.name} failed: {text}"

    def _paced_wait(self, name: str, timeout: float) -> compute_v1.Operation | None:
        self._pacer.wait()
        return wait_operation(self._api, self.gcp.project, name, timeout)

    def _after_backoff(self, jobs: list[_Job], attempt: int) -> list[_Job]:
        """The busy-network writes to send again, after one backoff for all of them; none when
        the attempts or the pass's retry budget are spent (they stay failed, saying why)."""
        first = jobs[0]
        try:
            self._retrier.backoff(first.write.kind.value, first.write.name, attempt, first.error)
        except TransientTargetError as exc:
            for job in jobs:
                job.state, job.error = _State.FAILED, f"network still busy: {exc}"
            return []
        for job in jobs:
            job.reset()
        return jobs

    def _count(self, job: _Job, result: ApplyResult) -> None:
        write = job.write
        if job.state is _State.RUNNING:
            result.in_progress.append(f"{write.kind.value} {write.name}")
            return
        if job.state is not _State.DONE:
            if job.fatal is None:
                result.errors.append(f"{write.kind.value} {write.name}: {job.error}")
            return
        if write.adopt:
            result.adopted += 1
        elif job.adopted:
            result.updated += 1
            result.findings.append(
                Finding.of(
                    FindingCode.FIREWALL_ADOPTED,
                    f"{write.name} existed without this resource's mark (released earlier?) "
                    "and was taken back",
                    target=TARGET,
                )
            )
        elif write.kind is WriteKind.INSERT:
            result.created += 1
        elif write.kind in (WriteKind.UPDATE, WriteKind.PATCH):
            result.updated += 1
        elif write.unmanaged:
            result.removed_unmanaged += 1
        else:
            result.deleted += 1

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
            fits, free = fits_quota(inserts, quota.limit, quota.usage)
            if not fits:
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
