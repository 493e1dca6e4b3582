"""Desired vs observed -> Plan. Pure: no I/O, no clock, no SDK.

Every target reduces what it manages to *items*: a NetworkPolicy, one security-group rule, one
firewall rule. An item has a stable ``key`` (its identity inside the target) and a
``fingerprint`` (its normalised content: equal fingerprints mean nothing to do). The diff is a
set difference over keys, then a comparison of fingerprints; everything provider-specific
(normalising protocol numbers, CIDR forms, port -1, ...) happens when the target builds the items.

Drift is data: :class:`Plan` carries the changes and the findings, and :meth:`Plan.drift` counts
them for status and metrics.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from server_hardening.ownership import Provenance
from server_hardening.rules import Finding, FindingCode, most_important_first

PayloadT = TypeVar("PayloadT")
"""What a target writes and reads, typed per target: a NetworkPolicy manifest, an AWS
:class:`~server_hardening.renderers.aws.AtomicRule`, a GCP firewall body."""


def fingerprint(content: Any) -> str:
    """Canonical JSON of already-normalised content: the same meaning gives the same string."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class DesiredItem(Generic[PayloadT]):
    """One thing a target must hold. ``payload`` is what the adapter writes."""

    key: str
    fingerprint: str
    payload: PayloadT
    rows: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObservedItem(Generic[PayloadT]):
    """One thing a target holds now.

    ``owned`` is True only when it carries *this* resource's ownership mark. ``owner`` names the
    other ServerHardening that marked it, if any (a conflict, not an unmanaged item).
    ``controller`` names another controller that owns it by its documented marks (the Kubernetes
    cloud provider, the AWS Load Balancer Controller, GKE, ...): never changed or removed, only
    judged for exposure. ``native_id`` is what the adapter needs to change or remove exactly this
    item (a security-group rule ID, a firewall name, a NetworkPolicy name). ``provenance`` is
    what the marks say of its origin (:class:`~server_hardening.ownership.Provenance`).
    """

    key: str
    fingerprint: str
    payload: PayloadT
    owned: bool
    native_id: str = ""
    owner: str = ""
    controller: str = ""
    # What the marks record of where it came from (created or adopted by the operator), also
    # after an orphaning release dropped the owner: release and take-backs follow it.
    provenance: Provenance = Provenance.UNKNOWN


class DriftKind(enum.StrEnum):
    """The kinds of drift, as metrics label them (status uses the camelCase form)."""

    MISSING = "missing"
    MODIFIED = "modified"
    UNEXPECTED = "unexpected"
    UNMANAGED_WIDENING = "unmanaged_widening"

    @property
    def status_key(self) -> str:
        head, *rest = self.value.split("_")
        return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class DriftCounts:
    missing: int = 0
    modified: int = 0
    unexpected: int = 0
    unmanaged_widening: int = 0

    @property
    def total(self) -> int:
        return self.missing + self.modified + self.unexpected + self.unmanaged_widening

    def by_kind(self) -> dict[DriftKind, int]:
        return {
            DriftKind.MISSING: self.missing,
            DriftKind.MODIFIED: self.modified,
            DriftKind.UNEXPECTED: self.unexpected,
            DriftKind.UNMANAGED_WIDENING: self.unmanaged_widening,
        }

    def as_status(self) -> dict[str, int]:
        return {kind.status_key: count for kind, count in self.by_kind().items()}


@dataclass(frozen=True)
class Update(Generic[PayloadT]):
    observed: ObservedItem[PayloadT]
    desired: DesiredItem[PayloadT]


class Claim(enum.Enum):
    """What this resource may do with an unmarked item that holds a desired key."""

    ADOPT = "adopt"  # it is exactly the desired item: add the marks, access never changes
    TAKE_BACK = "take back"  # it was this resource's (marks stripped, orphaned): make it desired


Claimer = Callable[[ObservedItem[PayloadT], DesiredItem[PayloadT]], Claim | None]
"""Says whether an unmarked observed item with a desired key can be adopted or taken back."""


@dataclass(frozen=True)
class Left(Generic[PayloadT]):
    """An item the plan leaves alone on purpose, and why (another controller's, an exception)."""

    observed: ObservedItem[PayloadT]
    reason: str


