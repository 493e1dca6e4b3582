"""Checks on VPC firewall rules the operator does not own. Pure: no I/O here.

GCP evaluates firewall rules by priority (lowest number first; a deny wins a tie), so an
unmanaged allow matters only where it reaches a managed tag with something none of our allows
grants and none of our denies blocks first. The chain asks, of a rule that allows traffic to a
managed tag: does it open a sensitive port to the whole internet with nothing of ours denying
it first (:func:`.exposure.world_open_sensitive_port`, as on every target)? Else does it widen
access beyond our rules (``UnmanagedWidening``, with the row it undercuts), or is its excess all
denied by ours (``UnmanagedRuleShadowed``, info: it would open access if our rules went)?
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server_hardening.addresses import AddressSet
from server_hardening.drift import Claim, Claimer, DesiredItem, ObservedItem, UnmanagedJudge
from server_hardening.machines import GcpMachines
from server_hardening.policy.effective import GcpEffective
from server_hardening.policy.exposure import (
    Access,
    sensitive_ports_open_to_world,
    world_open_sensitive_port,
)
from server_hardening.renderers.gcp import (
    DEFAULT_PRIORITY,
    FLOOR_PRIORITY,
    ISOLATION_PRIORITY,
    WORLD_V4,
    WORLD_V6,
    FirewallBody,
    RenderedFirewalls,
    _norm_entries,
    _port_bounds,
    _port_text,
    firewall_items,
    normalise_firewall,
)
from server_hardening.rules import Direction, Finding, FindingCode, PortRange, Role

TARGET = "gcp"


@dataclass(frozen=True)
class _Flow:
    protocol: str  # tcp, udp, icmp, all, ...
    ports: tuple[int, int]


def _flows(body: Mapping[str, Any], action: str) -> list[_Flow]:
    out = []
    for entry in _norm_entries(body.get(action) or []):
        proto = entry["IPProtocol"]
        if "ports" in entry:
            for text in entry["ports"]:
                out.append(_Flow(proto, _port_bounds(text)))
        else:
            out.append(_Flow(proto, (0, 65535)))
    return out


def _flow_covered(flow: _Flow, body: Mapping[str, Any], action: str) -> bool:
    for other in _flows(body, action):
        if other.protocol == "all" or (
            other.protocol == flow.protocol
            and other.ports[0] <= flow.ports[0]
            and flow.ports[1] <= other.ports[1]
        ):
            return True
    return False


def _peer_covered(
    ranges: Sequence[str], peer_tags: Sequence[str], body: Mapping[str, Any], direction: str
) -> bool:
    """Every source (ingress) or destination (egress) of the unmanaged rule is among ``body``'s:
    its addresses inside the union of ``body``'s ranges, its tags among ``body``'s tags."""
    if direction == "INGRESS":
        their_ranges, their_tags = body.get("sourceRanges") or [], body.get("sourceTags") or []
    else:
        their_ranges, their_tags = body.get("destinationRanges") or [WORLD_V4, WORLD_V6], []
    if not AddressSet.of(their_ranges).covers(AddressSet.of(ranges)):
        return False
    return all(tag in their_tags for tag in peer_tags)


def _targets(body: Mapping[str, Any], tags: Mapping[Role, str]) -> list[Role]:
    """The managed roles a rule reaches. A rule scoped by target service account may reach any
    instance that runs as it, and which ones do is not known here: it is judged as reaching
    every managed tag, rather than not at all."""
    if body.get("targetServiceAccounts"):
        return list(tags)
    target_tags = body.get("targetTags") or []
    return [role for role, tag in tags.items() if not target_tags or tag in target_tags]


def judge_firewall(body: Mapping[str, Any], rendered: RenderedFirewalls) -> Finding | None:
    """Does this unmanaged firewall widen access to a managed tag beyond what we render?

    - A deny, a disabled rule, or one that targets no managed tag: harmless (None).
    - An allow whose every (protocol, port, peer) is allowed by one of our rules too: None.
    - An allow whose excess is all denied by one of ours at a higher (or equal) priority, e.g.
      ``default-allow-internal`` under the isolation denies and the floor: an ``info`` finding
      (``UnmanagedRuleShadowed``), since it would open access if our rules went.
    - Otherwise a ``warning`` (``UnmanagedWidening``), with the guide row it undercuts.
    """
    if body.get("disabled") or not body.get("allowed"):
        return None
    direction = str(body.get("direction") or "INGRESS").upper()
    targets = _targets(body, rendered.tags)
    if not targets:
        return None
    if direction == "INGRESS":
        ranges = list(body.get("sourceRanges") or [])
        peer_tags = list(body.get("sourceTags") or [])
        if not ranges and not peer_tags and not body.get("sourceServiceAccounts"):
            ranges = [WORLD_V4]
    else:
        ranges = list(body.get("destinationRanges") or [WORLD_V4])
        peer_tags = []
    priority = int(body.get("priority", DEFAULT_PRIORITY))
    ours = [normalise_firewall(f, rendered.project) for f in rendered.firewalls]
    exposed = opens_a_sensitive_port_to_the_world(body, ours, targets, rendered, priority)
    if exposed is not None:
        return exposed
    shadowed_by: list[str] = []
    for role in targets:
        tag = rendered.tags[role]
        mine = [f for f in ours if tag in f.get("targetTags", []) and f["direction"] == direction]
        no_floor = not any(f["priority"] == FLOOR_PRIORITY for f in mine)
        if direction == "EGRESS" and no_floor and priority >= ISOLATION_PRIORITY:
            # No egress floor: egress is open anyway; only a rule above the isolation denies
            # can widen anything.
            continue
        for flow in _flows(body, "allowed"):
            sources = [
                *(("r", r) for r in ranges),
                *(("t", t) for t in peer_tags),
                *(("s", a) for a in body.get("sourceServiceAccounts") or []),
            ]
            for source in sources:
                # Instances running as a service account: their addresses and tags are not
                # known here, and none of our rules names an account, so nothing of ours
                # covers or denies it.
                by_account = source[0] == "s"
                src_ranges = [source[1]] if source[0] == "r" else []
                src_tags = [source[1]] if source[0] == "t" else []
                if not by_account and any(
                    "allowed" in f
                    and _flow_covered(flow, f, "allowed")
                    and _peer_covered(src_ranges, src_tags, f, direction)
                    for f in mine
                ):
                    continue
                deny = (
                    None
                    if by_account
                    else next(
                        (
                            f
                            for f in sorted(mine, key=lambda f: f["priority"])
                            if "denied" in f
                            and f["priority"] <= priority
                            and _flow_covered(flow, f, "denied")
                            and _peer_covered(src_ranges, src_tags, f, direction)
                        ),
                        None,
                    )
                )
                if deny is not None:
                    shadowed_by.append(deny["name"])
                    continue
                return _widening(body, role, flow, source, direction, mine)
    if shadowed_by:
        return Finding.of(
            FindingCode.UNMANAGED_RULE_SHADOWED,
            f"firewall {body.get('name')} (priority {priority}) allows more than the guide on "
            f"managed tags, but {', '.join(sorted(set(shadowed_by)))} deny it first",
            target=TARGET,
        )
    return None


def accesses(body: Mapping[str, Any]) -> list[Access]:
    """An ingress allow as Accesses, one per allowed entry: sources are its ranges (none at all:
    the whole internet, as GCP reads it); tags and service accounts name no addresses."""
    if str(body.get("direction") or "INGRESS").upper() != "INGRESS":
        return []
    ranges = tuple(body.get("sourceRanges") or ())
    if not ranges and not body.get("sourceTags") and not body.get("sourceServiceAccounts"):
        ranges = (WORLD_V4, WORLD_V6)
    where = f"firewall {body.get('name')} (not managed)"
    out = []
    for entry in _norm_entries(body.get("allowed") or []):
        ports = entry.get("ports")
        spans = tuple(PortRange(*_port_bounds(text)) for text in ports) if ports else None
        out.append(Access(Direction.INGRESS, ranges, entry["IPProtocol"], spans, where))
    return out


def opens_a_sensitive_port_to_the_world(
    body: Mapping[str, Any],
    ours: Sequence[Mapping[str, Any]],
    targets: Sequence[Role],
    rendered: RenderedFirewalls,
    priority: int,
) -> Finding | None:
    """A sensitive port from the whole internet that no deny of ours (at a higher or equal
    priority) blocks first, on some managed tag the rule reaches."""
    for seen in accesses(body):
        finding = world_open_sensitive_port(seen, TARGET)
        if finding is None:
            continue
        for role in targets:
            tag = rendered.tags[role]
            denies = [
                f
                for f in ours
                if "denied" in f
                and tag in f.get("targetTags", [])
                and f["direction"] == "INGRESS"
                and f["priority"] <= priority
            ]
            for port in sensitive_ports_open_to_world(seen):
                flow = _Flow("tcp", (port, port))
                if not any(
                    _flow_covered(flow, f, "denied")
                    and _peer_covered(list(seen.peers), [], f, "INGRESS")
                    for f in denies
                ):
                    return finding
    return None


def _widening(
    body: Mapping[str, Any],
    role: Role,
    flow: _Flow,
    source: tuple[str, str],
    direction: str,
    mine: Sequence[Mapping[str, Any]],
) -> Finding:
    """A warning naming the first excess flow and the guide row it undercuts."""
    ports = "all" if flow.ports == (0, 65535) else _port_text(*flow.ports)
    src_ranges = [source[1]] if source[0] == "r" else []
    src_tags = [source[1]] if source[0] == "t" else []
    row = ""
    for f in mine:
        # Above our isolation deny (a lower number) and on its peer: it undoes the isolation.
        if (
            "denied" in f
            and f["priority"] == ISOLATION_PRIORITY
            and _flow_covered(flow, f, "denied")
            and _peer_covered(src_ranges, src_tags, f, direction)
        ):
            row = next((r for r in _rows_of(f) if r.endswith("ISO-1")), "")
            break
    if not row and flow.protocol in ("tcp", "all") and flow.ports[0] <= 22 <= flow.ports[1]:
        row = "ALL-IN-1" if direction == "INGRESS" else "ALL-OUT-4"
    if not row:
        for f in mine:
            if "allowed" in f and _flow_covered(flow, f, "allowed"):
                row = next(iter(_rows_of(f)), "")
                break
    way = "from" if direction == "INGRESS" else "to"
    return Finding.of(
        FindingCode.UNMANAGED_WIDENING,
        f"firewall {body.get('name')} (priority {body.get('priority', DEFAULT_PRIORITY)}) allows "
        f"{direction.lower()} {flow.protocol}:{ports} {way} {_who(source)} on {role.value} "
        f"(targets {_reach(body)}), which the "
        "guide does not list",
        row=row,
        target=TARGET,
    )


def _who(source: tuple[str, str]) -> str:
    return f"service account {source[1]}" if source[0] == "s" else source[1]


def _reach(body: Mapping[str, Any]) -> str:
    accounts = body.get("targetServiceAccounts") or []
    if accounts:
        return "instances running as " + ", ".join(accounts) + ", possibly any managed tag"
    return ",".join(body.get("targetTags") or []) or "all instances"


def _rows_of(body: Mapping[str, Any]) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", str(body.get("description", "")))
    return [r for r in match[1].split(",") if r] if match else []


def judge_foreign_firewall(
    body: Mapping[str, Any], controller: str, rendered: RenderedFirewalls
) -> Finding | None:
    """Another controller's firewall (GKE's, the service controller's): never removed, but a
    sensitive port it opens to the whole internet on a managed tag is reported like anyone's."""
    if body.get("disabled") or not body.get("allowed"):
        return None
    targets = _targets(body, rendered.tags)
    if not targets:
        return None
    ours = [normalise_firewall(f, rendered.project) for f in rendered.firewalls]
    priority = int(body.get("priority", DEFAULT_PRIORITY))
    finding = opens_a_sensitive_port_to_the_world(body, ours, targets, rendered, priority)
    if finding is None:
        return None
    return Finding.of(
        finding.code,
        f"{finding.message} (owned by {controller}: left alone)",
        row=finding.row,
        target=finding.target,
    )


