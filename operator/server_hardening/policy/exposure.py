"""What a rule exposes, the same way for every target. Pure: no I/O here.

An :class:`Access` is one observed grant reduced to what exposure depends on: direction, the
peer addresses, protocol and ports, and where it is (for messages). Adapters' rules become
Accesses in the per-target policy modules; the checks here never see a provider's format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from server_hardening import addresses
from server_hardening.guide import SENSITIVE_PORTS
from server_hardening.rules import Direction, Finding, FindingCode, PortRange

WORLD = ("0.0.0.0/0", "::/0")


@dataclass(frozen=True)
class Access:
    """One grant: ``direction`` traffic from (ingress) or to (egress) ``peers`` on ``protocol``
    (``tcp``, ``udp``, ``all``, or another IANA name) and ``ports`` (None: every port)."""

    direction: Direction
    peers: tuple[str, ...]
    protocol: str
    ports: tuple[PortRange, ...] | None
    where: str

    def covers_port(self, port: int, protocol: str = "tcp") -> bool:
        if self.protocol not in (protocol, "all"):
            return False
        return self.ports is None or any(r.first <= port <= r.last for r in self.ports)


def world_families(cidrs: Iterable[str]) -> tuple[int, ...]:
    """The IP families (4, 6) whose whole address space the union of ``cidrs`` covers.

    By meaning, not spelling (:mod:`server_hardening.addresses`): ``0.0.0.0/1`` plus
    ``128.0.0.0/1`` is the whole IPv4 internet, and so is ``1.2.3.4/0``. Entries that are not
    addresses (a security-group or prefix-list ID, a tag) cover nothing.
    """
    networks = []
    for cidr in cidrs:
        try:
            networks.append(addresses.parse(cidr))
        except ValueError:
            continue
    return tuple(addresses.world_coverage(networks))


def is_world_open(access: Access) -> bool:
    return bool(world_families(access.peers))


def sensitive_ports_open_to_world(access: Access) -> list[int]:
    """The guide's sensitive ports this grant opens to the whole internet (ingress only)."""
    if access.direction is not Direction.INGRESS or not is_world_open(access):
        return []
    return [port for port in SENSITIVE_PORTS if access.covers_port(port)]


def world_open_sensitive_port(access: Access, target: str, fate: str = "") -> Finding | None:
    """The check every target's chain runs first: a sensitive port open to the world."""
    ports = sensitive_ports_open_to_world(access)
    if not ports:
        return None
    opened = ", ".join(f"{p} ({SENSITIVE_PORTS[p][1]})" for p in ports)
    families = "+".join(f"IPv{f}" for f in world_families(access.peers))
    return _exposed(
        access, target, ports[0], f"{opened} to the whole internet ({families}); the guide "
        "scopes these to named peers", fate,
    )  # fmt: skip


def _exposed(access: Access, target: str, port: int, what: str, fate: str) -> Finding:
    tail = f"; {fate}" if fate else ""
    return Finding.of(
        FindingCode.WORLD_OPEN_SENSITIVE_PORT,
        f"{access.where} opens {what}{tail}",
        row=SENSITIVE_PORTS[port][0],
        target=target,
    )


NodePorts = Mapping[int, tuple[str, int]]
"""NodePort -> (Service, service port) of the cluster's Services: a cloud rule that opens a
NodePort opens whatever Service port it backs."""


def node_port_exposure(
    access: Access, node_ports: NodePorts, target: str, fate: str = ""
) -> Finding | None:
    """A NodePort that backs a sensitive service port (v4's proxy serves Nomad's 4647), open to
    the whole internet: as sensitive as the port itself, wherever the rule that opens it is."""
    if access.direction is not Direction.INGRESS or not is_world_open(access):
        return None
    for node_port, (service, port) in sorted(node_ports.items()):
        if port in SENSITIVE_PORTS and access.covers_port(node_port):
            what = SENSITIVE_PORTS[port][1]
            return _exposed(
                access, target, port, f"NodePort {node_port} to the whole internet: it is "
                f"Service {service} port {port} ({what})", fate,
            )  # fmt: skip
    return None
