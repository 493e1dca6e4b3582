"""The Kubernetes target: NetworkPolicies in the server's namespace, through the API server.

Observe lists the namespace's policies once and reads the guide's Services (to find the pods
behind them); apply creates and replaces before it deletes; every write names the exact object
(``resourceVersion`` on replace, ``uid`` precondition on delete), so a policy changed or
re-created by someone else in between is never overwritten or removed by mistake.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import urllib3

from server_hardening import components
from server_hardening.compiler import CompiledIntent
from server_hardening.drift import (
    DesiredItem,
    ObservedItem,
    Plan,
    Update,
)
from server_hardening.guide import Component
from server_hardening.machines import NamespaceMachines
from server_hardening.model import ResourceRef, UnmanagedRules
from server_hardening.ownership import (
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    OWNER_ANNOTATION,
    OWNER_LABEL,
    PROVENANCE_ANNOTATION,
    ROWS_ANNOTATION,
    Provenance,
    ReleaseAction,
    claimed_provenance,
    owner_from_annotation,
    owner_key,
    release_action,
)
from server_hardening.policy import networkpolicy as np_policy
from server_hardening.policy.loadbalancer import load_balancer_exposure
from server_hardening.policy.namespacereach import pods_of
from server_hardening.renderers.networkpolicy import (
    Manifest,
    policy_fingerprint,
    policy_name_for,
    render_network_policies,
    with_provenance,
)
from server_hardening.rules import Finding, FindingCode
from server_hardening.targets.base import (
    ApiCallRecorder,
    ApplyResult,
    Observation,
    PermanentTargetError,
    TargetError,
    TransientTargetError,
    ignore_call,
)
from server_hardening.targets.kubeapi import (
    CLIENT_ERRORS,
    CORE,
    NETWORKING,
    ApiError,
    KubeApi,
    namespaced,
)
from server_hardening.targets.retry import Retrier, RetryPolicy, Verdict

NAME = "kubernetes"


def translate(exc: Exception, operation: str, resource: str) -> TargetError:
    """One place that turns client errors into the two kinds the pipeline knows."""
    if isinstance(exc, TargetError):
        return exc
    if isinstance(exc, ApiError):
        status = exc.status
        message = f"{operation} {resource}: HTTP {status} {exc.message}"
        if status in {409, 429} or status >= 500:
            return TransientTargetError(message, operation=operation, resource=resource)
        return PermanentTargetError(message, operation=operation, resource=resource)
    return TransientTargetError(
        f"{operation} {resource}: {exc}", operation=operation, resource=resource
    )


def classify(exc: Exception) -> Verdict:
    """Retry throttling (429), 5xx and a dropped connection; a 409 is not retried as-is (the
    object changed under us: the next pass judges the new version)."""
    if isinstance(exc, ApiError):
        if exc.status == 429:
            return Verdict("throttled", retry=True, why=str(exc))
        if exc.status >= 500:
            return Verdict("transient_error", retry=True, why=str(exc))
        return Verdict("error")
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return Verdict("transient_error", retry=True, why=str(exc))
    return Verdict("error")


class KubernetesCalls:
    """Runs one API call under the shared retry policy, recording it and translating its
    errors."""

    def __init__(self, record: ApiCallRecorder, retry: RetryPolicy | None = None) -> None:
        self.retrier = Retrier(retry, record)

    def __call__(self, operation: str, resource: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.retrier.call(operation, resource, lambda: fn(*args, **kwargs), classify)
        except (*CLIENT_ERRORS, TargetError) as exc:
            raise translate(exc, operation, resource) from exc


def resolve_components(
    api: KubeApi,
    namespace: str,
    intent: CompiledIntent,
    record: ApiCallRecorder = ignore_call,
    remembered: Sequence[Mapping[str, Any]] = (),
) -> tuple[
    dict[Component, components.ResolvedComponent], list[Finding], list[components.ServiceLookup]
]:
    """Read the guide's Services and find the pods and pod ports behind them. A component whose
    Service is absent is resolved from what the resource remembers (``remembered``: the last
    ``status.resolvedComponents``), so its allow is still rendered, and re-created if deleted,
    with a ``ComponentServiceMissing`` finding until the Service is back; with nothing
    remembered its lookup comes back in the third list (its policy, if still there, is kept, see
    KubernetesTarget)."""
    call = KubernetesCalls(record)
    pinned, pending = components.lookups(intent)
    resolved = {c.component: c for c in pinned}
    memory = {str(e.get("component")): e for e in remembered if isinstance(e, Mapping)}
    recalled: dict[str, list[components.ResolvedComponent]] = {}
    findings: list[Finding] = []
    gone: list[components.ServiceLookup] = []
    for lookup in pending:
        outcome: components.ResolvedComponent | Finding | None = None
        for name in lookup.names:
            try:
                service = call(
                    "read_service",
                    f"service/{name}",
                    api.get,
                    namespaced(CORE, namespace, "services", name),
                )
            except PermanentTargetError as exc:
                if " 404 " in str(exc):
                    continue
                raise
            outcome = components.from_service(lookup, service)
            exposed = load_balancer_exposure(service)
            if exposed is not None and exposed.message not in {f.message for f in findings}:
                findings.append(exposed)
            break
        last = components.recalled(lookup, memory.get(lookup.component.value))
        if isinstance(outcome, components.ResolvedComponent):
            resolved[lookup.component] = outcome
        elif isinstance(outcome, Finding):
            findings.append(outcome)
        elif last is not None:
            resolved[lookup.component] = last
            recalled.setdefault(last.service, []).append(last)
        else:
            gone.append(lookup)
            findings.append(
                Finding.of(
                    FindingCode.SERVICE_NOT_FOUND,
                    f"{lookup.component.value}: no Service named "
                    + " or ".join(lookup.names)
                    + f" in {namespace}; its pods get no allow rule (default deny holds) until "
                    "it exists or spec.kubernetes.components pins them",
                    target=NAME,
                )
            )
    # One finding per vanished Service (v4's proxy serves two components through one policy).
    for service, lasts in recalled.items():
        policy = policy_name_for(service)
        ports = sorted({str(p.port) for last in lasts for p in last.ports})
        findings.append(
            Finding.of(
                FindingCode.COMPONENT_SERVICE_MISSING,
                ", ".join(last.component.value for last in lasts)
                + f": Service {service} is gone from {namespace}; its pods keep their last "
                f"allow ({policy}: pods {lasts[0].pod_selector}, ports {', '.join(ports)}, as "
                "last resolved) until it is back or spec.kubernetes.components pins them",
                target=NAME,
                objects=(policy,),
            )
        )
    return resolved, findings, gone


def node_ports_of(
    api: KubeApi, namespace: str, record: ApiCallRecorder = ignore_call
) -> dict[int, tuple[str, int]]:
    """NodePort -> (Service, port) of the namespace's Services (one list): what a cloud rule
    that opens a NodePort really opens. An error reading them leaves the map empty (the cloud
    rules are still judged on their own ports)."""
    try:
        listing = KubernetesCalls(record)(
            "list_services",
            f"namespace/{namespace}",
            api.get,
            namespaced(CORE, namespace, "services"),
        )
    except TargetError:
        return {}
    out: dict[int, tuple[str, int]] = {}
    for service in listing.get("items") or []:
        name = str((service.get("metadata") or {}).get("name", ""))
        for port in (service.get("spec") or {}).get("ports") or []:
            if port.get("nodePort"):
                out[int(port["nodePort"])] = (name, int(port.get("port", 0)))
    return out


def _ownership(policy: Mapping[str, Any], me: str) -> tuple[bool, str]:
    meta = policy.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE or OWNER_ANNOTATION not in annotations:
        return False, ""
    owner = owner_from_annotation(str(annotations[OWNER_ANNOTATION]))
    return owner == me, owner


class KubernetesTarget:
    """NetworkPolicies of one ServerHardening's namespace."""

    name = NAME

    def __init__(
        self,
        intent: CompiledIntent,
        ref: ResourceRef,
        api: KubeApi,
        resolved: Mapping[Component, components.ResolvedComponent],
        *,
        record_call: ApiCallRecorder = ignore_call,
        findings: Sequence[Finding] = (),
        services_gone: Sequence[components.ServiceLookup] = (),
    ) -> None:
        self.intent = intent
        self.ref = ref
        self.api = api
        self.call = KubernetesCalls(record_call)
        self.policies = render_network_policies(intent, ref.namespace, ref, resolved)
        self.findings = tuple(findings)
        # Components resolved from a Service (now, or as remembered while it is gone): what
        # the resource remembers for the next pass.
        self.remembered = tuple(
            components.remembered_entry(c)
            for c in sorted(resolved.values(), key=lambda c: c.component.value)
            if c.source.startswith(("service/", "remembered:service/"))
        )
        self.services_gone = tuple(services_gone)
        self._kept: list[DesiredItem[Manifest]] = []
        self._listed: Sequence[Mapping[str, Any]] | None = None
        # The target's judgement (see policy.base).
        self.policy = np_policy.KubernetesPolicy(
            self.policies,
            restrict_egress=intent.spec.kubernetes.network_policies.restrict_egress,
            remove_unmanaged=intent.spec.unmanaged_rules is UnmanagedRules.REMOVE,
            resolved=resolved,
        )

    def _policies(self, name: str | None = None) -> str:
        return namespaced(NETWORKING, self.ref.namespace, "networkpolicies", name)

    def _keep_last_allows(self, observed: Sequence[ObservedItem[Manifest]]) -> list[Finding]:
        """A component whose Service vanished keeps the allow it had (never a silent outage):
        our own policy for it stays desired exactly as it is, and a finding says why."""
        rendered = {p["metadata"]["name"] for p in self.policies}
        owned = {i.key: i for i in observed if i.owned}
        self._kept, findings = [], []
        for lookup in self.services_gone:
            for service in lookup.names:
                name = policy_name_for(service)
                # Components that share pods (v4's proxy) share one policy: keep it once.
                if name in rendered or name not in owned or any(k.key == name for k in self._kept):
                    continue
                item = owned[name]
                annotations = item.payload["metadata"].get("annotations") or {}
                rows = tuple(r for r in str(annotations.get(ROWS_ANNOTATION, "")).split(",") if r)
                self._kept.append(DesiredItem(name, item.fingerprint, item.payload, rows))
                findings.append(
                    Finding.of(
                        FindingCode.COMPONENT_SERVICE_MISSING,
                        f"{lookup.component.value}: Service {service} is gone from "
                        f"{self.ref.namespace}; its pods keep their last allow ({name}) until it "
                        "is back or spec.kubernetes.components pins them",
                        target=NAME,
                        objects=(name,),
                    )
                )
                break
        return findings

    def observe(self) -> Observation[Manifest]:
        self.call.retrier.new_pass()
        listing = self.call(
            "list_networkpolicies",
            f"namespace/{self.ref.namespace}",
            self.api.get,
            self._policies(),
        )
        # What this pass saw, for the examination after it when the pass writes nothing.
        self._listed = listing.get("items") or []
        me = owner_key(self.ref)
        items: list[ObservedItem[Manifest]] = []
        for policy in listing.get("items") or []:
            meta = policy["metadata"]
            owned, owner = _ownership(policy, me)
            annotations = meta.get("annotations") or {}
            items.append(
                ObservedItem(
                    key=meta["name"],
                    fingerprint=policy_fingerprint(policy),
                    payload=policy,
                    owned=owned,
                    native_id=meta["name"],
                    owner="" if owned else owner,
                    provenance=Provenance.of(annotations.get(PROVENANCE_ANNOTATION)),
                )
            )
        kept = self._keep_last_allows(items)
        # A component whose allow is kept is reported as that, not as a Service never found.
        keeping = {f.message.split(":", 1)[0] for f in kept}
        earlier = [
            f
            for f in self.findings
            if not (
                f.code is FindingCode.SERVICE_NOT_FOUND and f.message.split(":", 1)[0] in keeping
            )
        ]
        return Observation(
            items=tuple(items),
            findings=(*earlier, *kept),
            kept=tuple(self._kept),
            remembered=self.remembered,
        )

    def observe_machines(self) -> NamespaceMachines:
        """The namespace's pods and every NetworkPolicy in it, as they are after this pass's
        writes (``ExaminesMachines``). Read-only: two lists."""
        namespace = f"namespace/{self.ref.namespace}"
        policies = self._listed
        if policies is None:  # not observed yet, or written since: read them as they are now
            listing = self.call("list_networkpolicies", namespace, self.api.get, self._policies())
            policies = listing.get("items") or []
        pods = self.call(
            "list_pods", namespace, self.api.get, namespaced(CORE, self.ref.namespace, "pods")
        )
        return NamespaceMachines(
            namespace=self.ref.namespace,
            pods=pods_of(pods),
            policies=tuple(policies),
        )

    def apply(self, plan: Plan[Manifest]) -> ApplyResult:
        """Create and replace first, then delete: the namespace is never less reachable than
        both the old and the new desired state allow."""
        self.call.retrier.new_pass()
        if not plan.empty:
            self._listed = None
        result = ApplyResult()
        create = self.api.create
        for adoption in plan.adopt:
            if self._replace(result, adoption):
                result.adopted += 1
        for item in plan.create:
            body = with_provenance(item.payload, Provenance.CREATED)
            if self._call_noting_errors(
                result, "create_networkpolicy", item.key, create, self._policies(), body
            ):
                result.created += 1
        for change in plan.update:
            if self._replace(result, change):
                result.updated += 1
        if result.errors:
            # Something we meant to allow is not in place yet: removing now could leave the
            # namespace less reachable than both states. The next pass converges.
            return result
        for stale in plan.delete:
            if self._delete(result, stale):
                result.deleted += 1
        for extra in plan.remove_unmanaged:
            if self._delete(result, extra):
                result.removed_unmanaged += 1
        return result

    def _replace(self, result: ApplyResult, change: Update[Manifest]) -> bool:
        """Write the desired policy over the observed one. Replace exactly the version we
        judged: a newer edit makes this a 409, and the next pass judges that one."""
        key = change.desired.key
        observed = change.observed
        # Repairing our own policy keeps what its marks recorded; adopting or taking one back
        # records its earlier provenance when known, else "adopted".
        provenance = (
            observed.provenance if observed.owned else claimed_provenance(observed.provenance)
        )
        body = with_provenance(change.desired.payload, provenance)
        body["metadata"]["resourceVersion"] = observed.payload["metadata"]["resourceVersion"]
        return self._call_noting_errors(
            result, "replace_networkpolicy", key, self.api.replace, self._policies(key), body
        )

    def _delete(self, result: ApplyResult, item: ObservedItem[Manifest]) -> bool:
        uid = item.payload["metadata"]["uid"]
        try:
            self.call(
                "delete_networkpolicy",
                item.native_id,
                self.api.delete,
                self._policies(item.native_id),
                uid=uid,
            )
        except TargetError as exc:
            if " 404 " in str(exc):
                return True  # already gone: the outcome we wanted
            result.errors.append(str(exc))
            return False
        return True

    def _call_noting_errors(
        self, result: ApplyResult, operation: str, key: str, fn: Any, *args: Any
    ) -> bool:
        """One write; a refusal lands in ``result.errors`` (False) instead of raising."""
        try:
            self.call(operation, key, fn, *args)
        except TargetError as exc:
            if operation.startswith("create") and " 409 " in str(exc):
                result.errors.append(f"{key} exists but is not ours to change: {exc}")
                return False
            result.errors.append(str(exc))
            return False
        return True

    def release(self, observed: Observation[Manifest], *, delete: bool) -> ApplyResult:
        """Deletion of the resource, per :func:`~server_hardening.ownership.release_action`:
        delete the policies the operator created (``Delete``), return every other one
        unmarked (the ownership label and annotation dropped). A returned adopted policy loses
        the provenance and guide-rows annotations too; a created one keeps them, so a resource
        re-created under this name takes it back as its own creation."""
        self._listed = None
        self.call.retrier.new_pass()
        result = ApplyResult()
        owned = [item for item in observed.items if item.owned]
        everyone = [item.provenance for item in owned]
        for item in owned:
            action = release_action(item.provenance, delete=delete, target_provenances=everyone)
            if action is ReleaseAction.REMOVE:
                if self._delete(result, item):
                    result.deleted += 1
                continue
            annotations: dict[str, None] = {OWNER_ANNOTATION: None}
            if item.provenance is Provenance.ADOPTED:
                annotations.update({PROVENANCE_ANNOTATION: None, ROWS_ANNOTATION: None})
            patch = {
                "metadata": {
                    "labels": {OWNER_LABEL: None, MANAGED_BY_LABEL: None},
                    "annotations": annotations,
                }
            }
            if self._call_noting_errors(
                result, "patch_networkpolicy", item.key, self.api.merge_patch,
                self._policies(item.key), patch,
            ):  # fmt: skip
                result.updated += 1
        return result


