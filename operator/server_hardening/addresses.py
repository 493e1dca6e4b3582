"""Address sets by meaning, not by text. Pure: no I/O here.

A firewall rule's sources are judged as the *set of addresses* they add up to, per family:
``0.0.0.0/1`` plus ``128.0.0.0/1`` is the whole IPv4 internet exactly as ``0.0.0.0/0`` is, and
``1.2.3.4/0`` or ``::0/0`` are the world in another spelling. Every question here ("covers the
whole internet?", "how many public addresses?", "covers this role's subnet?") is answered on the
union of the sources, never on one string.

"Public" means routable on the internet: every address except the special-purpose ranges in
:data:`NON_PUBLIC` (private, shared/CGNAT, loopback, link-local, unique-local, documentation,
benchmarking, multicast, reserved, unspecified, IPv4-mapped IPv6, discard-only). Ranges whose
traffic can still reach the internet through a translator (NAT64 ``64:ff9b::/96``, 6to4
``2002::/16``, Teredo) count as public: when in doubt, an address counts as exposed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

IPv4 = ipaddress.IPv4Network
IPv6 = ipaddress.IPv6Network
Network = IPv4 | IPv6
Family = Literal[4, 6]
_A = TypeVar("_A", ipaddress.IPv4Address, ipaddress.IPv6Address)

IPV4_SPACE = 2**32
IPV6_SPACE = 2**128

NON_PUBLIC: dict[str, tuple[str, ...]] = {
    "private (RFC 1918) and unique-local (RFC 4193)": ("10.0.0.0/8", "172.16.0.0/12",
                                                       "192.168.0.0/16", "fc00::/7"),
    "shared address space, carrier-grade NAT (RFC 6598)": ("100.64.0.0/10",),
    "loopback": ("127.0.0.0/8", "::1/128"),
    "link-local": ("169.254.0.0/16", "fe80::/10"),
    "unspecified and 'this network'": ("0.0.0.0/8", "::/128"),
    "IETF protocol assignments (RFC 6890)": ("192.0.0.0/24",),
    "documentation": ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"),
    "benchmarking (RFC 2544)": ("198.18.0.0/15",),
    "multicast": ("224.0.0.0/4", "ff00::/8"),
    "reserved and limited broadcast": ("240.0.0.0/4",),
    "IPv4-mapped IPv6 (never on the wire as IPv6)": ("::ffff:0:0/96",),
    "discard-only (RFC 6666)": ("100::/64",),
}  # fmt: skip


Span = tuple[int, int]  # the first and the last address of a range, as integers


def parse(cidr: str | Network) -> Network:
    """One CIDR, host bits cleared (``1.2.3.4/0`` is ``0.0.0.0/0``); ValueError if not one."""
    if isinstance(cidr, IPv4 | IPv6):
        return cidr
    return ipaddress.ip_network(cidr.strip(), strict=False)


def _merged(spans: Iterable[Span]) -> tuple[Span, ...]:
    """Sorted, disjoint, non-adjacent spans covering the same addresses: the canonical form."""
    out: list[Span] = []
    for first, last in sorted(spans):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return tuple(out)


def _intersection(a: tuple[Span, ...], b: tuple[Span, ...]) -> tuple[Span, ...]:
    """Spans of a ∩ b, by one sweep over both (each sorted and disjoint)."""
    out: list[Span] = []
    i = j = 0
    while i < len(a) and j < len(b):
        first, last = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if first <= last:
            out.append((first, last))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _difference(a: tuple[Span, ...], holes: tuple[Span, ...]) -> tuple[Span, ...]:
    """Spans of a without the holes (each sorted and disjoint)."""
    out: list[Span] = []
    for start, last in a:
        first = start  # what is left of the span begins here
        for low, high in holes:
            if high < first or low > last:
                continue
            if low > first:
                out.append((first, low - 1))
            first = high + 1
            if first > last:
                break
        if first <= last:
            out.append((first, last))
    return tuple(out)


def _count(spans: tuple[Span, ...]) -> int:
    return sum(last - first + 1 for first, last in spans)


def _networks(spans: tuple[Span, ...], address: type[_A]) -> tuple[Network, ...]:
    return tuple(
        net
        for first, last in spans
        for net in ipaddress.summarize_address_range(address(first), address(last))
    )


@dataclass(frozen=True)
class Counts:
    """A number of addresses per family."""

    v4: int
    v6: int


@dataclass(frozen=True)
class AddressSet:
    """A union of CIDRs, kept per family as sorted, disjoint, non-adjacent integer spans (the
    canonical form: two sets with the same addresses compare equal however they were spelled,
    and every operation is a sweep over integers, not over ``ipaddress`` objects)."""

    v4: tuple[Span, ...] = ()
    v6: tuple[Span, ...] = ()

    @classmethod
    def of(cls, cidrs: Iterable[str | Network]) -> AddressSet:
        """The union of ``cidrs`` (strings or networks; host bits cleared)."""
        v4: list[Span] = []
        v6: list[Span] = []
        for cidr in cidrs:
            net = parse(cidr)
            (v4 if net.version == 4 else v6).append(
                (int(net.network_address), int(net.broadcast_address))
            )
        return cls(_merged(v4), _merged(v6))

    @property
    def blocks(self) -> tuple[Network, ...]:
        """The fewest CIDR blocks that make up the set, IPv4 first."""
        return (
            *_networks(self.v4, ipaddress.IPv4Address),
            *_networks(self.v6, ipaddress.IPv6Address),
        )

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    def __str__(self) -> str:
        return ",".join(str(b) for b in self.blocks) or "(none)"

    # -- set algebra ------------------------------------------------------------------------

    def __or__(self, other: AddressSet) -> AddressSet:
        return AddressSet(_merged((*self.v4, *other.v4)), _merged((*self.v6, *other.v6)))

    def __and__(self, other: AddressSet) -> AddressSet:
        return AddressSet(_intersection(self.v4, other.v4), _intersection(self.v6, other.v6))

    def __sub__(self, other: AddressSet) -> AddressSet:
        return AddressSet(_difference(self.v4, other.v4), _difference(self.v6, other.v6))

    def size(self) -> Counts:
        return Counts(_count(self.v4), _count(self.v6))

    def issubset(self, other: AddressSet) -> bool:
        """Every address here is also in ``other``."""
        return not (self - other)

    def issuperset(self, other: AddressSet) -> bool:
        return other.issubset(self)

    def overlaps(self, other: AddressSet) -> bool:
        return bool(self & other)

    def covers(self, subnet: str | Network | AddressSet) -> bool:
        """True if this set holds every address of ``subnet`` (e.g. a role's subnets)."""
        target = subnet if isinstance(subnet, AddressSet) else AddressSet.of([subnet])
        return self.issuperset(target)

    # -- exposure ---------------------------------------------------------------------------

    def covers_internet(self, family: Family | None = None) -> bool:
        """The whole IPv4 internet (``family=4``), the whole IPv6 one (6), or, without a family,
        either of them: a rule open to all of IPv4 is open to the world even if IPv6 is closed."""
        whole4 = self.v4 == ((0, IPV4_SPACE - 1),)
        whole6 = self.v6 == ((0, IPV6_SPACE - 1),)
        if family == 4:
            return whole4
        if family == 6:
            return whole6
        return whole4 or whole6

    def covers_both_internets(self) -> bool:
        return self.covers_internet(4) and self.covers_internet(6)

    def public(self) -> AddressSet:
        """The addresses here that are routable on the internet (see :data:`NON_PUBLIC`)."""
        return self - _NON_PUBLIC

    def public_size(self) -> Counts:
        return self.public().size()

    def public_larger_than(self, *, v4: int, v6: int) -> bool:
        """More than ``v4`` public IPv4 addresses, or more than ``v6`` public IPv6 ones."""
        public = self.public_size()
        return public.v4 > v4 or public.v6 > v6


_NON_PUBLIC = AddressSet.of(c for group in NON_PUBLIC.values() for c in group)
WORLD = AddressSet.of(["0.0.0.0/0", "::/0"])


def world_coverage(cidrs: Iterable[str | Network]) -> list[Family]:
    """The families whose whole internet ``cidrs`` add up to (empty: neither)."""
    union = AddressSet.of(cidrs)
    return [family for family in (4, 6) if union.covers_internet(family)]
