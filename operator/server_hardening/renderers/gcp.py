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
  *and* their CIDRs (GKE pods send from alias IPs, which tags do not match: the pod ranges,
  ``topology.kubernetesPods``, are a peer of their own, as ranges: CHOICE-K8S-PODS). Denies use
  tags and CIDRs together (a deny may only be broader). Egress has no destination tags in GCP,
  so egress uses ``destinationRanges``.
- Merging. Rules with the same target, direction, action, priority and resolved peer (tags and
  ranges) become one firewall with several ``allowed`` entries; IPv4 and IPv6 ranges are split
  (one rule cannot mix them).
- Without ``restrictEgress`` GCP allows all egress, so the guide's egress *allows* are not
  written (they would change nothing); the isolation denies are.
- Names: ``ownership.gcp_name_prefix(owner)`` + ``<role>-<in|eg>-<allow|deny>-<peers>``,
  RFC 1035, <= 63 characters, deterministic; colliding names get a digest of the peer.
- Descriptions: ``ownership.describe(rows, owner, purpose)`` (marker, owner, guide rows).

:func:`normalise_firewall` is the canonical form drift compares; :func:`firewall_items` are the
desired items. Judging rules the resource does not own is the policy layer's
(:mod:`server_hardening.policy.gcp`); the ownership marks are :mod:`server_hardening.ownership`'s.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server_hardening.drift import DesiredItem, fingerprint
from server_hardening.model import GcpSpec, LoggingMode, ResourceRef, configured_by_role
from server_hardening.ownership import (
    Provenance,
    describe,
    gcp_name_prefix,
    without_description_provenance,
)
from server_hardening.rules import (
    Action,
    Direction,
    Finding,
    FindingCode,
    PeerKind,
    Protocol,
    Role,
    Rule,
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
    PeerKind.KUBERNETES_PODS: "pods",
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
    manages_logging: bool = False


def network_path(gcp: GcpSpec) -> str:
    return f"projects/{gcp.project}/global/networks/{gcp.network}"


def role_tags(gcp: GcpSpec) -> dict[Role, str]:
    """The configured network tag of each role (roles without one are absent)."""
    return configured_by_role(gcp.target_tags)


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
                Finding.of(
                    FindingCode.GCP_LOAD_BALANCER_RULE_SKIPPED,
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
            Finding.of(
                FindingCode.GCP_ROLE_UNTAGGED,
                f"spec.gcp.targetTags.{role.value} is not set: {count} rule(s) for {role.value} "
                "are not written on GCP",
                target=TARGET,
            )
        )
    if egress_skipped:
        out.findings.append(
            Finding.of(
                FindingCode.GCP_EGRESS_UNRESTRICTED,
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
    installation: str,
    log_config: Mapping[str, Any] | None,
) -> dict[str, Any]:
    rows = tuple(sorted(group.rows))
    purpose = "default deny below the guide's rules" if floor else _purpose(group)
    body: dict[str, Any] = {
        "name": name,
        "network": network,
        "direction": group.direction.value.upper(),
        "priority": group.priority,
        "targetTags": [tags[group.role]],
        # What an insert writes: a rule the operator creates. Adopting or taking a rule back
        # records its own provenance (planners/gcp.py); drift compares descriptions without it.
        "description": describe(
            rows,
            owner,
            purpose,
            installation=installation,
            with_uid=True,
            provenance=Provenance.CREATED,
        ),
        ("allowed" if group.action is Action.ALLOW else "denied"): _entries(group.protocols),
    }
    if log_config is not None:
        body["logConfig"] = dict(log_config)
    if group.direction is Direction.INGRESS:
        if group.tags:
            body["sourceTags"] = list(group.tags)
        if group.ranges:
            body["sourceRanges"] = list(group.ranges)
    else:
        body["destinationRanges"] = list(group.ranges)
    return body


def log_config(gcp: GcpSpec) -> dict[str, Any] | None:
    """The ``logConfig`` every rule carries when the spec manages logging (None: ``Keep``, each
    rule keeps whatever logging it has; a repair never switches it off)."""
    mode = gcp.logging.mode
    if mode is LoggingMode.KEEP:
        return None
    if mode is LoggingMode.ENABLED:
        return {"enable": True, "metadata": gcp.logging.metadata}
    return {"enable": False}


def render_firewalls(rules: Sequence[Rule], gcp: GcpSpec, owner: ResourceRef) -> RenderedFirewalls:
    """The firewall rules that implement ``rules`` on ``gcp.network`` (see the module doc)."""
    tags = role_tags(gcp)
    prefix = gcp_name_prefix(owner, gcp.installation_id)
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
            _body(
                name,
                group,
                floor=is_floor,
                network=network,
                tags=tags,
                owner=owner,
                installation=gcp.installation_id,
                log_config=log_config(gcp),
            )
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
        manages_logging=log_config(gcp) is not None,
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


def normalise_firewall(
    body: Mapping[str, Any], project: str, *, with_logging: bool = False
) -> dict[str, Any]:
    """The content that matters, in one canonical form (same meaning, same dict). Logging is
    part of it only where the spec manages it (``with_logging``)."""
    action = "denied" if body.get("denied") else "allowed"
    out: dict[str, Any] = {
        "name": body.get("name", ""),
        "network": normalise_network(str(body.get("network", "")), project),
        "direction": str(body.get("direction") or "INGRESS").upper(),
        "priority": int(body.get("priority", DEFAULT_PRIORITY)),
        action: _norm_entries(body.get(action) or []),
        "description": without_description_provenance(str(body.get("description", "") or "")),
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
    if with_logging:
        logging = body.get("logConfig") or {}
        out["logConfig"] = {
            "enable": bool(logging.get("enable", False)),
            "metadata": str(logging.get("metadata") or "EXCLUDE_ALL_METADATA")
            if logging.get("enable")
            else "",
        }
    return out


FirewallBody = dict[str, Any]
"""A VPC firewall rule as the Compute v1 REST API takes it (camelCase JSON)."""


def firewall_items(rendered: RenderedFirewalls) -> list[DesiredItem[FirewallBody]]:
    """One desired item per firewall: key = name, fingerprint over the normalised content."""
    return [
        DesiredItem(
            key=body["name"],
            fingerprint=fingerprint(
                normalise_firewall(body, rendered.project, with_logging=rendered.manages_logging)
            ),
            payload=body,
            rows=rendered.rows_by_name.get(body["name"], ()),
        )
        for body in rendered.firewalls
    ]


def is_valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME and NAME_RE.match(name) is not None
