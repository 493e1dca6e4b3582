"""Rules -> Compute Engine v1 VPC firewall rules (REST JSON bodies). Pure: no google import, no I/O.

What is written, per role that has a network tag in ``spec.gcp.targetTags`` (docs/gcp.md):

- Priority bands. GCP evaluates the rule with the *lowest* number first, and a deny wins over an
  allow at equal priority:

  ====== ==================================================================================
   900   ``…-deny-…``: the isolation rows NOMAD-ISO-1 / VM-ISO-1, both directions. They sit
         above every allow, so no allow of ours or of anyone's at priority >= 900 (the
         default network's ``default-allow-internal`` at 65534, a world-open SSH-rerun range at
         1000) reaches a Nomad client from a Nomad client, or a VM from a VM.
   1000  ``…-allow-…``: the guide's rows (GCP's default priority, so equal to most hand-made
         rules and to GKE's own rules).
   65000 ``…-in-deny-all`` (always) and ``…-eg-deny-all`` (with ``restrictEgress``): the
         floors, CHOICE-GCP-INGRESS-FLOOR / CHOICE-GCP-EGRESS-FLOOR. Below every explicit
         rule, above the default network's 65534 rules: on a managed tag, what the guide does
         not list is blocked even on the ``default`` network, while rules a person or GKE
         added at normal priorities still apply (and are judged as unmanaged).
  ====== ==================================================================================

- Peers. Ingress from a Nomad client or external VM tag uses ``sourceTags`` (tighter than the
  subnets: only instances carrying the tag). Source tags match only traffic from an instance's
  *primary internal IP* in the same network, so the Kubernetes nodes as a source use their tag
  *and* their CIDRs (GKE pods send from alias IPs, which tags do not match: list the pod range in
  ``topology.kubernetesNodes.cidrs``). Denies use tags and CIDRs together (a deny may only be
  broader). Egress has no destination tags in GCP, so egress uses ``destinationRanges``.
- Merging. Rules with the same target, direction, action, priority and resolved peer (tags and
  ranges) become one firewall with several ``allowed`` entries; IPv4 and IPv6 ranges are split
  (one rule cannot mix them).
- Without ``restrictEgress`` GCP allows all egress, so the guide's egress *allows* are not
  written (they would change nothing); the isolation denies are.
- Names: ``ownership.gcp_name_prefix(owner)`` + ``<role>-<in|eg>-<allow|deny>-<peers>``,
  RFC 1035, <= 63 characters, deterministic; colliding names get a digest of the peer.
- Descriptions: ``ownership.describe(rows, owner, purpose)`` (marker, owner, guide rows).

:func:`normalise_firewall` is the canonical form the target fingerprints (``drift`` sits above
the renderers in the layer contract, so the target builds the drift items).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server_hardening.model import GcpSpec, ResourceRef
from server_hardening.ownership import DESCRIPTION_MARKER, describe, gcp_name_prefix
from server_hardening.rules import (
    Action,
    Direction,
    Finding,
    PeerKind,
    Protocol,
    Role,
    Rule,
    Severity,
)

TARGET = "gcp"
ISOLATION_PRIORITY = 900
ALLOW_PRIORITY = 1000
FLOOR_PRIORITY = 65000
DEFAULT_PRIORITY = 1000
INGRESS_FLOOR_ROW = "CHOICE-GCP-INGRESS-FLOOR"
EGRESS_FLOOR_ROW = "CHOICE-GCP-EGRESS-FLOOR"
WORLD_V4 = "0.0.0.0/0"
WORLD_V6 = "::/0"
MAX_NAME = 63
NAME_RE = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")

ROLE_ABBREVIATION = {
    Role.KUBERNETES_NODES: "k8s",
    Role.NOMAD_CLIENTS: "nomad",
    Role.EXTERNAL_VMS: "vm",
    Role.LOAD_BALANCERS: "lb",
    Role.NOMAD_SERVERS: "nsrv",
}
PEER_ABBREVIATION = {
    PeerKind.KUBERNETES_NODES: "k8s",
    PeerKind.NOMAD_CLIENTS: "nomad",
    PeerKind.EXTERNAL_VMS: "vm",
    PeerKind.LOAD_BALANCERS: "lb",
    PeerKind.NOMAD_SERVERS: "nsrv",
    PeerKind.EXTERNAL: "ext",
    PeerKind.VCS: "vcs",
    PeerKind.DNS: "dns",
    PeerKind.ADMIN_SSH: "admin",
    PeerKind.SSH_RERUN: "rerun",
    PeerKind.HEALTH_CHECKS: "hc",
    PeerKind.CIDRS: "cidr",
}
# Nomad clients and VMs are plain instances: their traffic leaves from the primary IP.
TAG_ONLY_PEERS = {PeerKind.NOMAD_CLIENTS, PeerKind.EXTERNAL_VMS, PeerKind.NOMAD_SERVERS}
PROTOCOL_NUMBERS = {"6": "tcp", "17": "udp", "1": "icmp", "132": "sctp", "50": "esp", "51": "ah"}


@dataclass(frozen=True)
class RenderedFirewalls:
    """The firewall bodies to hold, plus what a person should know about them.

    ``tags`` are the managed roles' network tags; ``network`` is the partial URL written into every
    body (``projects/{project}/global/networks/{network}``).
    """

    firewalls: tuple[dict[str, Any], ...]
    findings: tuple[Finding, ...]
    project: str
    network: str
    tags: Mapping[Role, str] = field(default_factory=dict)
    rows_by_name: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def network_path(gcp: GcpSpec) -> str:
    return f"projects/{gcp.project}/global/networks/{gcp.network}"


def role_tags(gcp: GcpSpec) -> dict[Role, str]:
    tags = gcp.target_tags
    out: dict[Role, str] = {}
    for role, tag in (
        (Role.KUBERNETES_NODES, tags.kubernetes_nodes),
        (Role.NOMAD_CLIENTS, tags.nomad_clients),
        (Role.EXTERNAL_VMS, tags.external_v_ms),
        (Role.NOMAD_SERVERS, tags.nomad_servers),
    ):
        if tag:
            out[role] = tag
    return out


@dataclass
class _Group:
    role: Role
    direction: Direction
    action: Action
    priority: int
    tags: tuple[str, ...]
    ranges: tuple[str, ...]
    family: int
    peers: set[PeerKind] = field(default_factory=set)
    rows: set[str] = field(default_factory=set)
    protocols: dict[str, list[tuple[int, int]] | None] = field(default_factory=dict)

    def add(self, rule: Rule) -> None:
        self.peers.add(rule.peer.kind)
        self.rows.update(rule.rows)
        proto = rule.protocol.value
        if rule.ports is None:
            self.protocols[proto] = None
            return
        current = self.protocols.setdefault(proto, [])
        if current is not None:
            current.append((rule.ports.first, rule.ports.last))


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def _port_text(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def _entries(protocols: Mapping[str, list[tuple[int, int]] | None]) -> list[dict[str, Any]]:
    if Protocol.ALL.value in protocols:
        return [{"IPProtocol": "all"}]
    out: list[dict[str, Any]] = []
    for proto in sorted(protocols):
        ports = protocols[proto]
        if ports is None:
            out.append({"IPProtocol": proto})
        else:
            out.append(
                {"IPProtocol": proto, "ports": [_port_text(a, b) for a, b in _merge_ranges(ports)]}
            )
    return out


def _split_family(cidrs: Iterable[str]) -> dict[int, tuple[str, ...]]:
    out: dict[int, list[str]] = defaultdict(list)
    for cidr in cidrs:
        out[ipaddress.ip_network(cidr, strict=False).version].append(cidr)
    return {family: tuple(sorted(set(v))) for family, v in out.items()}


_PeerRef = tuple[tuple[str, ...], tuple[str, ...], int]


def _peer_refs(rule: Rule, tags: Mapping[Role, str]) -> list[_PeerRef]:
    """(source tags, ranges, IP family) for each firewall this rule's peer needs."""
    peer_role = rule.peer.role
    peer_tag = tags.get(peer_role) if peer_role is not None else None
    by_family = _split_family(rule.peer.cidrs)
    if rule.direction is Direction.INGRESS and peer_tag:
        if rule.action is Action.ALLOW and rule.peer.kind in TAG_ONLY_PEERS:
            return [((peer_tag,), (), 4)]
        refs: list[_PeerRef] = [((peer_tag,), by_family.get(4, ()), 4)]
        if 6 in by_family:
            refs.append(((), by_family[6], 6))
        return refs
    return [((), ranges, family) for family, ranges in sorted(by_family.items())]