def _policy_rule_as_firewall(policy: Mapping[str, Any], rule: Mapping[str, Any]) -> dict[str, Any]:
    """A firewall-policy rule as the VPC firewall it acts like, at priority 0: policies are
    evaluated before every VPC rule, so nothing of ours can deny what it allows."""
    match = rule.get("match") or {}
    body: dict[str, Any] = {
        "name": f"{policy.get('type', 'policy').lower()} policy {policy.get('name', '?')} "
        f"rule {rule.get('priority', '?')}",
        "priority": 0,
        "direction": str(rule.get("direction") or "INGRESS").upper(),
        "allowed": [
            {
                "IPProtocol": c.get("ipProtocol", "all"),
                **({"ports": c["ports"]} if c.get("ports") else {}),
            }
            for c in match.get("layer4Configs") or [{"ipProtocol": "all"}]
        ],
    }
    if body["direction"] == "INGRESS":
        body["sourceRanges"] = list(match.get("srcIpRanges") or [])
    else:
        body["destinationRanges"] = list(match.get("destIpRanges") or [])
    if rule.get("targetServiceAccounts"):
        body["targetServiceAccounts"] = list(rule["targetServiceAccounts"])
    return body


def judge_firewall_policies(
    policies: Sequence[Mapping[str, Any]], rendered: RenderedFirewalls
) -> list[Finding]:
    """Allow rules of the network's effective firewall policies, judged like an unmanaged VPC
    rule that nothing of ours can deny: a sensitive port open to the world is
    ``WorldOpenSensitivePort``; anything else our rules do not allow overrides a guide row
    (``FirewallPolicyOverrides``). Deny and goto_next rules only narrow, or defer to the VPC
    rules, and are not reported."""
    findings: list[Finding] = []
    for policy in policies:
        for rule in policy.get("rules") or []:
            if rule.get("disabled") or str(rule.get("action", "")).lower() != "allow":
                continue
            body = _policy_rule_as_firewall(policy, rule)
            if body["direction"] == "INGRESS" and not body["sourceRanges"]:
                continue  # sources by secure tag, FQDN or address group: not judged here
            finding = judge_firewall(body, rendered)
            if finding is None or finding.code is FindingCode.WORLD_OPEN_SENSITIVE_PORT:
                findings.extend([finding] if finding else [])
                continue
            findings.append(
                Finding.of(
                    FindingCode.FIREWALL_POLICY_OVERRIDES,
                    f"{finding.message.replace('(not managed)', '')}; firewall policies are "
                    "evaluated before the VPC rules, so the guide's denies cannot stop it",
                    row=finding.row,
                    target=TARGET,
                )
            )
    return findings


