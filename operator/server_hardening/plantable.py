"""The tables ``hardening plan`` and ``hardening plan --live`` print. Pure: no I/O here.

The offline table is read from the plan's JSON document (``hardening plan -o json``), so it
shows exactly what would be written: one line per NetworkPolicy rule, per security-group rule
(one peer of one permission: what AWS counts as a rule) and per GCP firewall, GCP's priorities
and denies included. Peers are shown as written: a CIDR, a security-group ID with the role it
belongs to (``sg-0abc (nomadClients)``), a network tag (``tag:circleci-nomad``), a namespace.
Each line cites the guide rows of that rule, not of the whole policy or group.

By default a table fits :data:`DEFAULT_WIDTH` columns: the long cells (selectors, peers, rows,
reasons) wrap at commas onto continuation lines whose first cell is empty. ``-o wide`` prints
every line unwrapped, with the columns the default leaves out (a GCP firewall's name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_WIDTH = 120
"""The widest line of a default table (a terminal, a code review, a ticket)."""

COLUMN_GAP = "  "
MIN_WRAPPED_WIDTH = 12
_DESCRIPTION_ROWS = re.compile(r"\[([A-Z0-9,-]+)\]")


@dataclass
class Table:
    """One table: a header and its lines, each under a block heading (the policy, the security
    group, the network tag the lines belong to; empty for none). ``wrap`` names the columns that
    may wrap, ``wide_only`` the columns shown only with ``-o wide``."""

    header: list[str]
    rows: list[tuple[str, list[str]]] = field(default_factory=list)
    wrap: frozenset[str] = frozenset()
    wide_only: frozenset[str] = frozenset()

    def add(self, block: str, cells: list[str]) -> None:
        self.rows.append((block, cells))

    def render(self, *, wide: bool = False, width: int = DEFAULT_WIDTH) -> list[str]:
        keep = [i for i, h in enumerate(self.header) if wide or h not in self.wide_only]
        header = [self.header[i] for i in keep]
        cells = [[row[i] for i in keep] for _, row in self.rows]
        wrappable = [h in self.wrap for h in header]
        indent = BLOCK_INDENT if any(block for block, _ in self.rows) else ""
        body = render_lines(header, cells, wrappable, None if wide else width - len(indent))
        lines = [indent + body[0]]
        previous = None
        for (block, _), physical in zip(self.rows, _logical(body[1:]), strict=True):
            if block and block != previous:
                lines.extend(_wrap(block, width) if not wide else [block])
            previous = block
            lines.extend(indent + line for line in physical)
        return lines


BLOCK_INDENT = "  "


def _logical(lines: list[str]) -> list[list[str]]:
    """Physical lines grouped per table row (a continuation line starts with a blank cell)."""
    out: list[list[str]] = []
    for line in lines:
        if out and line.startswith(" "):
            out[-1].append(line)
        else:
            out.append([line])
    return out


def _fit(natural: list[int], wrappable: list[bool], width: int) -> list[int]:
    """Column widths within ``width``: the wrappable columns share what the others leave,
    the narrowest first (each gets at most its natural width)."""
    fixed = sum(w for w, can in zip(natural, wrappable, strict=True) if not can)
    budget = width - fixed - len(COLUMN_GAP) * (len(natural) - 1)
    flexible = sorted(
        (w, i) for i, (w, can) in enumerate(zip(natural, wrappable, strict=True)) if can
    )
    out = list(natural)
    for position, (want, index) in enumerate(flexible):
        share = budget // (len(flexible) - position)
        out[index] = max(MIN_WRAPPED_WIDTH, min(want, share))
        budget -= out[index]
    return out


def _wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width``, broken after commas or at spaces when it can be,
    else mid-word (a token wider than the column)."""
    pieces = re.findall(r"[^, ]+,?|\s+", text)
    lines: list[str] = []
    line = ""
    for piece in pieces:
        if line and len(line) + len(piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = "" if piece.isspace() else piece
        else:
            line += piece
        while len(line.rstrip()) > width:
            lines.append(line[:width])
            line = line[width:]
    if line.strip() or not lines:
        lines.append(line.rstrip())
    return lines


def render_lines(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    wrappable: Sequence[bool],
    width: int | None,
) -> list[str]:
    """A left-aligned table; with ``width``, its wrappable cells wrap so no line is wider."""
    all_rows = [list(header), *[list(r) for r in rows]]
    natural = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    total = sum(natural) + len(COLUMN_GAP) * (len(header) - 1)
    widths = natural if width is None or total <= width else _fit(natural, list(wrappable), width)
    lines = []
    for row in all_rows:
        cells = [
            _wrap(cell, w) if can and len(cell) > w else [cell]
            for cell, w, can in zip(row, widths, wrappable, strict=True)
        ]
        for n in range(max(len(c) for c in cells)):
            parts = [
                (c[n] if n < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True)
            ]
            lines.append(COLUMN_GAP.join(parts).rstrip())
    return lines


# ------------------------------------------------------------------------------------------
# The offline plan.


def _rows_of_description(description: str) -> str:
    match = _DESCRIPTION_ROWS.search(description or "")
    return match.group(1) if match else "-"


def _selector(selector: Mapping[str, Any] | None) -> str:
    selector = selector or {}
    terms = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        values = ",".join(expression.get("values") or [])
        terms.append(
            f"{expression['key']} {expression['operator']}" + (f" ({values})" if values else "")
        )
    return ",".join(terms)


def _np_peer(peer: Mapping[str, Any]) -> str:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        excepted = block.get("except") or []
        return str(block["cidr"]) + (" except " + ",".join(excepted) if excepted else "")
    namespaces = peer.get("namespaceSelector")
    pods = peer.get("podSelector")
    parts = []
    if namespaces is not None:
        name = (namespaces.get("matchLabels") or {}).get("kubernetes.io/metadata.name")
        if name and len(namespaces.get("matchLabels") or {}) == 1:
            parts.append(f"namespace {name}")
        else:
            parts.append("namespaces " + (_selector(namespaces) or "(all)"))
    if pods is not None:
        selected = _selector(pods)
        if namespaces is None:
            parts.append("pods of this namespace" + (f" {selected}" if selected else ""))
        else:
            parts.append("pods " + (selected or "(all)"))
    return " ".join(parts)


def _np_ports(ports: Sequence[Mapping[str, Any]] | None) -> str:
    if not ports:
        return "all"
    by_protocol: dict[str, list[str]] = {}
    for port in ports:
        protocol = str(port.get("protocol") or "TCP").lower()
        value = port.get("port")
        text = "all" if value is None else str(value)
        if port.get("endPort"):
            text += f"-{port['endPort']}"
        by_protocol.setdefault(protocol, []).append(text)
    return " ".join(f"{p}/{','.join(v)}" for p, v in by_protocol.items())


def network_policy_table(
    policies: Sequence[Mapping[str, Any]],
    entry_rows: Mapping[tuple[str, str, int], Sequence[str]] | None = None,
) -> Table:
    """One line per rule of every policy, and one ``deny`` line for each policy type a policy
    isolates without any rule (the default deny)."""
    table = Table(
        ["DIRECTION", "ACTION", "PEER", "PORTS", "GUIDE ROWS"],
        wrap=frozenset({"PEER", "PORTS", "GUIDE ROWS"}),
    )
    for policy in policies:
        name = policy["metadata"]["name"]
        policy_rows = (
            policy["metadata"].get("annotations", {}).get("hardening.circleci.com/guide-rows", "-")
        )
        spec = policy["spec"]
        selected = _selector(spec.get("podSelector"))
        block = f"{name} (pods: {selected or 'all in the namespace'})"
        for policy_type, peers_key in (("Ingress", "from"), ("Egress", "to")):
            direction = policy_type.lower()
            if policy_type not in (spec.get("policyTypes") or []) and not spec.get(direction):
                continue
            entries = spec.get(direction) or []
            if not entries:
                table.add(block, [direction, "deny", "everything not allowed", "all", policy_rows])
            for index, entry in enumerate(entries):
                peers = ", ".join(_np_peer(p) for p in entry.get(peers_key) or []) or "any"
                cited = (entry_rows or {}).get((name, direction, index))
                rows = ",".join(cited) if cited else policy_rows
                table.add(block, [direction, "allow", peers, _np_ports(entry.get("ports")), rows])
    return table


def _aws_ports(permission: Mapping[str, Any]) -> str:
    protocol = str(permission.get("IpProtocol", "-1"))
    if protocol == "-1":
        return "all"
    first, last = permission.get("FromPort"), permission.get("ToPort")
    if first is None or first == -1:
        return protocol
    return f"{protocol}/{first}" if first == last else f"{protocol}/{first}-{last}"


def aws_peers(
    permission: Mapping[str, Any], roles_of_groups: Mapping[str, str]
) -> list[tuple[str, str]]:
    """Each peer of one IpPermission as written, with the description that carries its rows."""
    out = []
    for r in permission.get("IpRanges") or []:
        out.append((r["CidrIp"], r.get("Description", "")))
    for r in permission.get("Ipv6Ranges") or []:
        out.append((r["CidrIpv6"], r.get("Description", "")))
    for r in permission.get("PrefixListIds") or []:
        out.append((r["PrefixListId"], r.get("Description", "")))
    for r in permission.get("UserIdGroupPairs") or []:
        group = r["GroupId"]
        role = roles_of_groups.get(group)
        out.append((f"{group} ({role})" if role else group, r.get("Description", "")))
    return out


def _roles_of_groups(groups: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    roles: dict[str, list[str]] = {}
    for group in groups:
        if group.get("role"):
            roles.setdefault(group["groupId"], []).append(group["role"])
    return {g: "+".join(dict.fromkeys(r)) for g, r in roles.items()}


def aws_table(groups: Sequence[Mapping[str, Any]]) -> Table:
    """One line per security-group rule: one peer of one IpPermission."""
    table = Table(
        ["DIRECTION", "ACTION", "PEER", "PORTS", "GUIDE ROWS"],
        wrap=frozenset({"PEER", "GUIDE ROWS"}),
    )
    roles = _roles_of_groups(groups)
    for group in groups:
        where = f"{group['groupId']} ({group['role']})" if group.get("role") else group["groupId"]
        for direction in ("ingress", "egress"):
            for permission in group.get(direction) or []:
                for peer, description in aws_peers(permission, roles):
                    table.add(
                        where,
                        [direction, "allow", peer, _aws_ports(permission),
                         _rows_of_description(description)],
                    )  # fmt: skip
    return table


def _gcp_ports(entries: Sequence[Mapping[str, Any]]) -> str:
    out = []
    for entry in entries:
        protocol = str(entry.get("IPProtocol", "all"))
        ports = entry.get("ports") or []
        out.append(f"{protocol}/{','.join(ports)}" if ports else protocol)
    return " ".join(out) or "all"


def gcp_peers(firewall: Mapping[str, Any]) -> str:
    """The other end of a firewall as written: tags, service accounts, ranges."""
    parts = [f"tag:{t}" for t in firewall.get("sourceTags") or []]
    parts += [f"sa:{s}" for s in firewall.get("sourceServiceAccounts") or []]
    parts += list(firewall.get("sourceRanges") or [])
    parts += list(firewall.get("destinationRanges") or [])
    return ",".join(parts) or "any"


def gcp_targets(firewall: Mapping[str, Any]) -> str:
    parts = [f"tag:{t}" for t in firewall.get("targetTags") or []]
    parts += [f"sa:{s}" for s in firewall.get("targetServiceAccounts") or []]
    return ",".join(parts) or "every instance"


def gcp_table(
    firewalls: Sequence[Mapping[str, Any]], tag_roles: Mapping[str, str] | None = None
) -> Table:
    """One line per firewall, in evaluation order per target and direction (lowest priority
    number first); ``tag_roles`` names the role of each configured network tag."""
    table = Table(
        ["DIRECTION", "PRIORITY", "ACTION", "PEER", "PORTS", "GUIDE ROWS", "FIREWALL"],
        wrap=frozenset({"PEER", "PORTS", "GUIDE ROWS"}),
        wide_only=frozenset({"FIREWALL"}),
    )
    ordered = sorted(
        firewalls,
        key=lambda f: (gcp_targets(f), f.get("direction") != "INGRESS", f.get("priority", 1000),
                       f.get("name", "")),
    )  # fmt: skip
    for firewall in ordered:
        denied = firewall.get("denied")
        targets = gcp_targets(firewall)
        roles = [
            (tag_roles or {})[t] for t in firewall.get("targetTags") or [] if t in (tag_roles or {})
        ]
        table.add(
            f"targets {targets}" + (f" ({','.join(roles)})" if roles else ""),
            [
                str(firewall.get("direction", "INGRESS")).lower(),
                str(firewall.get("priority", 1000)),
                "deny" if denied else "allow",
                gcp_peers(firewall),
                _gcp_ports(denied or firewall.get("allowed") or []),
                _rows_of_description(firewall.get("description", "")),
                firewall.get("name", ""),
            ],
        )
    return table


def plan_sections(
    doc: Mapping[str, Any],
    entry_rows: Mapping[tuple[str, str, int], Sequence[str]] | None = None,
    tag_roles: Mapping[str, str] | None = None,
) -> list[tuple[str, Table]]:
    """The offline plan's tables, one per target, titled; ``doc`` is the ``-o json`` document."""
    sections: list[tuple[str, Table]] = []
    if "kubernetes" in doc:
        policies = doc["kubernetes"]["networkPolicies"]
        namespace = policies[0]["metadata"]["namespace"] if policies else ""
        sections.append(
            (f"KUBERNETES: NetworkPolicies in namespace {namespace}",
             network_policy_table(policies, entry_rows))
        )  # fmt: skip
    if "aws" in doc:
        sections.append(
            ("AWS: security-group rules (security groups only allow)",
             aws_table(doc["aws"]["securityGroups"]))
        )  # fmt: skip
    if "gcp" in doc:
        firewalls = doc["gcp"]["firewalls"]
        network = firewalls[0].get("network", "").rsplit("/", 1)[-1] if firewalls else ""
        sections.append(
            (f"GCP: VPC firewall rules in network {network} (lowest priority number wins; "
             "a deny wins a tie)",
             gcp_table(firewalls, tag_roles))
        )  # fmt: skip
    return sections


def finding_lines(findings: Iterable[Mapping[str, str]], *, wide: bool = False) -> list[str]:
    """``FINDINGS`` and one entry per finding, its message wrapped to the default width."""
    findings = list(findings)
    if not findings:
        return []
    lines = ["FINDINGS"]
    for finding in findings:
        row = f" [{finding['row']}]" if finding.get("row") else ""
        head = f"  {finding['severity']:<8} {finding['code']}{row}: "
        text = head + finding["message"]
        if wide or len(text) <= DEFAULT_WIDTH:
            lines.append(text)
            continue
        indent = " " * 11
        wrapped = _wrap(text, DEFAULT_WIDTH)
        lines.append(wrapped[0])
        for rest in wrapped[1:]:
            lines.extend(indent + piece for piece in _wrap(rest, DEFAULT_WIDTH - len(indent)))
    return lines


def plan_lines(
    title: str,
    doc: Mapping[str, Any],
    entry_rows: Mapping[tuple[str, str, int], Sequence[str]] | None = None,
    tag_roles: Mapping[str, str] | None = None,
    *,
    wide: bool = False,
) -> list[str]:
    """Everything ``hardening plan`` prints as a table."""
    lines = [title]
    for heading, table in plan_sections(doc, entry_rows, tag_roles):
        lines += ["", heading]
        lines += table.render(wide=wide) if table.rows else ["  (nothing to write)"]
    findings = finding_lines(doc.get("findings") or [], wide=wide)
    if findings:
        lines += ["", *findings]
    return lines


# ------------------------------------------------------------------------------------------
# The live plan.


def live_table(doc: Mapping[str, Any]) -> Table:
    """One line per item of each target's plan (``hardening plan --live``)."""
    table = Table(
        ["TARGET", "ACTION", "ID", "PRIORITY", "RULE", "ROW", "REASON"],
        wrap=frozenset({"ID", "RULE", "REASON"}),
    )
    for target in doc["targets"]:
        if target["error"] or target["conflictWith"]:
            problem = target["error"] or f"managed by {target['conflictWith']}"
            table.add("", [target["name"], "-", "-", "-", "-", "-", problem])
        for action in target["actions"]:
            priority = action.get("priority")
            table.add(
                "",
                [target["name"], action["action"], action["id"],
                 "-" if priority is None else str(priority), action["rule"],
                 action["row"] or "-", action["reason"]],
            )  # fmt: skip
    if not any(row[3] != "-" for _, row in table.rows):
        table.wide_only = frozenset({"PRIORITY"})
    return table


def live_lines(doc: Mapping[str, Any], *, wide: bool = False) -> list[str]:
    lines = live_table(doc).render(wide=wide)
    findings = finding_lines(doc.get("findings") or [], wide=wide)
    return lines + (["", *findings] if findings else [])
