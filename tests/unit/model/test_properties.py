"""Property tests of the validator: it accepts every CIDR Python accepts (normalised), refuses
everything else with a field-naming error, and never fails in any other way."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from builders import spec_dict
from server_hardening.model import SpecError, parse_spec

# An address (hypothesis's, which favours the special-purpose ranges) and any prefix length,
# drawn side by side: the prefix does not depend on the address, so no flatmap (a flatmap per
# example cost about a third of the test).
networks = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)),
).map(lambda t: f"{t[0]}/{t[1]}")
ROLES = [ipaddress.ip_network(c) for c in ("10.0.0.0/16", "10.1.0.0/16", "10.2.0.0/16")]


def _outside_roles(cidr: str) -> bool:
    net = ipaddress.ip_network(cidr, strict=False)
    return not any(net.version == r.version and net.overlaps(r) for r in ROLES)


def _network_form(cidr: str) -> bool:
    return (
        str(ipaddress.ip_network(cidr, strict=False).network_address)
        == cidr.split("/", maxsplit=1)[0]
    )


@given(networks.filter(_outside_roles))
def test_any_cidr_in_network_form_is_accepted_and_any_other_refused_naming_the_network(
    cidr: str,
) -> None:
    network = str(ipaddress.ip_network(cidr, strict=False))
    try:
        spec = parse_spec(spec_dict(**{"topology.vcs": {"cidrs": [cidr]}}))
    except SpecError as exc:
        assert not _network_form(cidr)
        (error,) = exc.errors
        assert error.path == "spec.topology.vcs.cidrs[0]"
        assert "host bits set" in error.reason and network in error.reason
    else:
        assert _network_form(cidr)
        assert spec.topology.vcs is not None
        assert spec.topology.vcs.cidrs == [network]


@given(st.text(min_size=1, max_size=30))
def test_anything_else_is_refused_naming_the_field(text: str) -> None:
    try:
        ipaddress.ip_network(text.strip(), strict=True)
        valid = "/" in text
    except ValueError:
        valid = False
    try:
        parse_spec(spec_dict(**{"topology.vcs": {"cidrs": [text]}}))
    except SpecError as exc:
        assert exc.errors
        assert all(str(e).startswith("spec.topology.vcs.cidrs[0]: ") for e in exc.errors)
    else:
        assert valid, f"{text!r} was accepted as a CIDR"


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "serverVersion",
                "mode",
                "topology",
                "access",
                "unmanagedRules",
                "deletionPolicy",
                "driftCheckInterval",
                "bogus",
            ]
        ),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=5),
            st.lists(st.integers(), max_size=2),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        ),
        max_size=6,
    )
)
def test_garbage_only_ever_raises_spec_errors_with_paths(garbage: dict[str, object]) -> None:
    try:
        parse_spec(garbage)
    except SpecError as exc:
        assert exc.errors and all(str(e).startswith("spec") for e in exc.errors)