class GcpPolicy:
    """The ``gcp`` target's judgement (:class:`~server_hardening.policy.base.TargetPolicy`).

    Ownership of a firewall is decided by its mark; an unmarked one under this resource's name
    prefix (a digest of namespace, name and installation) is claimed: adopted when it is exactly
    the desired rule, else taken back (its marks were stripped, or an orphaning release left
    it)."""

    def __init__(
        self, rendered: RenderedFirewalls, *, name_prefix: str, remove_unmanaged: bool = False
    ) -> None:
        self.rendered = rendered
        self.name_prefix = name_prefix
        self._remove_unmanaged = remove_unmanaged

    @property
    def remove_unmanaged(self) -> bool:
        return self._remove_unmanaged

    def desired(self) -> Sequence[DesiredItem[FirewallBody]]:
        return firewall_items(self.rendered)

    def judge_unmanaged(
        self, observed: Sequence[ObservedItem[FirewallBody]]
    ) -> UnmanagedJudge[FirewallBody]:
        def judge(item: ObservedItem[FirewallBody]) -> Finding | None:
            return judge_firewall(item.payload, self.rendered)

        return judge

    def judge_foreign(self) -> UnmanagedJudge[FirewallBody]:
        def judge(item: ObservedItem[FirewallBody]) -> Finding | None:
            return judge_foreign_firewall(item.payload, item.controller, self.rendered)

        return judge

    def effective(self, machines: GcpMachines) -> GcpEffective:
        """Every instance of every role as it is really exposed (``policy.effective``); the
        firewalls this resource writes are named as its own, and are what the guide allows."""
        firewalls = self.rendered.firewalls
        return GcpEffective(machines, managed=(str(f["name"]) for f in firewalls), guide=firewalls)

    def claimer(self) -> Claimer[FirewallBody]:
        project = self.rendered.project
        logging = self.rendered.manages_logging

        def content(body: FirewallBody) -> dict[str, Any]:
            normal = normalise_firewall(body, project, with_logging=logging)
            normal.pop("description", None)
            return normal

        def claim(
            item: ObservedItem[FirewallBody], desired: DesiredItem[FirewallBody]
        ) -> Claim | None:
            if not item.key.startswith(self.name_prefix):
                return None
            return (
                Claim.ADOPT
                if content(item.payload) == content(desired.payload)
                else Claim.TAKE_BACK
            )

        return claim
