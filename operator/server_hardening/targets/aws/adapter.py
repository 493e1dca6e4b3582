"""The AWS target: security-group rules through the EC2 API.

What it costs (asserted by ``tests/adapters/aws``; measured in docs/aws.md):

- ``observe``: ``DescribeSecurityGroupRules`` filtered by *all* managed group IDs at once, paged
  by 1,000 rules: a no-op reconcile is ``ceil(rules / 1000)`` reads and no write.
  ``DescribeSecurityGroups`` is called only when a managed group shows no rule at all (to tell
  an empty group from a missing one).
- ``apply``: the calls :func:`~server_hardening.planners.aws.plan_writes` orders (per group and
  direction at most one ``AuthorizeSecurityGroup*`` and one ``RevokeSecurityGroup*``, by
  ``SecurityGroupRuleIds``, never by a permission match; per group at most one
  ``ModifySecurityGroupRules``), executed here and nowhere decided here.

SDK types never leave this package: rules become ``ObservedItem[AtomicRule]`` and errors are
translated once, in :mod:`.errors`; retries are the shared :class:`~..retry.Retrier`'s.

Why a little over 500 lines: what is left here is only calls, but each write kind has its
"already done" path (a duplicate on authorise, a rule gone on revoke or modify) that looks once
and writes exactly the rest, and those paths need the observing code beside them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from server_hardening.drift import ObservedItem, Plan
from server_hardening.machines import AwsMachines
from server_hardening.model import AwsSpec, ResourceRef, UnmanagedRules
from server_hardening.ownership import (
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    OWNER_TAG,
    OWNER_UID_TAG,
    PROVENANCE_TAG,
    Provenance,
    ReleaseAction,
    claimed_provenance,
    owner_key,
    release_action,
)
from server_hardening.planners.aws import Write, WriteKind, plan_writes
from server_hardening.policy.aws import AwsPolicy
from server_hardening.policy.exposure import NodePorts
from server_hardening.policy.owners import aws_rule_controller
from server_hardening.renderers.aws import (
    AtomicRule,
    RenderedSecurityGroups,
    groups_by_role,
    parse_rule,
    permissions,
    render_security_groups,
    rule_fingerprint,
)
from server_hardening.rules import Direction, Finding, FindingCode, Role
from server_hardening.targets.aws.errors import (
    DUPLICATE_CODES,
    QUOTA_CODES,
    RULE_GONE_CODES,
    AlreadyDoneError,
    GroupChangeRefusedError,
    PermissionRefusedError,
    autoscaling_client_like,
    classify,
    default_client,
    saying_what_was_applied,
    translate,
)
from server_hardening.targets.aws.machines import MACHINE_ROLES, MachineReader, role_attribute
from server_hardening.targets.base import (
    ApiCallRecorder,
    ApplyResult,
    Observation,
    PermanentTargetError,
    ignore_call,
)
from server_hardening.targets.retry import Retrier, RetryPolicy

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

    from server_hardening.compiler import CompiledIntent

TARGET = "aws"
PAGE_SIZE = 1000  # DescribeSecurityGroupRules: MaxResults 5..1000
FILTER_VALUES = 200  # values per filter; more groups are split over several requests

SecurityGroupRuleItem = ObservedItem[AtomicRule]


def _some(ids: Sequence[str], shown: int = 3) -> str:
    """IDs for a message: the first few and how many more."""
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return ",".join(ids[:shown]) + more


class AwsTarget:
    """EC2 security groups as a :class:`~server_hardening.targets.base.Target`."""

    name = TARGET

    def __init__(
        self,
        rendered: RenderedSecurityGroups,
        aws: AwsSpec,
        owner: ResourceRef,
        *,
        policy: AwsPolicy | None = None,
        external_vms: bool = False,
        client: EC2Client | None = None,
        client_factory: Callable[[AwsSpec], EC2Client] | None = None,
        record_call: ApiCallRecorder = ignore_call,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rendered = rendered
        self.aws = aws
        self.owner = owner
        self.owner_key = owner_key(owner)
        # The target's judgement; the factory builds it from the spec (see policy.base).
        self.policy = policy or AwsPolicy(rendered)
        # The roles whose machines are read: those with a group, with a selector, and the VMs
        # (found by the machine provisioner's tag) when the topology has them.
        selectors = aws.machines
        self.machine_roles: tuple[Role, ...] = tuple(
            role
            for role in MACHINE_ROLES
            if role in groups_by_role(aws)
            or (selectors is not None and getattr(selectors, role_attribute(role)) is not None)
            or (role is Role.EXTERNAL_VMS and external_vms)
        )
        self._client = client
        self._client_factory = client_factory or default_client
        self._retrier = Retrier(retry, record_call, sleep=sleep)
        self._last: tuple[SecurityGroupRuleItem, ...] | None = None

    @classmethod
    def from_intent(
        cls,
        intent: CompiledIntent,
        aws: AwsSpec,
        owner: ResourceRef,
        *,
        node_ports: NodePorts | None = None,
        **kwargs: Any,
    ) -> AwsTarget:
        kwargs.setdefault("external_vms", intent.spec.topology.external_vms.enabled)
        rendered = render_security_groups(intent.cloud_rules("aws"), aws, owner)
        node_range = intent.spec.topology.load_balancers.node_port_range
        policy = AwsPolicy(
            rendered,
            remove_unmanaged=intent.spec.unmanaged_rules is UnmanagedRules.REMOVE,
            node_ports=node_ports,
            node_port_range=(node_range.from_, node_range.to),
        )
        return cls(rendered, aws, owner, policy=policy, **kwargs)

    @property
    def client(self) -> EC2Client:
        if self._client is None:
            self._client = self._client_factory(self.aws)
        return self._client

    # --------------------------------------------------------------------------------------
    # Target protocol

    def observe(self) -> Observation[AtomicRule]:
        self._retrier.new_pass()
        group_ids = self.rendered.group_ids
        raw = self._describe_rules(group_ids, operation_resource=",".join(group_ids))
        seen = {str(r.get("GroupId", "")) for r in raw}
        unseen = [g for g in group_ids if g not in seen]
        if unseen:
            existing = self._existing_groups(unseen)
            missing = [g for g in unseen if g not in existing]
            if missing:
                raise PermanentTargetError(
                    "; ".join(
                        f"security group {g} (spec.aws.securityGroups."
                        f"{self.rendered.role_of(g) or '?'}) does not exist in {self.aws.region}"
                        for g in missing
                    ),
                    operation="DescribeSecurityGroups",
                    resource=",".join(missing),
                )
        items = tuple(self._observed(r) for r in raw if r.get("GroupId") in group_ids)
        self._last = items
        # What rendering taught (over quota, roles without a group, isolation by omission)
        # travels with the observation: the Target contract has no other way up for it.
        return Observation(items=items, findings=self.rendered.findings)

    def apply(self, plan: Plan[AtomicRule]) -> ApplyResult:
        """Execute the planned calls in order. A group-level 4xx stops that group's later
        writes; a call the IAM policy refuses fails only its own step (an error and a
        ``PermissionRefused`` finding name the permission), except that the revokes of a lane
        whose authorise was refused are not made: they may be what the new rules replace."""
        self._retrier.new_pass()
        writes = plan_writes(plan, self.rendered, self._last, self.aws.rule_quota)
        result = ApplyResult(findings=list(writes.findings), errors=list(writes.errors))
        refused: set[str] = set()
        not_added: set[tuple[str, Direction]] = set()
        with saying_what_was_applied(result):
            for write in writes.writes:
                if write.group in refused:
                    continue  # a group-level 4xx stops that group's later writes only
                lane = (write.group, write.direction or Direction.INGRESS)
                if write.kind is WriteKind.REVOKE and lane in not_added:
                    result.errors.append(
                        f"{write.group} {lane[1].value}: {len(write.items)} revokes not made: "
                        "the rules that replace them could not be added"
                    )
                    continue
                try:
                    self._execute(write, result)
                except GroupChangeRefusedError as exc:
                    refused.add(write.group)
                    self._group_refused(write.group, exc, result)
                except PermissionRefusedError as exc:
                    self._permission_refused(exc, result)
                    if write.kind is WriteKind.AUTHORIZE and write.direction is not None:
                        not_added.add((write.group, write.direction))
        return result

    def _execute(self, write: Write, result: ApplyResult) -> None:
        if write.kind is WriteKind.ADOPT:
            self._adopt(write.group, list(write.changes), result)
        elif write.kind is WriteKind.AUTHORIZE and write.direction is not None:
            self._authorize(write.group, write.direction, list(write.rules), result)
        elif write.kind is WriteKind.REVOKE and write.direction is not None:
            self._revoke(write.group, write.direction, write.items, result)
        elif write.kind is WriteKind.MODIFY:
            self._modify(write.group, list(write.changes), result)

    def release(self, observed: Observation[AtomicRule], *, delete: bool) -> ApplyResult:
        """What :func:`~server_hardening.ownership.release_action` says per owned rule:
        revoke the ones the operator created (``Delete``; one call per group and direction),
        return every other one unmarked: this resource's ownership tags dropped (one
        ``DeleteTags`` call per 1,000 rules and tag set), the access untouched. An adopted
        rule loses its provenance tag too (it goes back as it was found, bar the description);
        a created one keeps it, so a resource that adopts it later knows the operator made it."""
        self._retrier.new_pass()
        result = ApplyResult()
        owned = [item for item in observed.items if item.owned]
        everyone = [item.provenance for item in owned]
        revoke: dict[tuple[str, Direction], list[SecurityGroupRuleItem]] = defaultdict(list)
        untag: dict[Provenance, list[str]] = defaultdict(list)
        for item in owned:
            action = release_action(item.provenance, delete=delete, target_provenances=everyone)
            if action is ReleaseAction.REMOVE:
                revoke[(item.payload.group_id, item.payload.direction)].append(item)
            else:
                untag[item.provenance].append(item.native_id)
        with saying_what_was_applied(result):
            for (group, direction), items in sorted(revoke.items()):
                try:
                    self._revoke(group, direction, items, result)
                except GroupChangeRefusedError as exc:
                    result.errors.append(f"{group} {direction.value}: {exc}")
                except PermissionRefusedError as exc:
                    self._permission_refused(exc, result)
            for provenance, ids in sorted(untag.items()):
                self._untag(ids, provenance, result)
        return result

    def observe_machines(self) -> AwsMachines:
        """The machines of every role the spec names, read-only (``targets.aws.machines``):
        after :meth:`observe` in the same pass, the managed groups' rules are not read again."""
        managed: dict[str, list[AtomicRule]] = {}
        if self._last is not None:
            managed = {g: [] for g in self.rendered.group_ids}
            for item in self._last:
                managed.setdefault(item.payload.group_id, []).append(item.payload)
        reader = MachineReader(
            self.aws,
            self._paged,
            self.client,
            lambda: autoscaling_client_like(self.client, self.aws),
            groups_by_role(self.aws),
        )
        return reader.read(managed, self.machine_roles)

    def _untag(self, ids: Sequence[str], provenance: Provenance, result: ApplyResult) -> None:
        tags = [
            {"Key": OWNER_TAG, "Value": self.owner_key},
            {"Key": OWNER_UID_TAG},
            {"Key": MANAGED_BY_LABEL, "Value": MANAGED_BY_VALUE},
        ]
        if provenance is Provenance.ADOPTED:
            tags.append({"Key": PROVENANCE_TAG, "Value": provenance.value})
        for start in range(0, len(ids), 1000):
            chunk = list(ids[start : start + 1000])
            try:
                self._call(
                    "DeleteTags",
                    _some(chunk),
                    self.client.delete_tags,
                    {"Resources": chunk, "Tags": tags},
                )
            except GroupChangeRefusedError as exc:
                result.errors.append(f"DeleteTags: {exc}")
                continue
            except PermissionRefusedError as exc:
                self._permission_refused(exc, result)
                continue
            result.updated += len(chunk)

    # --------------------------------------------------------------------------------------
    # Observing

    def _paged(
        self, operation: str, resource: str, fn: Callable[..., Any], kwargs: dict[str, Any]
    ) -> Iterable[dict[str, Any]]:
        token = ""
        while True:
            page = self._call(operation, resource, fn, {**kwargs, "NextToken": token} if token
                              else kwargs)  # fmt: skip
            yield page
            token = str(page.get("NextToken") or "")
            if not token:
                return

    def _describe_rules(
        self,
        group_ids: Sequence[str],
        *,
        operation_resource: str,
        rule_ids: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for start in range(0, max(len(group_ids), 1), FILTER_VALUES):
            filters = [
                {"Name": "group-id", "Values": list(group_ids[start : start + FILTER_VALUES])}
            ]
            if rule_ids:
                filters.append({"Name": "security-group-rule-id", "Values": list(rule_ids)})
            for page in self._paged(
                "DescribeSecurityGroupRules",
                operation_resource,
                self.client.describe_security_group_rules,
                {"Filters": filters, "MaxResults": PAGE_SIZE},
            ):
                out.extend(page.get("SecurityGroupRules", []))
        return out

    def _existing_groups(self, group_ids: Sequence[str]) -> set[str]:
        # A filter, not GroupIds: a missing ID then is simply absent instead of failing the
        # whole call, so the error can name exactly the groups that are missing.
        found: set[str] = set()
        for start in range(0, len(group_ids), FILTER_VALUES):
            chunk = list(group_ids[start : start + FILTER_VALUES])
            for page in self._paged(
                "DescribeSecurityGroups",
                ",".join(chunk),
                self.client.describe_security_groups,
                {"Filters": [{"Name": "group-id", "Values": chunk}], "MaxResults": PAGE_SIZE},
            ):
                found.update(str(g["GroupId"]) for g in page.get("SecurityGroups", []))
        return found

    def _observed(self, rule: Mapping[str, Any]) -> SecurityGroupRuleItem:
        atom = parse_rule(rule)
        tags = {str(t["Key"]): str(t.get("Value", "")) for t in rule.get("Tags", []) or []}
        mark = tags.get(OWNER_TAG, "")
        owned = mark == self.owner_key
        return ObservedItem(
            key=atom.key(),
            fingerprint=rule_fingerprint(atom.description, mark),
            payload=atom,
            owned=owned,
            native_id=str(rule.get("SecurityGroupRuleId", "")),
            owner="" if owned else mark,
            controller="" if mark else aws_rule_controller(atom.description, tags),
            provenance=Provenance.of(tags.get(PROVENANCE_TAG)),
        )

    # --------------------------------------------------------------------------------------
    # Writing

    def _group_refused(self, group: str, exc: GroupChangeRefusedError, result: ApplyResult) -> None:
        result.errors.append(
            f"{group} ({self.rendered.role_of(group)}): {exc}; the rest of this group's "
            "changes were not applied"
        )
        if exc.code in QUOTA_CODES:
            result.findings.append(
                Finding.of(
                    FindingCode.QUOTA_EXCEEDED,
                    f"{group}: AWS refused the rules as over its quota ({exc}); set "
                    "spec.aws.ruleQuota to your account's real quota or remove rules",
                    target=TARGET,
                )
            )

    def _permission_refused(self, exc: PermissionRefusedError, result: ApplyResult) -> None:
        result.errors.append(str(exc))
        result.findings.append(
            Finding.of(
                FindingCode.PERMISSION_REFUSED,
                f"{exc}; the other changes of this pass were applied",
                target=TARGET,
            )
        )

    def _tags(self, provenance: Provenance) -> list[dict[str, str]]:
        tags = [
            {"Key": OWNER_TAG, "Value": self.owner_key},
            {"Key": MANAGED_BY_LABEL, "Value": MANAGED_BY_VALUE},
        ]
        if self.owner.uid:
            tags.append({"Key": OWNER_UID_TAG, "Value": self.owner.uid})
        if provenance.recorded:
            tags.append({"Key": PROVENANCE_TAG, "Value": provenance.recorded})
        return tags

    def _authorize(
        self, group: str, direction: Direction, atoms: list[AtomicRule], result: ApplyResult
    ) -> None:
        operation, call = self._authorize_call(direction)
        kwargs: dict[str, Any] = {
            "GroupId": group,
            "IpPermissions": permissions(atoms),
            "TagSpecifications": [
                {"ResourceType": "security-group-rule", "Tags": self._tags(Provenance.CREATED)}
            ],
        }
        try:
            self._call(operation, group, call, kwargs, benign=DUPLICATE_CODES)
        except AlreadyDoneError:
            if len(atoms) == 1:
                return  # already there: nothing to add
            # Some of the batch exist already (a concurrent writer, or a stale observation):
            # look once, then add exactly the rest.
            present = {
                item.key: item
                for item in map(
                    self._observed, self._describe_rules([group], operation_resource=group)
                )
            }
            rest = [a for a in atoms if a.key() not in present]
            for atom in atoms:
                holder = present.get(atom.key())
                if holder is None:
                    continue
                if holder.owned:
                    result.created += 1  # ours after all (a concurrent pass of this resource)
                    continue
                whose = f"owned by {holder.owner}" if holder.owner else "unmanaged"
                result.findings.append(
                    Finding.of(
                        FindingCode.HELD_BY_OTHER,
                        f"{atom.key()} appeared as {holder.native_id} ({whose}) while this "
                        "pass ran; AWS allows no duplicate, so this resource does not write "
                        "its own",
                        row=atom.rows[0] if atom.rows else "",
                        target=TARGET,
                    )
                )
            if rest:
                kwargs["IpPermissions"] = permissions(rest)
                try:
                    self._call(operation, group, call, kwargs, benign=DUPLICATE_CODES)
                except AlreadyDoneError:
                    result.errors.append(
                        f"{group} {direction.value}: {len(rest)} rules kept colliding with "
                        "rules added concurrently; the next pass retries"
                    )
                    return
            result.created += len(rest)
            return
        result.created += len(atoms)

    def _adopt(
        self, group: str, changes: list[tuple[str, AtomicRule]], result: ApplyResult
    ) -> None:
        """Tag identical unmarked rules as this resource's, then give them the guide's
        description. Neither call changes what the rules allow. Rules whose tagging is refused
        stay as they are (unmarked, not described): an error and a finding say so. Each rule is
        tagged with the provenance its earlier marks recorded (created by the operator,
        orphaned, adopted again), else "adopted": one CreateTags per provenance and 1,000."""
        earlier = {item.native_id: item.provenance for item in self._last or ()}
        by_provenance: dict[Provenance, list[tuple[str, AtomicRule]]] = defaultdict(list)
        for change in changes:
            provenance = claimed_provenance(earlier.get(change[0], Provenance.UNKNOWN))
            by_provenance[provenance].append(change)
        tagged: list[tuple[str, AtomicRule]] = []
        for provenance, marked in sorted(by_provenance.items()):
            for start in range(0, len(marked), 1000):
                chunk = marked[start : start + 1000]
                ids = [rule_id for rule_id, _ in chunk]
                try:
                    self._call(
                        "CreateTags",
                        _some(ids),
                        self.client.create_tags,
                        {"Resources": ids, "Tags": self._tags(provenance)},
                    )
                except PermissionRefusedError as exc:
                    self._permission_refused(exc, result)
                    continue
                tagged += chunk
        if tagged:
            self._modify(group, tagged, ApplyResult())
        result.adopted += len(tagged)

    def _still_there(self, group: str, rule_ids: Sequence[str]) -> set[str]:
        return {
            str(r.get("SecurityGroupRuleId"))
            for r in self._describe_rules([group], operation_resource=group, rule_ids=rule_ids)
        }

    def _revoke(
        self,
        group: str,
        direction: Direction,
        items: Sequence[SecurityGroupRuleItem],
        result: ApplyResult,
    ) -> None:
        if not items:
            return
        operation, call = self._revoke_call(direction)
        ids = [item.native_id for item in items]
        gone: set[str] = set()
        try:
            self._call(operation, group, call, {"GroupId": group, "SecurityGroupRuleIds": ids},
                       benign=RULE_GONE_CODES)  # fmt: skip
            gone = set(ids)
        except AlreadyDoneError:
            # Some were gone already: revoke exactly the ones still there.
            still = self._still_there(group, ids) if len(ids) > 1 else set()
            rest = [i for i in ids if i in still]
            if rest:
                try:
                    self._call(operation, group, call,
                               {"GroupId": group, "SecurityGroupRuleIds": rest},
                               benign=RULE_GONE_CODES)  # fmt: skip
                    gone = set(rest)
                except AlreadyDoneError:
                    gone = set()
        for item in items:
            if item.native_id not in gone:
                continue
            if item.owned:
                result.deleted += 1
            else:
                result.removed_unmanaged += 1

    def _modify(
        self, group: str, changes: list[tuple[str, AtomicRule]], result: ApplyResult
    ) -> None:
        def request(subset: Iterable[tuple[str, AtomicRule]]) -> dict[str, Any]:
            return {
                "GroupId": group,
                "SecurityGroupRules": [
                    {"SecurityGroupRuleId": rule_id, "SecurityGroupRule": atom.modify_request()}
                    for rule_id, atom in subset
                ],
            }

        call = self.client.modify_security_group_rules
        try:
            self._call("ModifySecurityGroupRules", group, call, request(changes),
                       benign=RULE_GONE_CODES)  # fmt: skip
        except AlreadyDoneError:
            still = self._still_there(group, [rule_id for rule_id, _ in changes])
            rest = [(i, a) for i, a in changes if i in still]
            if len(rest) < len(changes):
                result.errors.append(
                    f"{group}: {len(changes) - len(rest)} rules vanished before their "
                    "description could be fixed; the next pass re-creates them"
                )
            if rest:
                self._call("ModifySecurityGroupRules", group, call, request(rest))
            result.updated += len(rest)
            return
        result.updated += len(changes)

    def _authorize_call(self, direction: Direction) -> tuple[str, Callable[..., Any]]:
        if direction is Direction.INGRESS:
            return "AuthorizeSecurityGroupIngress", self.client.authorize_security_group_ingress
        return "AuthorizeSecurityGroupEgress", self.client.authorize_security_group_egress

    def _revoke_call(self, direction: Direction) -> tuple[str, Callable[..., Any]]:
        if direction is Direction.INGRESS:
            return "RevokeSecurityGroupIngress", self.client.revoke_security_group_ingress
        return "RevokeSecurityGroupEgress", self.client.revoke_security_group_egress

    # --------------------------------------------------------------------------------------
    # One call: the shared retry loop, then this SDK's errors translated once

    def _call(
        self,
        operation: str,
        resource: str,
        fn: Callable[..., Any],
        kwargs: Mapping[str, Any],
        *,
        benign: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        try:
            response = self._retrier.call(
                operation, resource, lambda: fn(**kwargs), partial(classify, benign=benign)
            )
        except Exception as exc:
            translated = translate(
                exc,
                operation,
                resource,
                region=self.aws.region,
                role_of=self.rendered.role_of,
                benign=benign,
            )
            if translated is exc:
                raise
            raise translated from None
        return dict(response)
