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
from typing import Any, Literal, TypeVar

IPv4 = ipaddress.IPv4Network
IPv6 = ipaddress.IPv6Network
Network = IPv4 | IPv6
Family = Literal[4, 6]
_N = TypeVar("_N", IPv4, IPv6)

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


def _collapse4(networks: Iterable[IPv4]) -> tuple[IPv4, ...]:
    return tuple(ipaddress.collapse_addresses(networks))


def _collapse6(networks: Iterable[IPv6]) -> tuple[IPv6, ...]:
    return tuple(ipaddress.collapse_addresses(networks))


def parse(cidr: str | Network) -> Network:
    """One CIDR, host bits cleared (``1.2.3.4/0`` is ``0.0.0.0/0``); ValueError if not one."""
    if isinstance(cidr, IPv4 | IPv6):
        return cidr
    return ipaddress.ip_network(cidr.strip(), strict=False)


def _intersection(a: tuple[Network, ...], b: tuple[Network, ...]) -> list[Network]:
    """Blocks of a ∩ b. Two CIDR blocks either nest or are disjoint, so each overlapping pair
    contributes its smaller block; both inputs are collapsed (disjoint), so the results are too."""
    out: list[Network] = []
    for x in a:
        for y in b:
            if x.version == y.version and x.overlaps(y):
                out.append(x if x.prefixlen >= y.prefixlen else y)
    return out


@dataclass(frozen=True)
class Counts:
    """A number of addresses per family."""

    v4: int
    v6: int


@dataclass(frozen=True)
class AddressSet:
    """A union of CIDRs, kept as disjoint, sorted blocks per family (the canonical form: two
    sets with the same addresses compare equal however they were spelled)."""

    v4: tuple[IPv4, ...] = ()
    v6: tuple[IPv6, ...] = ()

    @classmethod
    def of(cls, cidrs: Iterable[str | Network]) -> AddressSet:
        """The union of ``cidrs`` (strings or networks; host bits cleared)."""
        nets = [parse(c) for c in cidrs]
        return cls(
            _collapse4(n for n in nets if isinstance(n, IPv4)),
            _collapse6(n for n in nets if isinstance(n, IPv6)),
        )

    @property
    def blocks(self) -> tuple[Network, ...]:
        return (*self.v4, *self.v6)

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)

    def __str__(self) -> str:
        return ",".join(str(b) for b in self.blocks) or "(none)"

    # -- set algebra ------------------------------------------------------------------------

    def __or__(self, other: AddressSet) -> AddressSet:
        return AddressSet(_collapse4((*self.v4, *other.v4)), _collapse6((*self.v6, *other.v6)))

    def __and__(self, other: AddressSet) -> AddressSet:
        return AddressSet.of(_intersection(self.blocks, other.blocks))

    def size(self) -> Counts:
        return Counts(sum(b.num_addresses for b in self.v4), sum(b.num_addresses for b in self.v6))

    def issubset(self, other: AddressSet) -> bool:
        """Every address here is also in ``other``."""
        return (self & other).size() == self.size()

    def issuperset(self, other: AddressSet) -> bool:
        return other.issubset(self)

    def overlaps(self, other: AddressSet) -> bool:
        return bool(_intersection(self.blocks, other.blocks))

    def covers(self, subnet: str | Network | AddressSet) -> bool:
        """True if this set holds every address of ``subnet`` (e.g. a role's subnets)."""
        target = subnet if isinstance(subnet, AddressSet) else AddressSet.of([subnet])
        return self.issuperset(target)

    # -- exposure ---------------------------------------------------------------------------

    def covers_internet(self, family: Family | None = None) -> bool:
        """The whole IPv4 internet (``family=4``), the whole IPv6 one (6), or, without a family,
        either of them: a rule open to all of IPv4 is open to the world even if IPv6 is closed."""
        size = self.size()
        whole4, whole6 = size.v4 == IPV4_SPACE, size.v6 == IPV6_SPACE
        if family == 4:
            return whole4
        if family == 6:
            return whole6
        return whole4 or whole6

    def covers_both_internets(self) -> bool:
        return self.covers_internet(4) and self.covers_internet(6)

    def public(self) -> AddressSet:
        """The addresses here that are routable on the internet (see :data:`NON_PUBLIC`)."""
        return AddressSet(_subtract4(self.v4, _NON_PUBLIC.v4), _subtract6(self.v6, _NON_PUBLIC.v6))

    def public_size(self) -> Counts:
        size, private = self.size(), (self & _NON_PUBLIC).size()
        return Counts(size.v4 - private.v4, size.v6 - private.v6)

    def public_larger_than(self, *, v4: int, v6: int) -> bool:
        """More than ``v4`` public IPv4 addresses, or more than ``v6`` public IPv6 ones."""
        public = self.public_size()
        return public.v4 > v4 or public.v6 > v6


def _subtract4(blocks: tuple[IPv4, ...], minus: tuple[IPv4, ...]) -> tuple[IPv4, ...]:
    return _collapse4(_minus(blocks, minus, ipaddress.IPv4Address))


def _subtract6(blocks: tuple[IPv6, ...], minus: tuple[IPv6, ...]) -> tuple[IPv6, ...]:
    return _collapse6(_minus(blocks, minus, ipaddress.IPv6Address))


def _minus(blocks: tuple[_N, ...], holes: tuple[_N, ...], address: type[Any]) -> list[_N]:
    """``blocks`` without ``holes`` (both collapsed: sorted and disjoint), as integer ranges:
    ``address_exclude`` one hole at a time cost milliseconds per set."""
    spans = [(int(h.network_address), int(h.broadcast_address)) for h in holes]
    out: list[_N] = []

    def keep(first: int, last: int) -> None:
        out.extend(ipaddress.summarize_address_range(address(first), address(last)))

    for block in blocks:
        first, last = int(block.network_address), int(block.broadcast_address)
        for low, high in spans:
            if high < first or low > last:
                continue
            if low > first:
                keep(first, low - 1)
            first = high + 1
            if first > last:
                break
        if first <= last:
            keep(first, last)
    return out


_NON_PUBLIC = AddressSet.of(c for group in NON_PUBLIC.values() for c in group)
WORLD = AddressSet.of(["0.0.0.0/0", "::/0"])


def world_coverage(cidrs: Iterable[str | Network]) -> list[Family]:
    """The families whose whole internet ``cidrs`` add up to (empty: neither)."""
    union = AddressSet.of(cidrs)
    return [family for family in (4, 6) if union.covers_internet(family)]
