"""One writer, read from the API server's own audit log: every write an operator replica made
fell inside its own tenure of the leader Lease.

A replica's tenure starts with a successful write of the Lease by that replica (an acquisition,
then its renewals) and ends with the next successful write of the Lease by another replica (the
next holder's acquisition). Every other write a replica made (NetworkPolicies, status, Events,
Reports, kopf's own patches), refused or not, is checked against the Lease writes before it, by
the API server's completion time (``stageTimestamp``): the last successful Lease write before
it must be the same replica's. A standby that wrote anything, or a deposed leader that wrote
after the next one took over, shows up here.

Who a replica is comes from the API server too, never from the operator: the user (the e2e
tier gives each replica a ServiceAccount of its own) or, for pods sharing a ServiceAccount, the
pod named in the user's extra info (a pod-bound token carries it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
POD_NAME = "authentication.kubernetes.io/pod-name"

Identify = Callable[[Mapping[str, Any]], str | None]


def by_user(users: Mapping[str, str]) -> Identify:
    """Replicas told apart by their user name (``{username: replica}``)."""
    return lambda event: users.get(event["user"]["username"])


def by_pod(username: str) -> Identify:
    """Replicas sharing ``username``, told apart by the pod their bound token names."""

    def identify(event: Mapping[str, Any]) -> str | None:
        user = event["user"]
        if user["username"] != username:
            return None
        pods = (user.get("extra") or {}).get(POD_NAME) or []
        return str(pods[0]) if pods else "(no pod)"

    return identify


@dataclass(frozen=True)
class Write:
    at: str
    replica: str
    what: str
    holder: str  # the holder of the Lease at that moment, by the audit log


def tenures_and_writes(
    events: Iterable[Mapping[str, Any]],
    lease: tuple[str, str],
    identify: Identify,
    *,
    holder: str = "",
) -> tuple[list[tuple[str, str]], list[Write]]:
    """The Lease's holders in order (completion time, replica) and every other write of a
    replica with the holder at its moment. ``holder``: the replica holding the Lease when the
    events begin (for a log read from a mark)."""
    lease_namespace, lease_name = lease
    holders: list[tuple[str, str]] = []
    writes: list[Write] = []
    for event in sorted(events, key=lambda e: str(e.get("stageTimestamp", ""))):
        if event.get("verb") not in WRITE_VERBS or event.get("stage") != "ResponseComplete":
            continue
        replica = identify(event)
        if replica is None:
            continue
        ref = event.get("objectRef") or {}
        at = str(event.get("stageTimestamp", ""))
        code = int((event.get("responseStatus") or {}).get("code", 0))
        is_lease = (
            ref.get("resource") == "leases"
            and ref.get("namespace") == lease_namespace
            and (ref.get("name") == lease_name or event.get("verb") == "create")
        )
        if is_lease:
            if 200 <= code < 300 and replica != holder:
                holder = replica
                holders.append((at, replica))
            continue
        what = (
            f"{event['verb']} {ref.get('resource')}"
            f"{'/' + ref['subresource'] if ref.get('subresource') else ''} "
            f"{ref.get('namespace', '')}/{ref.get('name', '')} -> {code}"
        )
        writes.append(Write(at, replica, what, holder))
    return holders, writes


def outside_their_lease(writes: Iterable[Write]) -> list[Write]:
    """The writes made by a replica that did not hold the Lease at that moment."""
    return [w for w in writes if w.replica != w.holder]
