"""The GCP write plan: which firewall writes a drift plan needs, in which waves. Pure: no I/O.

The Compute API takes one rule per call and answers each write with an operation that runs for
seconds (often ten on a real network). The writes of a pass are therefore issued together and
waited for together, in two waves that keep access from narrowing:

1. **adds**: every adoption (a PUT of the desired rule over an unmarked identical one: only its
   description, the mark, changes), every insert of a missing rule and every in-place update
   (PUT) of a modified one. A PUT replaces the whole rule, so with ``logging: Keep`` the rule's
   own ``logConfig`` rides along (a repair never switches Firewall Rules Logging off);
2. **removes**: the deletes of stale owned rules, then (``unmanagedRules: Remove``) of unmanaged
   widening rules; issued only once every add of the pass is ``DONE``. A pass whose adds did not
   all finish removes nothing: the old rules stay beside the new ones until the next pass.

:func:`pacing` says how many writes may be outstanding at once and how fast calls may be sent,
from the documented Compute rate quota and the project's FIREWALLS quota.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from server_hardening.drift import DesiredItem, Plan, Update
from server_hardening.ownership import (
    Provenance,
    claimed_provenance,
    with_description_provenance,
)
from server_hardening.renderers.gcp import FirewallBody

# The Compute API's default rate quota for global mutation methods is 1,500 requests a minute per
# project (compute.googleapis.com/default), and the operation gets/waits count too. The project is
# shared (GKE, Terraform, people): take a fraction of it.
PROJECT_REQUESTS_PER_MINUTE = 1500
SHARE_OF_RATE_QUOTA = 0.4


class WriteKind(enum.StrEnum):
    INSERT = "firewalls.insert"
    UPDATE = "firewalls.update"
    PATCH = "firewalls.patch"  # on release (orphan): only the description, dropping the mark
    DELETE = "firewalls.delete"


@dataclass(frozen=True)
class Write:
    """One firewall write: ``name`` is the rule; ``desired`` the body for inserts and updates;
    ``unmanaged`` marks the removal of a rule this resource does not own; ``description`` the
    text a patch sets."""

    kind: WriteKind
    name: str
    desired: DesiredItem[FirewallBody] | None = None
    unmanaged: bool = False
    description: str = ""
    adopt: bool = False


@dataclass(frozen=True)
class WritePlan:
    adds: tuple[Write, ...] = ()
    removes: tuple[Write, ...] = ()

    @property
    def inserts(self) -> int:
        return sum(1 for w in self.adds if w.kind is WriteKind.INSERT)

    @property
    def empty(self) -> bool:
        return not self.adds and not self.removes


def keeping_logging(
    change: Update[FirewallBody], manages_logging: bool
) -> DesiredItem[FirewallBody]:
    """The body to PUT over an observed rule: the desired one, with the observed rule's own
    ``logConfig`` unless the spec manages logging, and the provenance the rule's marks keep
    (a repair of our own rule keeps what they recorded; adopting or taking one back records
    its earlier provenance when known, else "adopted")."""
    observed = change.observed
    provenance = observed.provenance if observed.owned else claimed_provenance(observed.provenance)
    desired = recording(change.desired, provenance)
    kept = observed.payload.get("logConfig")
    if manages_logging or not kept:
        return desired
    return replace(desired, payload={**desired.payload, "logConfig": kept})


def recording(item: DesiredItem[FirewallBody], provenance: Provenance) -> DesiredItem[FirewallBody]:
    """``item`` whose description records ``provenance`` (the rendered one says "created")."""
    description = with_description_provenance(str(item.payload.get("description", "")), provenance)
    return replace(item, payload={**item.payload, "description": description})


def plan_writes(plan: Plan[FirewallBody], *, manages_logging: bool = False) -> WritePlan:
    """The two waves for ``plan`` (see the module doc). Unmanaged items are removed only when
    the plan lists them in ``remove_unmanaged`` (which the policy decided)."""
    adds = [
        Write(WriteKind.UPDATE, a.desired.key, desired=keeping_logging(a, manages_logging),
              adopt=True)
        for a in plan.adopt
    ]  # fmt: skip
    adds += [Write(WriteKind.INSERT, item.key, desired=item) for item in plan.create]
    adds += [
        Write(WriteKind.UPDATE, c.desired.key, desired=keeping_logging(c, manages_logging))
        for c in plan.update
    ]
    removes = [Write(WriteKind.DELETE, s.native_id or s.key) for s in plan.delete]
    removes += [
        Write(WriteKind.DELETE, u.native_id or u.key, unmanaged=True) for u in plan.remove_unmanaged
    ]
    return WritePlan(adds=tuple(adds), removes=tuple(removes))


@dataclass(frozen=True)
class Pacing:
    """``in_flight``: HTTP calls sent at once (threads); ``interval_seconds``: the least time
    between two calls of this adapter, so a pass stays inside its share of the rate quota.
    Outstanding operations are not capped by ``in_flight``: they run on GCP's side."""

    in_flight: int
    interval_seconds: float


def pacing(
    writes: int,
    *,
    max_in_flight: int = 8,
    requests_per_minute: float = PROJECT_REQUESTS_PER_MINUTE * SHARE_OF_RATE_QUOTA,
) -> Pacing:
    """At most ``max_in_flight`` calls at once (never more than there are writes, at least one),
    spaced to ``requests_per_minute``."""
    if requests_per_minute <= 0:
        raise ValueError("requests_per_minute must be positive")
    return Pacing(
        in_flight=max(1, min(max_in_flight, writes)),
        interval_seconds=60.0 / requests_per_minute,
    )


def fits_quota(inserts: int, limit: float, usage: float) -> tuple[bool, int]:
    """Whether ``inserts`` new rules fit the FIREWALLS quota, and how many are free. Every insert
    of a pass is outstanding at once, so the whole wave must fit before any is sent."""
    free = math.floor(limit - usage)
    return inserts <= free, free
