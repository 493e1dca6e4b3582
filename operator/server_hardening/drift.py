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

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from server_hardening.rules import Finding, Severity, most_important_first


def fingerprint(content: Any) -> str:
    """Canonical JSON of already-normalised content: the same meaning gives the same string."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class DesiredItem:
    """One thing a target must hold. ``body`` is what the adapter writes."""

    key: str
    fingerprint: str
    body: Mapping[str, Any]
    rows: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObservedItem:
    """One thing a target holds now.

    ``owned`` is True only when it carries *this* resource's ownership mark. ``owner`` names the
    other resource that marked it, if any (a conflict, not an unmanaged item). ``native_id`` is
    what the adapter needs to change or remove exactly this item (a security-group rule ID, a
    firewall name, a NetworkPolicy name).
    """

    key: str
    fingerprint: str
    body: Mapping[str, Any]
    owned: bool
    native_id: str = ""
    owner: str = ""


@dataclass(frozen=True)
class DriftCounts:
    missing: int = 0
    modified: int = 0
    unexpected: int = 0
    unmanaged_widening: int = 0

    @property
    def total(self) -> int:
        return self.missing + self.modified + self.unexpected + self.unmanaged_widening

    def as_status(self) -> dict[str, int]:
        return {
            "missing": self.missing,
            "unexpected": self.unexpected,
            "modified": self.modified,
            "unmanagedWidening": self.unmanaged_widening,
        }


@dataclass(frozen=True)
class Update:
    observed: ObservedItem
    desired: DesiredItem


@dataclass(frozen=True)
class Plan:
    """What it takes to make a target hold exactly the desired items.

    ``create``/``update`` come before ``delete``/``remove_unmanaged`` when applied: access is
    never narrower, mid-apply, than both the old and the new desired state allow.
    ``unmanaged`` lists every item the resource does not own and that its judge flagged (widening
    access, or unexpected in a managed group); ``remove_unmanaged`` is the subset to remove, which
    is empty unless the user asked for removal.
    """

    target: str
    create: tuple[DesiredItem, ...] = ()
    update: tuple[Update, ...] = ()
    delete: tuple[ObservedItem, ...] = ()
    unmanaged: tuple[ObservedItem, ...] = ()
    remove_unmanaged: tuple[ObservedItem, ...] = ()
    findings: tuple[Finding, ...] = field(default=())
    managed: int = 0

    @property
    def empty(self) -> bool:
        """Up to date: nothing to write (unmanaged items only reported do not count)."""
        return not (self.create or self.update or self.delete or self.remove_unmanaged)

    @property
    def writes(self) -> int:
        return len(self.create) + len(self.update) + len(self.delete) + len(self.remove_unmanaged)

    def drift(self) -> DriftCounts:
        return DriftCounts(
            missing=len(self.create),
            modified=len(self.update),
            unexpected=len(self.delete),
            unmanaged_widening=len(self.unmanaged),
        )


UnmanagedJudge = Callable[[ObservedItem], Finding | None]
"""Says why an item the resource does not own matters (widens access, unexpected in a managed
group), or None when it is harmless."""


def compute_plan(
    target: str,
    desired: Iterable[DesiredItem],
    observed: Iterable[ObservedItem],
    *,
    judge_unmanaged: UnmanagedJudge,
    remove_unmanaged: bool,
    findings: Iterable[Finding] = (),
) -> Plan:
    """The normalised set diff.

    Only owned items are ever updated or deleted. An observed item with the desired key that the
    resource does not own is left alone; the desired item is still created beside it when the
    target allows two (the adapter decides), and the unowned one is judged like any other.
    Items owned by *another* resource are neither changed nor judged here: the caller reports
    that as a conflict before planning.
    """
    desired_by_key: dict[str, DesiredItem] = {}
    for wanted in desired:
        if wanted.key in desired_by_key:
            raise ValueError(f"{target}: two desired items share the key {wanted.key!r}")
        desired_by_key[wanted.key] = wanted

    owned_by_key: dict[str, ObservedItem] = {}
    delete: list[ObservedItem] = []
    unmanaged: list[ObservedItem] = []
    notes: list[Finding] = list(findings)
    for item in sorted(observed, key=lambda o: (o.key, o.native_id)):
        if item.owner and not item.owned:
            continue
        if not item.owned:
            finding = judge_unmanaged(item)
            if finding is not None:
                unmanaged.append(item)
                notes.append(finding)
            continue
        if item.key in desired_by_key and item.key not in owned_by_key:
            owned_by_key[item.key] = item
        else:
            # Not desired any more, or a duplicate of an owned item: ours to remove.
            delete.append(item)

    create = [d for k, d in sorted(desired_by_key.items()) if k not in owned_by_key]
    update = [
        Update(observed=owned_by_key[k], desired=d)
        for k, d in sorted(desired_by_key.items())
        if k in owned_by_key and owned_by_key[k].fingerprint != d.fingerprint
    ]
    for absent in create:
        notes.append(
            Finding(
                Severity.WARNING,
                "Missing",
                f"{absent.key} is desired and absent",
                row=absent.rows[0] if absent.rows else "",
                target=target,
                objects=(absent.key,),
            )
        )
    for change in update:
        notes.append(
            Finding(
                Severity.WARNING,
                "Modified",
                f"{change.desired.key} differs from what the guide requires",
                row=change.desired.rows[0] if change.desired.rows else "",
                target=target,
                objects=(change.observed.native_id or change.observed.key,),
            )
        )
    for stale in delete:
        notes.append(
            Finding(
                Severity.WARNING,
                "Unexpected",
                f"{stale.key} is managed but no longer desired",
                target=target,
                objects=(stale.native_id or stale.key,),
            )
        )
    return Plan(
        target=target,
        create=tuple(create),
        update=tuple(update),
        delete=tuple(delete),
        unmanaged=tuple(unmanaged),
        remove_unmanaged=tuple(unmanaged) if remove_unmanaged else (),
        findings=tuple(most_important_first(notes)),
        managed=len(desired_by_key),
    )