def _name(prefix: str, group: _Group) -> str:
    peers = "-".join(sorted(PEER_ABBREVIATION[p] for p in group.peers)) or "all"
    direction = "in" if group.direction is Direction.INGRESS else "eg"
    name = f"{prefix}{ROLE_ABBREVIATION[group.role]}-{direction}-{group.action.value}-{peers}"
    if group.family == 6:
        name += "-v6"
    return name


def _digest(*parts: Iterable[str]) -> str:
    text = "|".join(",".join(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _fit(name: str, salt: str) -> str:
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256((name + salt).encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def _purpose(group: _Group) -> str:
    what = "allow" if group.action is Action.ALLOW else "deny"
    way = "from" if group.direction is Direction.INGRESS else "to"
    peers = ",".join(sorted(p.value for p in group.peers)) or "everything"
    return f"{what} {group.direction.value} {way} {peers} for {group.role.value}"


@dataclass
class _Grouping:
    groups: dict[tuple[object, ...], _Group] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    subjects: set[Role] = field(default_factory=set)


def _group_rules(rules: Sequence[Rule], gcp: GcpSpec, tags: Mapping[Role, str]) -> _Grouping:
    out = _Grouping()
    untagged: dict[Role, int] = defaultdict(int)
    egress_skipped = 0
    for rule in sorted(rules, key=Rule.sort_key):
        if rule.subject is Role.LOAD_BALANCERS:
            out.findings.append(
                Finding(
                    Severity.INFO,
                    "GcpLoadBalancerRuleSkipped",
                    "GCP load balancers are pass-through and hold no firewall: "
                    f"{rule.direction.value} {rule.peer.label()} {rule.protocol.value} "
                    f"{rule.ports or 'all'} is not written",
                    row=min(rule.rows) if rule.rows else "",
                    target=TARGET,
                )
            )
            continue
        if rule.subject not in tags:
            untagged[rule.subject] += 1
            continue
        out.subjects.add(rule.subject)
        open_egress = rule.direction is Direction.EGRESS and not gcp.restrict_egress
        if open_egress and rule.action is Action.ALLOW:
            egress_skipped += 1
            continue
        priority = ISOLATION_PRIORITY if rule.action is Action.DENY else ALLOW_PRIORITY
        for ref_tags, ranges, family in _peer_refs(rule, tags):
            key = (rule.subject, rule.direction, rule.action, priority, ref_tags, ranges, family)
            if key not in out.groups:
                out.groups[key] = _Group(
                    rule.subject, rule.direction, rule.action, priority, ref_tags, ranges, family
                )
            out.groups[key].add(rule)
    for role, count in sorted(untagged.items()):
        out.findings.append(
            Finding(
                Severity.INFO,
                "GcpRoleUntagged",
                f"spec.gcp.targetTags.{role.value} is not set: {count} rule(s) for {role.value} "
                "are not written on GCP",
                target=TARGET,
            )
        )
    if egress_skipped:
        out.findings.append(
            Finding(
                Severity.INFO,
                "GcpEgressUnrestricted",
                f"spec.gcp.restrictEgress is false: GCP allows all egress, so {egress_skipped} "
                "outbound allow(s) of the guide are not written",
                target=TARGET,
            )
        )
    return out


def _floor(role: Role, direction: Direction, world: str, row: str) -> _Group:
    family = 6 if ":" in world else 4
    group = _Group(role, direction, Action.DENY, FLOOR_PRIORITY, (), (world,), family)
    group.rows.add(row)
    group.protocols["all"] = None
    return group


def _floors(grouping: _Grouping, gcp: GcpSpec) -> list[_Group]:
    floors: list[_Group] = []
    for role in sorted(grouping.subjects, key=lambda r: r.value):
        floors.append(_floor(role, Direction.INGRESS, WORLD_V4, INGRESS_FLOOR_ROW))
        if not gcp.restrict_egress:
            continue
        floors.append(_floor(role, Direction.EGRESS, WORLD_V4, EGRESS_FLOOR_ROW))
        if any(
            g.role is role and g.direction is Direction.EGRESS and g.family == 6
            for g in grouping.groups.values()
        ):
            floors.append(_floor(role, Direction.EGRESS, WORLD_V6, EGRESS_FLOOR_ROW))
    return floors


def _floor_name(prefix: str, group: _Group) -> str:
    direction = "in" if group.direction is Direction.INGRESS else "eg"
    suffix = "-v6" if group.family == 6 else ""
    return f"{prefix}{ROLE_ABBREVIATION[group.role]}-{direction}-deny-all{suffix}"


def _body(
    name: str,
    group: _Group,
    *,
    floor: bool,
    network: str,
    tags: Mapping[Role, str],
    owner: ResourceRef,
) -> dict[str, Any]:
    rows = tuple(sorted(group.rows))
    purpose = "default deny below the guide's rules" if floor else _purpose(group)
    body: dict[str, Any] = {
        "name": name,
        "network": network,
        "direction": group.direction.value.upper(),
        "priority": group.priority,
        "targetTags": [tags[group.role]],
        "description": describe(rows, owner, purpose),
        ("allowed" if group.action is Action.ALLOW else "denied"): _entries(group.protocols),
    }
    if group.direction is Direction.INGRESS:
        if group.tags:
            body["sourceTags"] = list(group.tags)
        if group.ranges:
            body["sourceRanges"] = list(group.ranges)
    else:
        body["destinationRanges"] = list(group.ranges)
    return body


def render_firewalls(rules: Sequence[Rule], gcp: GcpSpec, owner: ResourceRef) -> RenderedFirewalls:
    """The firewall rules that implement ``rules`` on ``gcp.network`` (see the module doc)."""
    tags = role_tags(gcp)
    prefix = gcp_name_prefix(owner)
    network = network_path(gcp)
    grouping = _group_rules(rules, gcp, tags)
    named = [(_name(prefix, g), g, False) for g in grouping.groups.values()]
    named += [(_floor_name(prefix, g), g, True) for g in _floors(grouping, gcp)]
    counts: dict[str, int] = defaultdict(int)
    for base, _, _ in named:
        counts[base] += 1

    firewalls: list[dict[str, Any]] = []
    rows_by_name: dict[str, tuple[str, ...]] = {}
    for base, group, is_floor in sorted(named, key=lambda n: (n[0], n[1].tags, n[1].ranges)):
        salt = _digest(group.tags, group.ranges)
        name = _fit(f"{base}-{salt}" if counts[base] > 1 else base, salt)
        firewalls.append(
            _body(name, group, floor=is_floor, network=network, tags=tags, owner=owner)
        )
        rows_by_name[name] = tuple(sorted(group.rows))

    names = [f["name"] for f in firewalls]
    if len(set(names)) != len(names):  # pragma: no cover - guarded by the digest above
        raise ValueError(f"duplicate firewall names: {names}")
    return RenderedFirewalls(
        firewalls=tuple(firewalls),
        findings=tuple(grouping.findings),
        project=gcp.project,
        network=network,
        tags=tags,
        rows_by_name=rows_by_name,
    )


# ---------------------------------------------------------------------------------------------
# Normalising for the diff


def normalise_network(network: str, project: str) -> str:
    """Any accepted form (URL, partial URL, bare name) -> ``projects/p/global/networks/n``."""
    text = re.sub(r"^https?://[^/]+/compute/(v1|beta|alpha)/", "", network or "default")
    if text.startswith("projects/"):
        return text
    if text.startswith("global/networks/"):
        return f"projects/{project}/{text}"
    return f"projects/{project}/global/networks/{text}"


def _protocol_name(value: Any) -> str:
    text = str(value).lower()
    return PROTOCOL_NUMBERS.get(text, text)


def _port_bounds(text: str) -> tuple[int, int]:
    parts = [int(p) for p in str(text).split("-")]
    return parts[0], parts[-1]


def _norm_entries(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    protocols: dict[str, list[tuple[int, int]] | None] = {}
    for entry in entries:
        proto = _protocol_name(entry.get("IPProtocol", entry.get("I_p_protocol", "")))
        ports = [_port_bounds(p) for p in entry.get("ports") or []]
        if not ports or any(a <= 1 and b >= 65535 for a, b in ports):
            protocols[proto] = None
        elif protocols.get(proto, []) is not None:
            protocols.setdefault(proto, [])
            current = protocols[proto]
            assert current is not None
            current.extend(ports)
    return _entries(protocols) if "all" not in protocols else [{"IPProtocol": "all"}]


def _norm_ranges(values: Iterable[str]) -> list[str]:
    out = set()
    for value in values:
        try:
            out.add(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            out.add(value)
    return sorted(out)


def normalise_firewall(body: Mapping[str, Any], project: str) -> dict[str, Any]:
    """The content that matters, in one canonical form (same meaning, same dict)."""
    action = "denied" if body.get("denied") else "allowed"
    out: dict[str, Any] = {
        "name": body.get("name", ""),
        "network": normalise_network(str(body.get("network", "")), project),
        "direction": str(body.get("direction") or "INGRESS").upper(),
        "priority": int(body.get("priority", DEFAULT_PRIORITY)),
        action: _norm_entries(body.get(action) or []),
        "description": body.get("description", "") or "",
        "disabled": bool(body.get("disabled", False)),
    }
    for key in ("sourceRanges", "destinationRanges"):
        values = _norm_ranges(body.get(key) or [])
        if values:
            out[key] = values
    for key in ("sourceTags", "targetTags", "sourceServiceAccounts", "targetServiceAccounts"):
        values = sorted(set(body.get(key) or []))
        if values:
            out[key] = values
    return out


# ---------------------------------------------------------------------------------------------
# Ownership marks in descriptions

_MARK = re.compile(rf"^{re.escape(DESCRIPTION_MARKER)} (?P<owner>[^/\s]+/[^/\s]+) \[")


def description_owner(description: str) -> str:
    """``ns/name`` of the resource that marked this description, or "" when unmarked."""
    match = _MARK.match(description or "")
    return match["owner"] if match else ""


def released_description(description: str) -> str:
    """The description after an orphaning release: the mark is gone, the rows stay readable."""
    text = description or ""
    if description_owner(text):
        text = f"released from {text[len(DESCRIPTION_MARKER) + 1 :]}"
    return text[:2048]


# ---------------------------------------------------------------------------------------------
# Judging rules the resource does not own (pure, so the unit tests run without google)


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
    """Every source (ingress) or destination (egress) of the unmanaged rule is one of ``body``'s."""
    if direction == "INGRESS":
        their_ranges, their_tags = body.get("sourceRanges") or [], body.get("sourceTags") or []
    else:
        their_ranges, their_tags = body.get("destinationRanges") or [WORLD_V4, WORLD_V6], []
    nets = [ipaddress.ip_network(r, strict=False) for r in their_ranges]
    for cidr in ranges:
        net = ipaddress.ip_network(cidr, strict=False)
        if not any(net.version == n.version and net.subnet_of(n) for n in nets):  # type: ignore[arg-type]
            return False
    return all(tag in their_tags for tag in peer_tags)


def _targets(body: Mapping[str, Any], tags: Mapping[Role, str]) -> list[Role]:
    if body.get("targetServiceAccounts"):
        return []  # scoped to service accounts we do not manage: cannot tell, not judged
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
            sources = [*(("r", r) for r in ranges), *(("t", t) for t in peer_tags)]
            for source in sources:
                src_ranges = [source[1]] if source[0] == "r" else []
                src_tags = [source[1]] if source[0] == "t" else []
                if any(
                    "allowed" in f
                    and _flow_covered(flow, f, "allowed")
                    and _peer_covered(src_ranges, src_tags, f, direction)
                    for f in mine
                ):
                    continue
                deny = next(
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
                if deny is not None:
                    shadowed_by.append(deny["name"])
                    continue
                return _widening(body, role, flow, source, direction, mine)
    if shadowed_by:
        return Finding(
            Severity.INFO,
            "UnmanagedRuleShadowed",
            f"firewall {body.get('name')} (priority {priority}) allows more than the guide on "
            f"managed tags, but {', '.join(sorted(set(shadowed_by)))} deny it first",
            target=TARGET,
        )
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
    return Finding(
        Severity.WARNING,
        "UnmanagedWidening",
        f"firewall {body.get('name')} (priority {body.get('priority', DEFAULT_PRIORITY)}) allows "
        f"{direction.lower()} {flow.protocol}:{ports} {way} {source[1]} on {role.value} "
        f"(targets {','.join(body.get('targetTags') or []) or 'all instances'}), which the "
        "guide does not list",
        row=row,
        target=TARGET,
    )


def _rows_of(body: Mapping[str, Any]) -> list[str]:
    match = re.search(r"\[([^\]]*)\]", str(body.get("description", "")))
    return [r for r in match[1].split(",") if r] if match else []


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME and NAME_RE.match(name) is not None