ExceptionMatcher = Callable[[ObservedItem[PayloadT]], "DeclaredException | None"]


@dataclass(frozen=True)
class DeclaredException:
    """An exception of the spec that matched an item: ``expired`` ones no longer excuse it."""

    index: int
    reason: str
    expired: bool


@dataclass(frozen=True)
class Plan(Generic[PayloadT]):
    """What it takes to make a target hold exactly the desired items.

    ``create``/``update`` come before ``delete``/``remove_unmanaged`` when applied: access is
    never narrower, mid-apply, than both the old and the new desired state allow.
    ``unmanaged`` lists every item the resource does not own and that its judge flagged (widening
    access, or unexpected in a managed group); ``remove_unmanaged`` is the subset to remove, which
    is empty unless the user asked for removal.
    """

    target: str
    create: tuple[DesiredItem[PayloadT], ...] = ()
    update: tuple[Update[PayloadT], ...] = ()
    delete: tuple[ObservedItem[PayloadT], ...] = ()
    unmanaged: tuple[ObservedItem[PayloadT], ...] = ()
    remove_unmanaged: tuple[ObservedItem[PayloadT], ...] = ()
    findings: tuple[Finding, ...] = field(default=())
    managed: int = 0
    adopt: tuple[Update[PayloadT], ...] = ()
    leave: tuple[Left[PayloadT], ...] = ()
    keep: tuple[ObservedItem[PayloadT], ...] = ()  # owned and as desired: nothing to do

    @property
    def empty(self) -> bool:
        """Up to date: nothing to write (unmanaged items only reported do not count)."""
        return not (
            self.create or self.update or self.delete or self.remove_unmanaged or self.adopt
        )

    @property
    def writes(self) -> int:
        return (
            len(self.create)
            + len(self.update)
            + len(self.delete)
            + len(self.remove_unmanaged)
            + len(self.adopt)
        )

    def drift(self) -> DriftCounts:
        return DriftCounts(
            missing=len(self.create),
            modified=len(self.update),
            unexpected=len(self.delete),
            unmanaged_widening=len(self.unmanaged),
        )


UnmanagedJudge = Callable[[ObservedItem[PayloadT]], Finding | None]
"""Says why an item the resource does not own matters (widens access, unexpected in a managed
group), or None when it is harmless."""


@dataclass
class _Placement(Generic[PayloadT]):
    """Where compute_plan puts each observed item (an accumulator, not a result)."""

    claim: Claimer[PayloadT] | None
    adopt_identical: bool
    exception_for: ExceptionMatcher[PayloadT] | None
    judge_unmanaged: UnmanagedJudge[PayloadT]
    managed_elsewhere: Mapping[str, str] = field(default_factory=dict)
    owned_by_key: dict[str, ObservedItem[PayloadT]] = field(default_factory=dict)
    take_back: set[str] = field(default_factory=set)
    held: set[str] = field(default_factory=set)
    unmanaged: list[ObservedItem[PayloadT]] = field(default_factory=list)
    adopt: list[Update[PayloadT]] = field(default_factory=list)
    leave: list[Left[PayloadT]] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)


