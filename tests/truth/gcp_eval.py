"""Evaluate VPC firewall rules the way GCP does, for the truth-table tests.

Semantics (VPC firewall rules overview):

- A connection needs the source's EGRESS rules and the destination's INGRESS rules to allow it.
  Rules are stateful: the reply is allowed, so only the initiating direction is evaluated.
- Of the rules that apply (target tags match the instance, or the rule has no target tags; not
  disabled; protocol and port match; the peer matches), the one with the lowest priority number
  decides; at equal priority a deny wins over an allow.
- Nothing applies: the implied rules decide, ingress denied (65535), egress allowed (65535).
- A source tag matches traffic from the primary internal IP of an instance carrying the tag, on
  the same network; a source range matches the source address; with both, either may match.
  Traffic from an alias IP (a VPC-native GKE pod: ``Endpoint.alias``) matches no source tag,
  though the instance's target tags still apply to it in both directions.
  ``destinationRanges`` (egress) match the destination address; absent, every address.
- Traffic from outside the network (the internet, Google's health checkers) meets ingress only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    name: str
    ip: str
    tags: tuple[str, ...] = ()
    on_network: bool = True
    alias: bool = False  # sends from an alias IP range of the instance that carries ``tags``


def _in(ip: str, ranges: Iterable[str]) -> bool:
    address = ipaddress.ip_address(ip)
    return any(
        address.version == (net := ipaddress.ip_network(r, strict=False)).version and address in net
        for r in ranges
    )


def _protocol_matches(entries: Sequence[Mapping[str, Any]], protocol: str, port: int) -> bool:
    for entry in entries:
        proto = str(entry.get("IPProtocol", "")).lower()
        if proto not in ("all", protocol):
            continue
        ports = entry.get("ports") or []
        if not ports:
            return True
        for text in ports:
            first, _, last = str(text).partition("-")
            if int(first) <= port <= int(last or first):
                return True
    return False


def _applies(rule: Mapping[str, Any], instance: Endpoint) -> bool:
    targets = rule.get("targetTags") or []
    return not targets or any(t in instance.tags for t in targets)


def _decide(matching: list[Mapping[str, Any]], implied_allow: bool) -> tuple[bool, str]:
    if not matching:
        return implied_allow, "implied"
    best = min(int(r.get("priority", 1000)) for r in matching)
    top = [r for r in matching if int(r.get("priority", 1000)) == best]
    denies = [r for r in top if r.get("denied")]
    if denies:
        return False, str(denies[0]["name"])
    return True, str(top[0]["name"])


def egress_allowed(
    rules: Sequence[Mapping[str, Any]], src: Endpoint, dst: Endpoint, protocol: str, port: int
) -> tuple[bool, str]:
    if not src.on_network:
        return True, "outside"
    matching = []
    for rule in rules:
        if rule.get("disabled") or rule.get("direction", "INGRESS") != "EGRESS":
            continue
        if not _applies(rule, src):
            continue
        dest = rule.get("destinationRanges") or ["0.0.0.0/0", "::/0"]
        if not _in(dst.ip, dest):
            continue
        if _protocol_matches(rule.get("allowed") or rule.get("denied") or [], protocol, port):
            matching.append(rule)
    return _decide(matching, implied_allow=True)


def ingress_allowed(
    rules: Sequence[Mapping[str, Any]], src: Endpoint, dst: Endpoint, protocol: str, port: int
) -> tuple[bool, str]:
    matching = []
    for rule in rules:
        if rule.get("disabled") or rule.get("direction", "INGRESS") != "INGRESS":
            continue
        if not _applies(rule, dst):
            continue
        by_range = _in(src.ip, rule.get("sourceRanges") or [])
        by_tag = (
            src.on_network
            and not src.alias
            and any(t in src.tags for t in rule.get("sourceTags") or [])
        )
        if not (by_range or by_tag):
            continue
        if _protocol_matches(rule.get("allowed") or rule.get("denied") or [], protocol, port):
            matching.append(rule)
    return _decide(matching, implied_allow=False)


def allowed(
    rules: Sequence[Mapping[str, Any]], src: Endpoint, dst: Endpoint, protocol: str, port: int
) -> bool:
    """Can ``src`` open a connection to ``dst`` on ``protocol``/``port``?"""
    out, _ = egress_allowed(rules, src, dst, protocol, port)
    if not out or not dst.on_network:
        return out
    return ingress_allowed(rules, src, dst, protocol, port)[0]


def explain(
    rules: Sequence[Mapping[str, Any]], src: Endpoint, dst: Endpoint, protocol: str, port: int
) -> str:
    eg = egress_allowed(rules, src, dst, protocol, port)
    ing = ingress_allowed(rules, src, dst, protocol, port)
    return f"egress {eg} ingress {ing}"