class ResourceClient:
    """Reads ServerHardening resources, writes their status and posts their events."""

    def __init__(self, api: KubeApi, *, component: str = "server-hardening") -> None:
        self.api = api
        self.component = component

    @staticmethod
    def _resource(namespace: str, name: str) -> str:
        from server_hardening.model import GROUP, PLURAL, VERSION

        return namespaced(f"/apis/{GROUP}/{VERSION}", namespace, PLURAL, name)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = self.api.get(self._resource(namespace, name))
        except CLIENT_ERRORS as exc:
            if isinstance(exc, ApiError) and exc.status == 404:
                return None
            raise translate(exc, "get_serverhardening", f"{namespace}/{name}") from exc
        return body

    def publish_report(self, report: Any, owner: ResourceRef) -> bool:
        """Write the OpenReports ``Report`` of ``owner`` (False: its CRD is not installed)."""
        from server_hardening.targets.reports import publish_report

        return publish_report(self.api, report, owner)

    def set_annotation(self, namespace: str, name: str, key: str, value: str) -> None:
        """Set one annotation of a ServerHardening (``hardening recheck``); a missing resource
        or a refused patch raises a :class:`TargetError` saying which."""
        try:
            self.api.merge_patch(
                self._resource(namespace, name), {"metadata": {"annotations": {key: value}}}
            )
        except CLIENT_ERRORS as exc:
            if isinstance(exc, ApiError) and exc.status == 404:
                raise PermanentTargetError(
                    f"serverhardening {namespace}/{name} not found",
                    operation="patch_serverhardening",
                    resource=f"{namespace}/{name}",
                ) from exc
            raise translate(exc, "patch_serverhardening", f"{namespace}/{name}") from exc

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        # A merge patch replaces lists wholesale, and `null` clears what the new status omits.
        try:
            self.api.merge_patch(
                self._resource(namespace, name) + "/status", {"status": dict(status)}
            )
        except CLIENT_ERRORS as exc:
            if isinstance(exc, ApiError) and exc.status == 404:
                return
            raise translate(exc, "patch_status", f"{namespace}/{name}") from exc

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> str:
        """A core/v1 Event on the resource (as kubectl describe shows them); returns its name."""
        import datetime as dt
        import uuid

        meta = body.get("metadata") or {}
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event_name = f"{meta.get('name')}.{uuid.uuid4().hex[:12]}"
        event = {
            "metadata": {
                "name": event_name,
                "namespace": meta.get("namespace"),
            },
            "involvedObject": {
                "apiVersion": body.get("apiVersion"),
                "kind": body.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.api.create(namespaced(CORE, str(meta.get("namespace")), "events"), event)
        except CLIENT_ERRORS as exc:
            raise translate(exc, "create_event", reason) from exc
        return event_name

    def post_or_count_event(
        self,
        body: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        *,
        repeat_of: tuple[str, int] | None = None,
    ) -> tuple[str, int]:
        """Post an Event, or count a repeat on the one posted before (``repeat_of``: its name
        and count), the way client-go's event correlator does: ``count`` + 1 and a fresh
        ``lastTimestamp`` on the existing Event instead of a new one. An Event that has expired
        meanwhile (the API server keeps them an hour) is posted anew. Returns (name, count)."""
        import datetime as dt

        namespace = (body.get("metadata") or {}).get("namespace")
        if repeat_of is not None:
            name, count = repeat_of
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            patch = {"count": count + 1, "lastTimestamp": now}
            try:
                self.api.merge_patch(namespaced(CORE, str(namespace), "events", name), patch)
                return name, count + 1
            except CLIENT_ERRORS as exc:
                if not (isinstance(exc, ApiError) and exc.status == 404):
                    raise translate(exc, "patch_event", reason) from exc
        return self.post_event(body, type_, reason, message), 1