def _place_unmarked(
    item: ObservedItem[PayloadT],
    candidate: DesiredItem[PayloadT] | None,
    acc: _Placement[PayloadT],
    target: str,
) -> None:
    """An item without this resource's mark: claimed (adopted, taken back), excused by an
    exception, or judged."""
    claimed = (
        acc.claim(item, candidate)
        if acc.claim is not None and candidate is not None and item.key not in acc.owned_by_key
        else None
    )
    elsewhere = acc.managed_elsewhere.get(item.key) if claimed is not None else None
    if elsewhere is not None:
        # Its marks keep being stripped (policy/reclaims.py): not re-marked again; its access
        # is satisfied, neither Missing nor drift.
        acc.held.add(item.key)
        acc.leave.append(Left(item, elsewhere))
        acc.notes.append(
            Finding.of(
                FindingCode.MANAGED_ELSEWHERE,
                f"{item.native_id or item.key} ({item.key}) is {elsewhere}. Hand it to the "
                "operator (remove it from Terraform's state, or ignore_changes its tags or "
                "description) or keep it in Terraform with spec.adoption: Never",
                row=candidate.rows[0] if candidate is not None and candidate.rows else "",
                target=target,
                objects=(item.native_id or item.key,),
            )
        )
        return
    if claimed is Claim.TAKE_BACK:
        acc.owned_by_key[item.key] = item
        acc.take_back.add(item.key)
        return
    if claimed is Claim.ADOPT and not acc.adopt_identical:
        # The access is exactly the desired one: it is there, so nothing is missing, and the
        # user asked that it stay unmarked.
        acc.held.add(item.key)
        acc.leave.append(Left(item, "identical to a desired item; spec.adoption: Never"))
        acc.notes.append(
            Finding.of(
                FindingCode.HELD_BY_OTHER,
                f"{item.key} is held by the unmarked {item.native_id or item.key}, identical to "
                "it, left unmarked as spec.adoption: Never asks (satisfied, not drift)",
                row=candidate.rows[0] if candidate is not None and candidate.rows else "",
                target=target,
                objects=(item.native_id or item.key,),
            )
        )
        return
    if claimed is Claim.ADOPT and candidate is not None:
        acc.owned_by_key[item.key] = item
        acc.adopt.append(Update(observed=item, desired=candidate))
        acc.notes.append(
            Finding.of(
                FindingCode.ADOPTABLE,
                f"{item.native_id or item.key} is exactly {item.key} as the guide wants it, "
                "without this resource's marks: adopted in Enforce (only the marks are added; "
                "access does not change)",
                row=candidate.rows[0] if candidate.rows else "",
                target=target,
            )
        )
        return
    excused = acc.exception_for(item) if acc.exception_for is not None else None
    if excused is not None:
        where = f"spec.exceptions[{excused.index}]"
        if not excused.expired:
            acc.leave.append(Left(item, f"{where}: {excused.reason}"))
            acc.notes.append(
                Finding.of(
                    FindingCode.DECLARED_EXCEPTION,
                    f"{item.native_id or item.key} is excepted by {where}: {excused.reason}",
                    target=target,
                )
            )
            return
        acc.notes.append(
            Finding.of(
                FindingCode.EXCEPTION_EXPIRED,
                f"{where} for {item.native_id or item.key} has expired ({excused.reason}): it "
                "is judged like any other unmanaged item again",
                target=target,
            )
        )
    finding = acc.judge_unmanaged(item)
    if finding is not None:
        acc.unmanaged.append(item)
        acc.notes.append(finding)


def _place_foreign(
    item: ObservedItem[PayloadT],
    wanted: DesiredItem[PayloadT] | None,
    acc: _Placement[PayloadT],
    target: str,
) -> None:
    """An item another controller owns is left alone. When it holds a desired key (on AWS the
    key is the access itself, so it grants exactly what the guide asks), the desired item is
    satisfied by it: held, not missing, and nothing of this resource's is written beside it
    (AWS refuses the duplicate; the controller would win any fight over it)."""
    if wanted is None or item.key in acc.owned_by_key:
        acc.leave.append(Left(item, f"owned by {item.controller}"))
        return
    holder = f"{item.controller} {item.native_id or item.key}"
    acc.held.add(item.key)
    acc.leave.append(Left(item, f"held by {holder}"))
    acc.notes.append(
        Finding.of(
            FindingCode.HELD_BY_OTHER,
            f"{wanted.key} is held by {holder}: it grants exactly this access, so this resource "
            "leaves it to its owner and writes none of its own (satisfied, not drift)",
            row=wanted.rows[0] if wanted.rows else "",
            target=target,
            objects=(item.native_id or item.key,),
        )
    )


