"""Evaluate EC2 security groups the way AWS does, for the truth-table tests.

Semantics (VPC user guide, "Security group rules"):

- Security groups only allow. A connection from ``src`` to ``dst`` is allowed iff the rules of
  the groups on ``src`` allow it outbound *and* the rules of the groups on ``dst`` allow it
  inbound. Several groups on one instance add up (union). Groups are stateful: replies are
  allowed, so only the initiating direction is evaluated.
- A rule matches on protocol (``-1`` is every protocol), port range (TCP/UDP), and peer: an IPv4
  or IPv6 CIDR containing the other end's address, or a group reference naming a group that the
  other end is in (its private address; both ends in the VPC).
- An end with no managed group is not filtered by this product: its side allows everything (the
  probe then tests only the other side). A probe with both ends unfiltered says nothing about
  what was rendered and is skipped (``verdict`` returns None).

Input is what the renderer hands boto3: ``RenderedSecurityGroups.groups`` (``IpPermissions`` per
group and direction), optionally plus rules found in the account (``extra``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Host:
    """One instance: its address and the security groups attached to it (managed ones)."""

    name: str
    ip: str
    groups: tuple[str, ...] = ()


def _in(ip: str, cidr: str) -> bool:
    address = ipaddress.ip_address(ip)
    net = ipaddress.ip_network(cidr, strict=False)
    return address.version == net.version and address in net


def _port_matches(perm: Mapping[str, Any], protocol: str, port: int) -> bool:
    proto = str(perm.get("IpProtocol", "")).lower()
    if proto in ("-1", "all"):
        return True
    names = {"6": "tcp", "17": "udp"}
    if names.get(proto, proto) != protocol:
        return False
    first = int(perm.get("FromPort", 0))
    last = int(perm.get("ToPort", 65535))
    if first < 0:
        first, last = 0, 65535
    return first <= port <= last


def matching(perms: Iterable[Mapping[str, Any]], protocol: str, port: int, peer: Host) -> list[str]:
    """The descriptions of the entries that admit ``peer`` on ``protocol``/``port``."""
    out: list[str] = []
    for perm in perms:
        if not _port_matches(perm, protocol, port):
            continue
        for entry in perm.get("IpRanges", []):
            if _in(peer.ip, entry["CidrIp"]):
                out.append(str(entry.get("Description", entry["CidrIp"])))
        for entry in perm.get("Ipv6Ranges", []):
            if _in(peer.ip, entry["CidrIpv6"]):
                out.append(str(entry.get("Description", entry["CidrIpv6"])))
        for entry in perm.get("UserIdGroupPairs", []):
            if entry["GroupId"] in peer.groups:
                out.append(str(entry.get("Description", entry["GroupId"])))
    return out


def _by_group(groups: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {str(g["groupId"]): g for g in groups}


def _side(
    groups: Mapping[str, Mapping[str, Any]],
    host: Host,
    direction: str,
    protocol: str,
    port: int,
    peer: Host,
) -> list[str] | None:
    """None: the host is unfiltered on this side; else the entries that allow (maybe none)."""
    if not host.groups:
        return None
    out: list[str] = []
    for group in host.groups:
        out += matching(groups.get(group, {}).get(direction, []), protocol, port, peer)
    return out


def verdict(
    groups: Sequence[Mapping[str, Any]], src: Host, dst: Host, protocol: str, port: int
) -> bool | None:
    """Allowed (True), blocked (False), or not decided by any managed group (None)."""
    by_group = _by_group(groups)
    egress = _side(by_group, src, "egress", protocol, port, dst)
    ingress = _side(by_group, dst, "ingress", protocol, port, src)
    if egress is None and ingress is None:
        return None
    return (egress is None or bool(egress)) and (ingress is None or bool(ingress))


def explain(
    groups: Sequence[Mapping[str, Any]], src: Host, dst: Host, protocol: str, port: int
) -> str:
    by_group = _by_group(groups)
    egress = _side(by_group, src, "egress", protocol, port, dst)
    ingress = _side(by_group, dst, "ingress", protocol, port, src)

    def say(side: list[str] | None) -> str:
        if side is None:
            return "unfiltered"
        return "allowed by " + "; ".join(side) if side else "no rule allows it"

    return f"egress of {src.name}: {say(egress)}; ingress of {dst.name}: {say(ingress)}"


def with_extra(
    groups: Sequence[Mapping[str, Any]], extra: Mapping[str, Mapping[str, list[Any]]]
) -> list[dict[str, Any]]:
    """The rendered groups plus other rules (e.g. the default allow-all egress of a new group):
    ``extra`` maps a group ID to ``{"ingress": [...], "egress": [...]}``."""
    out: list[dict[str, Any]] = []
    for group in groups:
        more = extra.get(str(group["groupId"]), {})
        out.append(
            {
                **group,
                "ingress": [*group["ingress"], *more.get("ingress", [])],
                "egress": [*group["egress"], *more.get("egress", [])],
            }
        )
    return out
