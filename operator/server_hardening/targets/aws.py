"""The AWS target: security-group rules through the EC2 API. The only module that imports boto3.

What it costs (asserted by ``tests/adapters/aws``; measured in docs/aws.md):

- ``observe``: ``DescribeSecurityGroupRules`` filtered by *all* managed group IDs at once, paged
  by 1,000 rules: a no-op reconcile is ``ceil(rules / 1000)`` reads and no write.
  ``DescribeSecurityGroups`` is called only when a managed group shows no rule at all (to tell
  an empty group from a missing one).
- ``apply``: per group and direction at most one ``AuthorizeSecurityGroup*`` and one
  ``RevokeSecurityGroup*`` (by ``SecurityGroupRuleIds``, never by a permission match), and per
  group at most one ``ModifySecurityGroupRules`` (description changes). Authorising comes
  before revoking, across all groups. Two exceptions, both documented in docs/aws.md: a lane
  whose quota has room for the end state but not for old and new side by side revokes its
  undesired rules first; and (``unmanagedRules: Remove``) a desired rule identical to an
  unmanaged one being removed is authorised after the revoke, since AWS refuses duplicates.

SDK types never leave this module: rules become :class:`~server_hardening.drift.ObservedItem`
and errors become :class:`TransientTargetError`/:class:`PermanentTargetError` here.
"""

from __future__ import annotations

import random
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
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