def compute_plan(
    target: str,
    desired: Iterable[DesiredItem[PayloadT]],
    observed: Iterable[ObservedItem[PayloadT]],
    *,
    judge_unmanaged: UnmanagedJudge[PayloadT],
    remove_unmanaged: bool,
    findings: Iterable[Finding] = (),
    claim: Claimer[PayloadT] | None = None,
    adopt_identical: bool = True,
    judge_foreign: UnmanagedJudge[PayloadT] | None = None,
    exception_for: ExceptionMatcher[PayloadT] | None = None,
    managed_elsewhere: Mapping[str, str] | None = None,
) -> Plan[PayloadT]:
    """The normalised set diff.

    Only owned items are ever updated or deleted. An unmarked item with a desired key is claimed
    when ``claim`` says so: *adopted* (identical: only marks are added) or *taken back* (it was
    this resource's: updated to the desired state); otherwise it is left alone and judged like
    any other unmarked item (the desired one is still created beside it when the target allows
    two). Items of another controller are left, judged for exposure only (``judge_foreign``);
    items a declared exception matches are left with its reason (an expired exception excuses
    nothing). Items owned by *another* ServerHardening are neither changed nor judged here: the
    caller reports that as a conflict before planning. A claimable item whose key is in
    ``managed_elsewhere`` (key -> why: its marks keep being stripped) is left unmarked and its
    desired key counts as held.
    """
    desired_by_key: dict[str, DesiredItem[PayloadT]] = {}
    for wanted in desired:
        if wanted.key in desired_by_key:
            raise ValueError(f"{target}: two desired items share the key {wanted.key!r}")
        desired_by_key[wanted.key] = wanted

    acc = _Placement(claim, adopt_identical, exception_for, judge_unmanaged,
                     dict(managed_elsewhere or {}))  # fmt: skip
    acc.notes.extend(findings)
    owned_by_key = acc.owned_by_key
    delete: list[ObservedItem[PayloadT]] = []
    foreign: list[ObservedItem[PayloadT]] = []
    for item in sorted(observed, key=lambda o: (o.key, o.native_id)):
        if item.owner and not item.owned:
            continue
        if item.controller:
            foreign.append(item)
            exposed = judge_foreign(item) if judge_foreign is not None else None
            if exposed is not None:
                acc.notes.append(exposed)
            continue
        if not item.owned:
            _place_unmarked(item, desired_by_key.get(item.key), acc, target)
            continue
        if item.key in desired_by_key and item.key not in owned_by_key:
            owned_by_key[item.key] = item
        else:
            # Not desired any more, or a duplicate of an owned item: ours to remove.
            delete.append(item)

    for item in foreign:
        _place_foreign(item, desired_by_key.get(item.key), acc, target)
    create = [
        d for k, d in sorted(desired_by_key.items()) if k not in owned_by_key and k not in acc.held
    ]
    adopted = {a.desired.key for a in acc.adopt}
    update = [
        Update(observed=owned_by_key[k], desired=d)
        for k, d in sorted(desired_by_key.items())
        if k in owned_by_key
        and k not in adopted
        and (k in acc.take_back or owned_by_key[k].fingerprint != d.fingerprint)
    ]
    drifted: list[tuple[FindingCode, DesiredItem[PayloadT] | ObservedItem[PayloadT], str, str]] = [
        *((FindingCode.MISSING, d, "is desired and absent", d.key) for d in create),
        *(
            (
                FindingCode.MODIFIED,
                u.desired,
                "differs from what the guide requires",
                u.observed.native_id or u.observed.key,
            )
            for u in update
        ),
        *(
            (FindingCode.UNEXPECTED, o, "is managed but no longer desired", o.native_id or o.key)
            for o in delete
        ),
    ]
    for code, subject, what, affected in drifted:
        rows = subject.rows if isinstance(subject, DesiredItem) else ()
        acc.notes.append(
            Finding.of(
                code,
                f"{subject.key} {what}",
                row=rows[0] if rows else "",
                target=target,
                objects=(affected,),
            )
        )
    return Plan(
        target=target,
        create=tuple(create),
        update=tuple(update),
        delete=tuple(delete),
        unmanaged=tuple(acc.unmanaged),
        remove_unmanaged=tuple(acc.unmanaged) if remove_unmanaged else (),
        findings=tuple(most_important_first(acc.notes)),
        managed=len(desired_by_key),
        adopt=tuple(acc.adopt),
        leave=tuple(acc.leave),
        keep=tuple(
            item
            for key, item in sorted(owned_by_key.items())
            if key not in adopted
            and key not in acc.take_back
            and item.fingerprint == desired_by_key[key].fingerprint
        ),
    )
