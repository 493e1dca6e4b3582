"""Rules whose marks keep being stripped: not fought over forever. Pure: the time is passed in,
never read here.

A tool that owns a rule too (a Terraform apply that resets its tags, or rewrites its
description) strips this resource's marks at every run; the operator would adopt or take the
rule back at its next check, and the two would re-mark each other for ever. So every adoption
and take-back is remembered per rule (in the resource's status: it survives a restart and a
change of leader), and a rule reclaimed :attr:`ReclaimPolicy.limit` times within
:attr:`ReclaimPolicy.window` is *managed elsewhere*: the operator stops re-marking it for
:attr:`ReclaimPolicy.hold`, reports ``ManagedElsewhere`` and counts its access as satisfied (it
is exactly what the guide wants, or it was ours: not Missing, not drift). An edit of the spec
(a new generation) starts afresh, and so does the end of the hold: a rule that is no longer
stripped is then adopted for good.

Why 3 in an hour: the first adoption of a brownfield rule is one, and one Terraform run that
strips it once (a one-off ``terraform apply``) is healed with a second; a third within the hour
means something strips it on a schedule (a CI pipeline runs Terraform at every merge), and each
further re-mark is a write that the next run undoes. A day's hold keeps that to three writes a
day at most if nothing changes, and recovers by itself once Terraform ignores the tags.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_RULES = 200  # rules remembered per target: the status stays small whatever happens


@dataclass(frozen=True)
class ReclaimPolicy:
    """When a rule counts as managed elsewhere."""

    limit: int = 3  # adoptions or take-backs of one rule ...
    window: dt.timedelta = dt.timedelta(hours=1)  # ... within this long
    hold: dt.timedelta = dt.timedelta(hours=24)  # left alone this long, then tried again


DEFAULT_POLICY = ReclaimPolicy()


def _time(value: str) -> dt.datetime | None:
    try:
        moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ReclaimHistory:
    """One target's memory: when each rule was reclaimed lately, and which are left alone
    since when. ``generation``: the spec generation it belongs to."""

    generation: int = 0
    times: Mapping[str, tuple[dt.datetime, ...]] = field(default_factory=dict)
    elsewhere: Mapping[str, dt.datetime] = field(default_factory=dict)
    policy: ReclaimPolicy = DEFAULT_POLICY

    @classmethod
    def from_status(
        cls,
        entry: Mapping[str, Any] | None,
        generation: int,
        policy: ReclaimPolicy = DEFAULT_POLICY,
    ) -> ReclaimHistory:
        """What ``status.targets[].reclaims`` remembers; a new spec generation starts afresh
        (an edit is how a person says "try again")."""
        stored = entry or {}
        if int(stored.get("generation") or 0) != generation:
            return cls(generation=generation, policy=policy)
        times = {}
        for rule in stored.get("rules") or []:
            seen = tuple(t for t in map(_time, rule.get("times") or []) if t is not None)
            if rule.get("key") and seen:
                times[str(rule["key"])] = seen
        elsewhere = {}
        for rule in stored.get("managedElsewhere") or []:
            since = _time(str(rule.get("since", "")))
            if rule.get("key") and since is not None:
                elsewhere[str(rule["key"])] = since
        return cls(generation, times, elsewhere, policy)

    def as_status(self) -> dict[str, Any] | None:
        if not self.times and not self.elsewhere:
            return None
        return {
            "generation": self.generation,
            "rules": [
                {"key": key, "times": [_text(t) for t in times]}
                for key, times in sorted(self.times.items())
            ],
            "managedElsewhere": [
                {"key": key, "since": _text(since)} for key, since in sorted(self.elsewhere.items())
            ],
        }

    def managed_elsewhere(self, now: dt.datetime) -> dict[str, str]:
        """The rules left alone at ``now``, each with the reason the plan gives."""
        policy = self.policy
        minutes = int(policy.window.total_seconds() // 60)
        return {
            key: (
                f"managed elsewhere: its marks were removed and put back {policy.limit} times "
                f"within {minutes} minutes (a Terraform apply?); left alone since "
                f"{_text(since)}, tried again after {_text(since + policy.hold)} or at the "
                "next edit of the spec"
            )
            for key, since in sorted(self.elsewhere.items())
            if now < since + policy.hold
        }

    def record(self, reclaimed: Iterable[str], now: dt.datetime) -> ReclaimHistory:
        """The history after a pass that adopted or took back ``reclaimed`` at ``now``: old
        times fall out of the window, ended holds are dropped, and a rule reclaimed
        ``limit`` times within the window is left alone from now on."""
        policy = self.policy
        since = now - policy.window
        times = {k: tuple(t for t in v if t > since) for k, v in self.times.items()}
        for key in reclaimed:
            times[key] = (*times.get(key, ()), now)
        elsewhere = {k: s for k, s in self.elsewhere.items() if now < s + policy.hold}
        for key, seen in list(times.items()):
            if len(seen) >= policy.limit:
                elsewhere[key] = now
                del times[key]
        kept = dict(sorted(times.items(), key=lambda kv: kv[1][-1], reverse=True)[:MAX_RULES])
        return ReclaimHistory(self.generation, {k: v for k, v in kept.items() if v},
                              elsewhere, policy)  # fmt: skip