from server_hardening.drift import DesiredItem, ObservedItem, Plan, UnmanagedJudge
from server_hardening.model import AwsSpec, ResourceRef, UnmanagedRules
from server_hardening.ownership import (
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    OWNER_TAG,
    OWNER_UID_TAG,
    owner_key,
)
from server_hardening.renderers.aws import (
    AtomicRule,
    QuotaUse,
    RenderedSecurityGroups,
    atomic_rules,
    normalise_cidr,
    normalise_protocol,
    permissions,
    quota_finding,
    render_security_groups,
    rule_fingerprint,
)
from server_hardening.rules import Direction, Finding, Severity
from server_hardening.targets.base import (
    ApiCallRecorder,
    ApplyResult,
    Observation,
    PermanentTargetError,
    TargetError,
    TransientTargetError,
    ignore_call,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

    from server_hardening.compiler import CompiledIntent

TARGET = "aws"
PAGE_SIZE = 1000  # DescribeSecurityGroupRules: MaxResults 5..1000
FILTER_VALUES = 200  # values per filter; more groups are split over several requests
_SG_ID = re.compile(r"\bsg-[0-9a-f]{8,17}\b")
SENSITIVE_PORTS = {22: "ALL-IN-1", 2376: "VM-IN-3", 4647: "NOMAD-IN-1"}

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
AUTH_CODES = frozenset(
    {
        "UnauthorizedOperation",
        "AuthFailure",
        "AccessDenied",
        "AccessDeniedException",
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


class _BenignError(Exception):
    """An error code the caller said means "already done"."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class _LaneError(Exception):
    """A 4xx that concerns one group's change, not the whole target (bad parameter, quota)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


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


@dataclass
class RetryPolicy:
    """Per call at most ``max_attempts``; per pass at most ``budget_seconds`` of sleeping.
    Full jitter: each wait is uniform in [0, min(cap, base * 2**n)]."""

    max_attempts: int = 6
    base_seconds: float = 0.25
    cap_seconds: float = 8.0
    budget_seconds: float = 30.0


@dataclass
class _Lane:
    """What one group and direction will see in this pass."""

    creates: list[AtomicRule] = field(default_factory=list)
    deferred: list[AtomicRule] = field(default_factory=list)
    revokes: list[ObservedItem] = field(default_factory=list)


class AwsTarget:
    """EC2 security groups as a :class:`~server_hardening.targets.base.Target`."""

    name = TARGET

    def __init__(
        self,
        rendered: RenderedSecurityGroups,
        aws: AwsSpec,
        owner: ResourceRef,
        *,
        unmanaged_rules: UnmanagedRules = UnmanagedRules.REPORT,
        client: EC2Client | None = None,
        client_factory: Callable[[AwsSpec], EC2Client] | None = None,
        record_call: ApiCallRecorder = ignore_call,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.rendered = rendered
        self.aws = aws
        self.owner = owner
        self.owner_key = owner_key(owner)
        self.unmanaged_rules = unmanaged_rules
        self._client = client
        self._client_factory = client_factory or default_client
        self._record = record_call
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self._slept = 0.0
        self._last: tuple[ObservedItem, ...] | None = None

    @classmethod
    def from_intent(
        cls, intent: CompiledIntent, aws: AwsSpec, owner: ResourceRef, **kwargs: Any
    ) -> AwsTarget:
        rendered = render_security_groups(intent.cloud_rules("aws"), aws, owner)
        return cls(rendered, aws, owner, **kwargs)

    @property
    def client(self) -> EC2Client:
        if self._client is None:
            self._client = self._client_factory(self.aws)
        return self._client

    # --------------------------------------------------------------------------------------
    # Target protocol

    def desired(self) -> Sequence[DesiredItem]:
        return atomic_rules(self.rendered)

    def observe(self) -> Observation:
        self._slept = 0.0
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
        # What rendering taught (over quota, roles without a group, isolation by omission)
        # travels with the observation: the Target contract has no other way up for it.
        findings = list(self.rendered.findings)
        findings += [
            Finding(
                Severity.WARNING,
                "OwnershipConflict",
                f"{item.native_id} ({item.key}) is owned by {item.owner}, not "
                f"{self.owner_key}: two resources manage {item.body['groupId']}; it is left "
                "alone",
                target=TARGET,
            )
            for item in items
            if item.owner and not item.owned
        ]
        self._last = items
        return Observation(items=items, findings=tuple(findings))

    def judge_unmanaged(self) -> UnmanagedJudge:
        rendered = self.rendered
        fate = (
            "it will be revoked (unmanagedRules: Remove)"
            if self.unmanaged_rules is UnmanagedRules.REMOVE
            else "reported only (unmanagedRules: Report)"
        )

        def judge(item: ObservedItem) -> Finding | None:
            atom = AtomicRule.from_body(item.body)
            where = f"{item.native_id} in {atom.group_id} ({rendered.role_of(atom.group_id)})"
            text = f" ({atom.description!r})" if atom.description else ""
            if (
                atom.direction is Direction.EGRESS
                and atom.protocol == "-1"
                and atom.is_world_open()
            ):
                return Finding(
                    Severity.WARNING,
                    "UnmanagedRule",
                    f"{where} allows all egress to {atom.peer} (the default rule of a new "
                    f"security group): it makes every egress restriction of the guide moot; {fate}",
                    target=TARGET,
                )
            if atom.direction is Direction.INGRESS and atom.is_world_open():
                hits = [p for p in SENSITIVE_PORTS if atom.covers_port(p)]
                if hits:
                    return Finding(
                        Severity.ERROR,
                        "WorldOpenSensitivePort",
                        f"{where} opens {', '.join(map(str, hits))} to the world "
                        f"({atom.key()}){text}; the guide scopes these to named peers; {fate}",
                        row=SENSITIVE_PORTS[hits[0]],
                        target=TARGET,
                    )
            return Finding(
                Severity.WARNING,
                "UnmanagedRule",
                f"{where} is not managed by {self.owner_key}: {atom.key()}{text}; in a "
                f"security group every rule widens access; {fate}",
                target=TARGET,
            )

        return judge

    def apply(self, plan: Plan) -> ApplyResult:
        self._slept = 0.0
        result = ApplyResult()
        lanes, updates = self._lanes(plan, result)
        counts = self._lane_counts()
        blocked = self._quota_check(lanes, counts, result)
        revoke_first = self._needs_room_first(lanes, counts, blocked)
        groups = [g for g in self.rendered.group_ids if g not in blocked]
        both = (Direction.INGRESS, Direction.EGRESS)
        empty = _Lane()

        steps: list[tuple[str, Callable[[], None]]] = []
        # 0. Lanes that need the room before they can take the new rules.
        for group, way in sorted(revoke_first):
            steps.append(
                (group, partial(self._revoke_lane, group, way, lanes[(group, way)].revokes, result))
            )
        # 1. Authorise and modify everywhere ...
        for group in groups:
            for way in both:
                if lanes.get((group, way), empty).creates:
                    steps.append(
                        (
                            group,
                            partial(
                                self._authorize_lane,
                                group,
                                way,
                                lanes[(group, way)].creates,
                                result,
                            ),
                        )
                    )
            if updates.get(group):
                steps.append((group, partial(self._modify_group, group, updates[group], result)))
        # 2. ... then revoke.
        for group in groups:
            for way in both:
                if lanes.get((group, way), empty).revokes and (group, way) not in revoke_first:
                    steps.append(
                        (
                            group,
                            partial(
                                self._revoke_lane, group, way, lanes[(group, way)].revokes, result
                            ),
                        )
                    )
        # 3. Desired rules that an identical unmanaged rule (being removed) stood in the way of.
        for group in groups:
            for way in both:
                if lanes.get((group, way), empty).deferred:
                    steps.append(
                        (
                            group,
                            partial(
                                self._authorize_lane,
                                group,
                                way,
                                lanes[(group, way)].deferred,
                                result,
                            ),
                        )
                    )
        self._run(steps, result)
        return result

    def _needs_room_first(
        self,
        lanes: Mapping[tuple[str, Direction], _Lane],
        counts: Mapping[tuple[str, Direction], tuple[int, int]] | None,
        blocked: set[str],
    ) -> set[tuple[str, Direction]]:
        """Lanes whose end state fits the quota but old and new side by side do not: they
        revoke their undesired rules first (those grant nothing the new state keeps)."""
        out: set[tuple[str, Direction]] = set()
        if counts is None:
            return out
        for (group, direction), lane in lanes.items():
            if group in blocked or not lane.revokes:
                continue
            have = counts.get((group, direction), (0, 0))
            quota = self._quota(direction)
            for i, fam in enumerate((4, 6)):
                if have[i] + sum(1 for a in lane.creates if fam in a.family) > quota:
                    out.add((group, direction))
        return out

    def _run(self, steps: Sequence[tuple[str, Callable[[], None]]], result: ApplyResult) -> None:
        """Run the writes in order. A group-level 4xx stops that group's later writes only; a
        permanent or exhausted-transient error stops everything and says what was applied."""
        failed: set[str] = set()
        with _saying_what_was_applied(result):
            for group, step in steps:
                if group in failed:
                    continue
                try:
                    step()
                except _LaneError as exc:
                    failed.add(group)
                    self._lane_failed(group, exc, result)

    def release(self, observed: Observation, *, delete: bool) -> ApplyResult:
        """Delete: revoke the owned rules (one call per group and direction). Orphan: leave
        every rule and drop this resource's ownership tags from the owned ones (one
        ``DeleteTags`` call per 1,000 rules), so they become unmanaged rules with a
        description that still says where they came from."""
        self._slept = 0.0
        result = ApplyResult()
        owned = [item for item in observed.items if item.owned]
        with _saying_what_was_applied(result):
            if delete:
                by_lane: dict[tuple[str, Direction], list[ObservedItem]] = defaultdict(list)
                for item in owned:
                    atom = AtomicRule.from_body(item.body)
                    by_lane[(atom.group_id, atom.direction)].append(item)
                for (group, direction), items in sorted(by_lane.items()):
                    try:
                        self._revoke_lane(group, direction, items, result)
                    except _LaneError as exc:
                        result.errors.append(f"{group} {direction.value}: {exc}")
            else:
                ids = [item.native_id for item in owned]
                tags = [{"Key": OWNER_TAG, "Value": self.owner_key}, {"Key": OWNER_UID_TAG}]
                tags.append({"Key": MANAGED_BY_LABEL, "Value": MANAGED_BY_VALUE})
                for start in range(0, len(ids), 1000):
                    chunk = ids[start : start + 1000]
                    try:
                        self._call(
                            "DeleteTags",
                            ",".join(chunk),
                            self.client.delete_tags,
                            {"Resources": chunk, "Tags": tags},
                        )
                    except _LaneError as exc:
                        result.errors.append(f"DeleteTags: {exc}")
        return result

    # --------------------------------------------------------------------------------------
    # Observing

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
            token = ""
            while True:
                kwargs: dict[str, Any] = {"Filters": filters, "MaxResults": PAGE_SIZE}
                if token:
                    kwargs["NextToken"] = token
                page = self._call(
                    "DescribeSecurityGroupRules",
                    operation_resource,
                    self.client.describe_security_group_rules,
                    kwargs,
                )
                out.extend(page.get("SecurityGroupRules", []))
                token = str(page.get("NextToken") or "")
                if not token:
                    break
        return out

    def _existing_groups(self, group_ids: Sequence[str]) -> set[str]:
        # A filter, not GroupIds: a missing ID then is simply absent instead of failing the
        # whole call, so the error can name exactly the groups that are missing.
        found: set[str] = set()
        for start in range(0, len(group_ids), FILTER_VALUES):
            chunk = list(group_ids[start : start + FILTER_VALUES])
            token = ""
            while True:
                kwargs: dict[str, Any] = {
                    "Filters": [{"Name": "group-id", "Values": chunk}],
                    "MaxResults": PAGE_SIZE,
                }
                if token:
                    kwargs["NextToken"] = token
                page = self._call(
                    "DescribeSecurityGroups",
                    ",".join(chunk),
                    self.client.describe_security_groups,
                    kwargs,
                )
                found.update(str(g["GroupId"]) for g in page.get("SecurityGroups", []))
                token = str(page.get("NextToken") or "")
                if not token:
                    break
        return found

    def _observed(self, rule: Mapping[str, Any]) -> ObservedItem:
        atom = parse_rule(rule)
        tags = {str(t["Key"]): str(t.get("Value", "")) for t in rule.get("Tags", []) or []}
        mark = tags.get(OWNER_TAG, "")
        owned = mark == self.owner_key
        body = dict(atom.as_body())
        body["ruleId"] = str(rule.get("SecurityGroupRuleId", ""))
        body["tags"] = tags
        return ObservedItem(
            key=atom.key(),
            fingerprint=rule_fingerprint(atom.description, mark),
            body=body,
            owned=owned,
            native_id=str(rule.get("SecurityGroupRuleId", "")),
            owner="" if owned else mark,
        )

    def _lane_counts(self) -> dict[tuple[str, Direction], tuple[int, int]] | None:
        """Rules per group/direction and family from the last observe (None: not observed)."""
        if self._last is None:
            return None
        counts: dict[tuple[str, Direction], list[int]] = defaultdict(lambda: [0, 0])
        for item in self._last:
            atom = AtomicRule.from_body(item.body)
            lane = counts[(atom.group_id, atom.direction)]
            if 4 in atom.family:
                lane[0] += 1
            if 6 in atom.family:
                lane[1] += 1
        return {k: (v[0], v[1]) for k, v in counts.items()}

    # --------------------------------------------------------------------------------------
    # Planning the calls

    def _quota(self, direction: Direction) -> int:
        quota = self.aws.rule_quota
        return quota.inbound if direction is Direction.INGRESS else quota.outbound

    def _lanes(
        self, plan: Plan, result: ApplyResult
    ) -> tuple[dict[tuple[str, Direction], _Lane], dict[str, list[tuple[str, AtomicRule]]]]:
        managed = set(self.rendered.group_ids)
        lanes: dict[tuple[str, Direction], _Lane] = defaultdict(_Lane)
        updates: dict[str, list[tuple[str, AtomicRule]]] = defaultdict(list)
        removing = {u.native_id for u in plan.remove_unmanaged}
        held = self._holders(plan)
        for desired in plan.create:
            atom = _desired_atom(desired)
            if atom.group_id not in managed:
                continue
            lane = lanes[(atom.group_id, atom.direction)]
            holders = held.get(desired.key, [])
            if not holders:
                lane.creates.append(atom)
            elif all(h.native_id in removing for h in holders):
                lane.deferred.append(atom)
            else:
                keeper = next(h for h in holders if h.native_id not in removing)
                whose = f"owned by {keeper.owner}" if keeper.owner else "unmanaged"
                result.findings.append(
                    Finding(
                        Severity.WARNING,
                        "HeldByOtherRule",
                        f"{desired.key} is held by {keeper.native_id} ({whose}); AWS allows "
                        "no duplicate, so this resource does not write its own",
                        row=desired.rows[0] if desired.rows else "",
                        target=TARGET,
                    )
                )
        for change in plan.update:
            atom = _desired_atom(change.desired)
            if atom.group_id in managed:
                updates[atom.group_id].append((change.observed.native_id, atom))
        for item in (*plan.delete, *plan.remove_unmanaged):
            atom = AtomicRule.from_body(item.body)
            if atom.group_id in managed:
                lanes[(atom.group_id, atom.direction)].revokes.append(item)
        return dict(lanes), dict(updates)

    def _holders(self, plan: Plan) -> dict[str, list[ObservedItem]]:
        """Rules this resource does not own, by key: AWS refuses a second rule with that key."""
        held: dict[str, list[ObservedItem]] = defaultdict(list)
        for item in (*(self._last or ()), *plan.unmanaged, *plan.remove_unmanaged):
            if not item.owned and item not in held[item.key]:
                held[item.key].append(item)
        return held

    def _quota_check(
        self,
        lanes: Mapping[tuple[str, Direction], _Lane],
        counts: Mapping[tuple[str, Direction], tuple[int, int]] | None,
        result: ApplyResult,
    ) -> set[str]:
        """Groups whose end state does not fit: nothing is written to them this pass."""
        if counts is None:
            return set()
        blocked: set[str] = set()
        for (group, direction), lane in sorted(lanes.items()):
            have = counts.get((group, direction), (0, 0))
            adds = [*lane.creates, *lane.deferred]
            removes = [AtomicRule.from_body(i.body) for i in lane.revokes]
            end = [
                have[i]
                + sum(1 for a in adds if fam in a.family)
                - sum(1 for a in removes if fam in a.family)
                for i, fam in enumerate((4, 6))
            ]
            quota = self._quota(direction)
            if max(end) > quota:
                blocked.add(group)
                role = self.rendered.role_of(group)
                use = QuotaUse(group, direction, ipv4=end[0], ipv6=end[1], quota=quota)
                existing = (
                    f" after this pass ({have[0]} IPv4/{have[1]} IPv6 now, {len(adds)} to add, "
                    f"{len(removes)} to remove)"
                )
                result.findings.append(quota_finding(use, role=role, existing=existing))
                result.errors.append(
                    f"{group} ({role}): not written: {direction.value} would hold "
                    f"{end[0]} IPv4 / {end[1]} IPv6 rules, over the quota of {quota}"
                )
        return blocked

    # --------------------------------------------------------------------------------------
    # Writing

    def _lane_failed(self, group: str, exc: _LaneError, result: ApplyResult) -> None:
        result.errors.append(
            f"{group} ({self.rendered.role_of(group)}): {exc}; the rest of this group's "
            "changes were not applied"
        )
        if exc.code in QUOTA_CODES:
            result.findings.append(
                Finding(
                    Severity.ERROR,
                    "QuotaExceeded",
                    f"{group}: AWS refused the rules as over its quota ({exc}); set "
                    "spec.aws.ruleQuota to your account's real quota or remove rules",
                    target=TARGET,
                )
            )

    def _tags(self) -> list[dict[str, str]]:
        tags = [
            {"Key": OWNER_TAG, "Value": self.owner_key},
            {"Key": MANAGED_BY_LABEL, "Value": MANAGED_BY_VALUE},
        ]
        if self.owner.uid:
            tags.append({"Key": OWNER_UID_TAG, "Value": self.owner.uid})
        return tags

    def _authorize_lane(
        self, group: str, direction: Direction, atoms: list[AtomicRule], result: ApplyResult
    ) -> None:
        operation, call = self._authorize_call(direction)
        kwargs: dict[str, Any] = {
            "GroupId": group,
            "IpPermissions": permissions(atoms),
            "TagSpecifications": [{"ResourceType": "security-group-rule", "Tags": self._tags()}],
        }
        try:
            self._call(operation, group, call, kwargs, benign=DUPLICATE_CODES)
        except _BenignError:
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
                    Finding(
                        Severity.WARNING,
                        "HeldByOtherRule",
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
                except _BenignError:
                    result.errors.append(
                        f"{group} {direction.value}: {len(rest)} rules kept colliding with "
                        "rules added concurrently; the next pass retries"
                    )
                    return
            result.created += len(rest)
            return
        result.created += len(atoms)

    def _revoke_lane(
        self,
        group: str,
        direction: Direction,
        items: Sequence[ObservedItem],
        result: ApplyResult,
    ) -> None:
        if not items:
            return
        operation, call = self._revoke_call(direction)
        ids = [item.native_id for item in items]
        try:
            self._call(operation, group, call, {"GroupId": group, "SecurityGroupRuleIds": ids},
                       benign=RULE_GONE_CODES)  # fmt: skip
            gone = set(ids)
        except _BenignError:
            if len(ids) == 1:
                gone = set()
            else:
                still = {
                    str(r.get("SecurityGroupRuleId"))
                    for r in self._describe_rules([group], operation_resource=group, rule_ids=ids)
                }
                rest = [i for i in ids if i in still]
                gone = set()
                if rest:
                    try:
                        self._call(operation, group, call,
                                   {"GroupId": group, "SecurityGroupRuleIds": rest},
                                   benign=RULE_GONE_CODES)  # fmt: skip
                        gone = set(rest)
                    except _BenignError:
                        gone = set()
        for item in items:
            if item.native_id not in gone:
                continue
            if item.owned:
                result.deleted += 1
            else:
                result.removed_unmanaged += 1

    def _modify_group(
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
        except _BenignError:
            ids = [rule_id for rule_id, _ in changes]
            still = {
                str(r.get("SecurityGroupRuleId"))
                for r in self._describe_rules([group], operation_resource=group, rule_ids=ids)
            }
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
    # One call, with retries and error translation

    def _call(
        self,
        operation: str,
        resource: str,
        fn: Callable[..., Any],
        kwargs: Mapping[str, Any],
        *,
        benign: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = fn(**kwargs)
            except ClientError as exc:
                error = exc.response.get("Error", {})
                code = str(error.get("Code", ""))
                message = str(error.get("Message", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                if code in benign:
                    self._record(operation, "ok")
                    raise _BenignError(code) from None
                if code in THROTTLE_CODES:
                    outcome = "throttled"
                elif code in TRANSIENT_CODES or status >= 500:
                    outcome = "transient_error"
                else:
                    self._record(operation, "error")
                    raise self._translate(operation, resource, code, message) from None
                self._record(operation, outcome)
                self._backoff(operation, resource, attempt, f"{code}: {message}")
                continue
            except _CONNECTION_ERRORS as exc:
                self._record(operation, "transient_error")
                self._backoff(operation, resource, attempt, str(exc))
                continue
            except (NoCredentialsError, PartialCredentialsError, NoRegionError) as exc:
                self._record(operation, "error")
                raise PermanentTargetError(
                    f"{operation}: no usable AWS credentials or region ({exc})",
                    operation=operation,
                    resource=resource,
                ) from None
            except BotoCoreError as exc:
                self._record(operation, "error")
                raise PermanentTargetError(
                    f"{operation} on {resource}: {exc}", operation=operation, resource=resource
                ) from None
            self._record(operation, "ok")
            return dict(response)

    def _backoff(self, operation: str, resource: str, attempt: int, why: str) -> None:
        policy = self._retry
        if attempt >= policy.max_attempts:
            raise TransientTargetError(
                f"{operation} on {resource}: gave up after {attempt} attempts ({why})",
                operation=operation,
                resource=resource,
            )
        delay = self._rng.uniform(0, min(policy.cap_seconds, policy.base_seconds * 2**attempt))
        if self._slept + delay > policy.budget_seconds:
            raise TransientTargetError(
                f"{operation} on {resource}: retry budget of {policy.budget_seconds:g}s for "
                f"this pass spent ({why})",
                operation=operation,
                resource=resource,
            )
        self._slept += delay
        self._sleep(delay)

    def _translate(
        self, operation: str, resource: str, code: str, message: str
    ) -> PermanentTargetError | _LaneError:
        if code in GROUP_MISSING_CODES:
            # Name the group the error is about: the call's own group, or one its rules
            # reference (AWS puts the ID in the message).
            named = [g for g in dict.fromkeys(_SG_ID.findall(message)) if g] or resource.split(",")
            groups = ", ".join(
                f"{g} (spec.aws.securityGroups.{self.rendered.role_of(g)})"
                if self.rendered.role_of(g)
                else g
                for g in named
            )
            return PermanentTargetError(
                f"{operation} on {resource}: security group {groups} does not exist in "
                f"{self.aws.region} ({code}: {message})",
                operation=operation,
                resource=",".join(named),
            )
        if code in AUTH_CODES:
            return PermanentTargetError(
                f"{operation} on {resource} was refused ({code}): the operator's AWS identity "
                f"lacks ec2:{operation} or its credentials are invalid; see "
                f"deploy/aws/iam-policy.json ({message})",
                operation=operation,
                resource=resource,
            )
        return _LaneError(code, message)


def _desired_atom(item: DesiredItem) -> AtomicRule:
    return AtomicRule.from_body(item.body)


def parse_rule(rule: Mapping[str, Any]) -> AtomicRule:
    """A ``SecurityGroupRule`` from DescribeSecurityGroupRules as a normalised AtomicRule."""
    protocol = normalise_protocol(rule.get("IpProtocol", "-1"))
    first = rule.get("FromPort")
    last = rule.get("ToPort")
    if protocol == "-1":
        first = last = None
    if rule.get("CidrIpv4"):
        peer_type, peer = "cidr4", normalise_cidr(str(rule["CidrIpv4"]))
    elif rule.get("CidrIpv6"):
        peer_type, peer = "cidr6", normalise_cidr(str(rule["CidrIpv6"]))
    elif rule.get("ReferencedGroupInfo"):
        peer_type, peer = "group", str(rule["ReferencedGroupInfo"].get("GroupId", ""))
    else:
        peer_type, peer = "prefix-list", str(rule.get("PrefixListId", ""))
    return AtomicRule(
        group_id=str(rule.get("GroupId", "")),
        direction=Direction.EGRESS if rule.get("IsEgress") else Direction.INGRESS,
        protocol=protocol,
        from_port=None if first is None else int(first),
        to_port=None if last is None else int(last),
        peer_type=peer_type,
        peer=peer,
        description=str(rule.get("Description") or ""),
    )


@contextmanager
def _saying_what_was_applied(result: ApplyResult) -> Iterator[None]:
    """Re-raise an error that stops an apply or release with what was and was not applied."""
    try:
        yield
    except PermanentTargetError as exc:
        raise AwsPermanentError(
            f"{exc}; {_summary(result)}",
            operation=exc.operation,
            resource=exc.resource,
            result=result,
        ) from exc
    except TransientTargetError as exc:
        raise AwsTransientError(
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
