"""Property tests of address sets: every answer agrees with the addresses themselves.

In a small universe (a /24 of IPv4 and a /120 of IPv6) each set is also enumerated address by
address, and every operation is checked against Python's own set algebra on those addresses.
At internet scale the world is split into random pieces in every spelling a person might use.
"""

from __future__ import annotations

import ipaddress

from hypothesis import example, given
from hypothesis import strategies as st

from server_hardening.addresses import NON_PUBLIC, AddressSet, world_coverage

V4_BASE = int(ipaddress.IPv4Address("10.0.0.0"))
V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))
IPV4_LAST = 2**32 - 1


@st.composite
def small_network(draw: st.DrawFn) -> str:
    """A CIDR inside 10.0.0.0/24 or 2001:db8::/120, host bits possibly set."""
    if draw(st.booleans()):
        prefix = draw(st.integers(24, 32))
        return f"{ipaddress.IPv4Address(V4_BASE + draw(st.integers(0, 255)))}/{prefix}"
    prefix = draw(st.integers(120, 128))
    return f"{ipaddress.IPv6Address(V6_BASE + draw(st.integers(0, 255)))}/{prefix}"


small_sets = st.lists(small_network(), max_size=6)


def addresses(cidrs: list[str]) -> set[tuple[int, int]]:
    """The oracle: every (family, address) the CIDRs hold."""
    out: set[tuple[int, int]] = set()
    for cidr in cidrs:
        net = ipaddress.ip_network(cidr, strict=False)
        first = int(net.network_address)
        out.update((net.version, first + i) for i in range(net.num_addresses))
    return out


def count(found: set[tuple[int, int]], family: int) -> int:
    return sum(1 for f, _ in found if f == family)


@given(small_sets, small_sets, small_network())
# Two halves and the whole, spelled apart: random sets are rarely equal, so one is given.
@example(["10.0.0.0/25", "10.0.0.128/25"], ["10.0.0.0/24"], "10.0.0.0/24")
def test_the_set_algebra_agrees_with_the_addresses(a: list[str], b: list[str], subnet: str) -> None:
    """Size, equality however spelled, union, intersection, subset, overlap and coverage of a
    subnet, each against the enumerated addresses (one property per line, the same examples)."""
    sa, sb = AddressSet.of(a), AddressSet.of(b)
    oracle_a, oracle_b = addresses(a), addresses(b)
    assert (sa.size().v4, sa.size().v6) == (count(oracle_a, 4), count(oracle_a, 6))
    assert (sa == sb) == (oracle_a == oracle_b)
    assert addresses([str(n) for n in (sa | sb).blocks]) == oracle_a | oracle_b
    assert addresses([str(n) for n in (sa & sb).blocks]) == oracle_a & oracle_b
    assert sa.issubset(sb) == (oracle_a <= oracle_b)
    assert sa.issuperset(sb) == (oracle_a >= oracle_b)
    assert sa.overlaps(sb) == bool(oracle_a & oracle_b)
    assert sa.covers(subnet) == (addresses([subnet]) <= oracle_a)


@st.composite
def split_of(draw: st.DrawFn, root: str) -> list[str]:
    """``root`` cut into random CIDR pieces (some pieces repeated or overlapping a sibling),
    with random host bits set, in random order: the world spelled as someone might. The cuts,
    host bits and order come from one drawn Random (a draw per choice cost most of the test;
    the Random is reproducible from the failing example hypothesis prints)."""
    rnd = draw(st.randoms(use_true_random=True))  # one seed drawn, not a draw per call
    pieces: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    todo = [ipaddress.ip_network(root)]
    while todo:
        net = todo.pop()
        if net.prefixlen < 6 and rnd.random() < 0.5:
            todo.extend(net.subnets())
        else:
            pieces.append(net)
    out = [
        f"{net.network_address + rnd.getrandbits(net.max_prefixlen - net.prefixlen)}/{net.prefixlen}"
        for net in pieces
    ]
    if draw(st.booleans()):  # an overlapping extra piece changes nothing
        out.append(str(next(ipaddress.ip_network(root).subnets(prefixlen_diff=2))))
    rnd.shuffle(out)
    return out


@given(split_of("::/0"))
def test_ipv6_pieces_that_tile_the_internet_cover_it(pieces: list[str]) -> None:
    assert AddressSet.of(pieces).covers_internet(6)
    assert world_coverage(pieces) == [6]


@given(split_of("0.0.0.0/0"), st.data())
def test_ipv4_pieces_that_tile_the_internet_cover_it_and_not_without_one(
    pieces: list[str], data: st.DataObject
) -> None:
    union = AddressSet.of(pieces)
    assert union.covers_internet(4)
    assert union.covers_internet()
    assert not union.covers_internet(6)
    assert world_coverage(pieces) == [4]
    nets = {ipaddress.ip_network(p, strict=False) for p in pieces}
    if len(nets) < 2:
        return
    dropped = data.draw(st.sampled_from(sorted(nets)))
    rest = [p for p in pieces if not ipaddress.ip_network(p, strict=False).overlaps(dropped)]
    assert not AddressSet.of(rest).covers_internet()


@given(st.ip_addresses())
def test_any_address_with_prefix_length_zero_is_the_whole_internet(address: object) -> None:
    union = AddressSet.of([f"{address}/0"])
    assert union.covers_internet()
    assert union.covers_both_internets() is False


def test_both_families_open_is_the_whole_world_twice() -> None:
    assert AddressSet.of(["0.0.0.0/1", "128.0.0.0/1", "::0/0"]).covers_both_internets()


def test_the_non_public_ranges_have_no_public_addresses() -> None:
    for group in NON_PUBLIC.values():
        assert AddressSet.of(group).public_size().v4 == 0
        assert AddressSet.of(group).public_size().v6 == 0


def test_the_public_internet_is_the_world_minus_the_special_purpose_ranges() -> None:
    world = AddressSet.of(["0.0.0.0/0"])
    special = AddressSet.of(c for g in NON_PUBLIC.values() for c in g if "." in c)
    assert world.public_size().v4 == 2**32 - special.size().v4
    assert world.public().size().v4 == world.public_size().v4
    assert not world.public().overlaps(special)


# Any IPv4 address with any prefix length, drawn as integers (st.ip_addresses with a flatmap
# cost more than twice as much per example).
ipv4_cidrs = st.tuples(st.integers(0, IPV4_LAST), st.integers(0, 32)).map(
    lambda t: f"{ipaddress.IPv4Address(t[0])}/{t[1]}"
)


@given(st.lists(ipv4_cidrs, max_size=5))
def test_public_addresses_never_exceed_the_total_and_match_the_public_part(
    cidrs: list[str],
) -> None:
    union = AddressSet.of(cidrs)
    public = union.public_size()
    assert public.v4 <= union.size().v4
    assert union.public().size() == public
    assert union.public().issubset(union)


def test_a_public_range_is_judged_by_its_public_addresses_only() -> None:
    assert AddressSet.of(["8.8.8.0/24"]).public_size().v4 == 256
    assert AddressSet.of(["10.0.0.0/8"]).public_larger_than(v4=0, v6=0) is False
    assert AddressSet.of(["100.64.0.0/10", "8.8.8.8/32"]).public_size().v4 == 1
    wide = AddressSet.of(["8.0.0.0/8"])
    assert wide.public_larger_than(v4=65536, v6=2**64)
    assert not wide.public_larger_than(v4=2**24, v6=2**64)
    assert AddressSet.of(["2600::/16"]).public_larger_than(v4=0, v6=2**64)
