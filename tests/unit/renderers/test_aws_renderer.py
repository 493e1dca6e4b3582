"""The security-group renderer: IpPermissions exactly as boto3 takes them, atomic rules with
normalised keys, quota counted as AWS counts it. Pure: no moto, no boto3."""

from __future__ import annotations

import ipaddress
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from builders import OWNER
from server_hardening.model import AwsSpec
from server_hardening.ownership import describe
from server_hardening.renderers.aws import (
    AtomicRule,
    atomic_rules,
    normalise_ports,
    normalise_protocol,
    parse_rule,
    permissions,
    render_security_groups,
)
from server_hardening.rules import (
    Action,
    Direction,
    Peer,
    PeerKind,
    PortRange,
    Protocol,
    Role,
    Rule,
)

PORT_4647 = PortRange.single(4647)
NODES, NOMAD, VMS, LBS = "sg-0000000a", "sg-0000000b", "sg-0000000c", "sg-0000000d"


def aws(**changes: Any) -> AwsSpec:
    body: dict[str, Any] = {
        "region": "us-east-1",
        "securityGroups": {
            "kubernetesNodes": NODES,
            "nomadClients": NOMAD,
            "externalVMs": VMS,
            "loadBalancers": LBS,
        },
    }
    body.update(changes)
    return AwsSpec.model_validate(body)


def rule(
    subject: Role = Role.NOMAD_CLIENTS,
    direction: Direction = Direction.INGRESS,
    peer: Peer | None = None,
    protocol: Protocol = Protocol.TCP,
    ports: PortRange | None = PORT_4647,
    rows: tuple[str, ...] = ("NOMAD-IN-1",),
    action: Action = Action.ALLOW,
) -> Rule:
    return Rule(
        subject=subject,
        direction=direction,
        action=action,
        peer=peer or Peer(PeerKind.KUBERNETES_NODES, ("10.0.0.0/16",)),
        protocol=protocol,
        ports=ports if protocol is not Protocol.ALL else None,
        rows=frozenset(rows),
    )


def test_a_role_peer_with_a_group_is_referenced_by_group_id() -> None:
    out = render_security_groups([rule()], aws(), OWNER)
    [nomad] = [g for g in out.groups if g["groupId"] == NOMAD]
    assert nomad["role"] == "nomadClients"
    assert nomad["ingress"] == [
        {
            "IpProtocol": "tcp",
            "FromPort": 4647,
            "ToPort": 4647,
            "UserIdGroupPairs": [
                {"GroupId": NODES, "Description": describe(["NOMAD-IN-1"], OWNER)}
            ],
        }
    ]
    assert nomad["egress"] == []


def test_a_role_peer_without_a_group_is_its_cidrs_and_ipv6_goes_to_ipv6_ranges() -> None:
    spec = aws(securityGroups={"nomadClients": NOMAD})
    peer = Peer(PeerKind.KUBERNETES_NODES, ("10.0.0.0/16", "fd00:1::/64"))
    out = render_security_groups([rule(peer=peer)], spec, OWNER)
    [perm] = out.groups[0]["ingress"]
    assert perm["IpRanges"] == [
        {"CidrIp": "10.0.0.0/16", "Description": describe(["NOMAD-IN-1"], OWNER)}
    ]
    assert perm["Ipv6Ranges"] == [
        {"CidrIpv6": "fd00:1::/64", "Description": describe(["NOMAD-IN-1"], OWNER)}
    ]
    assert "UserIdGroupPairs" not in perm


def test_permissions_with_the_same_protocol_and_ports_are_merged() -> None:
    rules = [
        rule(peer=Peer(PeerKind.EXTERNAL, ("0.0.0.0/0",)), ports=PortRange(64535, 65535), rows=("NOMAD-IN-2",)),
        rule(peer=Peer(PeerKind.ADMIN_SSH, ("203.0.113.0/24",)), ports=PortRange(64535, 65535), rows=("X-1",)),
        rule(),
    ]  # fmt: skip
    out = render_security_groups(rules, aws(), OWNER)
    ingress = out.groups[[g["groupId"] for g in out.groups].index(NOMAD)]["ingress"]
    assert [(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")) for p in ingress] == [
        ("tcp", 4647, 4647),
        ("tcp", 64535, 65535),
    ]
    assert [r["CidrIp"] for r in ingress[1]["IpRanges"]] == ["0.0.0.0/0", "203.0.113.0/24"]


def test_all_protocols_have_no_ports_and_udp_keeps_its_name() -> None:
    rules = [
        rule(subject=Role.KUBERNETES_NODES, peer=Peer(PeerKind.KUBERNETES_NODES, ("10.0.0.0/16",)),
             protocol=Protocol.ALL, rows=("K8S-IN-2",)),
        rule(subject=Role.KUBERNETES_NODES, direction=Direction.EGRESS,
             peer=Peer(PeerKind.DNS, ("10.0.0.2/32",)), protocol=Protocol.UDP,
             ports=PortRange.single(53), rows=("ALL-OUT-1",)),
    ]  # fmt: skip
    out = render_security_groups(rules, aws(), OWNER)
    [nodes] = [g for g in out.groups if g["groupId"] == NODES]
    assert nodes["ingress"] == [
        {
            "IpProtocol": "-1",
            "UserIdGroupPairs": [{"GroupId": NODES, "Description": describe(["K8S-IN-2"], OWNER)}],
        }
    ]
    assert nodes["egress"][0]["IpProtocol"] == "udp"
    assert (nodes["egress"][0]["FromPort"], nodes["egress"][0]["ToPort"]) == (53, 53)


def test_deny_rules_and_roles_without_a_group_are_skipped_with_info_findings() -> None:
    rules = [
        rule(action=Action.DENY, peer=Peer(PeerKind.NOMAD_CLIENTS, ("10.1.0.0/16",)),
             protocol=Protocol.ALL, rows=("NOMAD-ISO-1",)),
        rule(subject=Role.EXTERNAL_VMS, rows=("VM-IN-1",), ports=PortRange.single(22)),
    ]  # fmt: skip
    out = render_security_groups(rules, aws(securityGroups={"nomadClients": NOMAD}), OWNER)
    assert out.atoms == ()
    assert [(f.code, f.row, f.severity.value) for f in out.findings] == [
        ("IsolationByOmission", "NOMAD-ISO-1", "info"),
        ("NoSecurityGroup", "VM-IN-1", "info"),
    ]
    # The configured group is still managed (its stale rules would be removed).
    assert out.group_ids == (NOMAD,)


def test_rows_of_two_rules_that_become_one_aws_rule_are_united() -> None:
    # One group for nodes and load balancers: the same AWS rule from two guide rows.
    spec = aws(securityGroups={"kubernetesNodes": NODES, "loadBalancers": NODES})
    rules = [
        rule(subject=Role.KUBERNETES_NODES, peer=Peer(PeerKind.EXTERNAL, ("0.0.0.0/0",)),
             ports=PortRange.single(443), rows=("LB-IN-2",)),
        rule(subject=Role.LOAD_BALANCERS, peer=Peer(PeerKind.EXTERNAL, ("0.0.0.0/0",)),
             ports=PortRange.single(443), rows=("ALL-IN-X",)),
    ]  # fmt: skip
    out = render_security_groups(rules, spec, OWNER)
    [atom] = out.atoms
    assert atom.rows == ("ALL-IN-X", "LB-IN-2")
    assert out.groups[0]["role"] == "kubernetesNodes,loadBalancers"


def test_quota_counts_each_cidr_and_each_group_reference_per_family() -> None:
    peer = Peer(PeerKind.CIDRS, (*tuple(f"10.9.{i}.0/24" for i in range(59)), "fd00::/64"))
    rules = [rule(peer=peer, rows=("X-1",)), rule(ports=PortRange.single(22), rows=("X-2",))]
    out = render_security_groups(rules, aws(), OWNER)
    [use] = [q for q in out.quota if q.group_id == NOMAD and q.direction is Direction.INGRESS]
    # 59 IPv4 CIDRs + 1 group reference (counts for both families); 1 IPv6 CIDR + 1 reference.
    assert (use.ipv4, use.ipv6, use.quota) == (60, 2, 60)
    assert not use.exceeded
    assert out.over_quota() == ()

    more = [*rules, rule(ports=PortRange.single(23), rows=("X-3",))]
    over = render_security_groups(more, aws(ruleQuota={"inbound": 60, "outbound": 60}), OWNER)
    [finding] = [f for f in over.findings if f.code == "QuotaExceeded"]
    assert finding.severity.value == "error"
    assert "sg-0000000b (nomadClients) ingress needs 61 IPv4 rules" in finding.message
    assert "the quota is 60" in finding.message
    assert "spec.aws.ruleQuota.inbound" in finding.message


def test_atomic_rules_have_one_peer_each_and_fingerprints_over_the_description() -> None:
    peer = Peer(PeerKind.EXTERNAL, ("0.0.0.0/0", "::/0"))
    out = render_security_groups([rule(peer=peer, rows=("NOMAD-IN-2",))], aws(), OWNER)
    items = atomic_rules(out)
    assert [i.key for i in items] == [
        f"{NOMAD} ingress tcp:4647 from 0.0.0.0/0",
        f"{NOMAD} ingress tcp:4647 from ::/0",
    ]
    assert all(i.rows == ("NOMAD-IN-2",) for i in items)
    relabelled = render_security_groups([rule(peer=peer, rows=("NOMAD-IN-9",))], aws(), OWNER)
    again = atomic_rules(relabelled)
    assert [i.key for i in again] == [i.key for i in items]
    assert [i.fingerprint for i in again] != [i.fingerprint for i in items]


def _api_rule(**fields: Any) -> dict[str, Any]:
    base = {"SecurityGroupRuleId": "sgr-1", "GroupId": NOMAD, "IsEgress": False}
    base.update(fields)
    return base


def test_keys_are_normalised_across_the_ways_aws_spells_a_rule() -> None:
    same = [
        _api_rule(IpProtocol="tcp", FromPort=22, ToPort=22, CidrIpv4="10.0.0.0/16"),
        _api_rule(IpProtocol="6", FromPort=22, ToPort=22, CidrIpv4="10.0.0.1/16"),
        _api_rule(IpProtocol="TCP", FromPort=22, ToPort=22, CidrIpv4="10.0.0.0/16",
                  Description="whatever"),
    ]  # fmt: skip
    assert len({parse_rule(r).key() for r in same}) == 1
    every = [
        _api_rule(IpProtocol="-1", FromPort=-1, ToPort=-1, CidrIpv6="FD00:0:0:0::/64"),
        _api_rule(IpProtocol="-1", CidrIpv6="fd00::/64"),
    ]
    assert len({parse_rule(r).key() for r in every}) == 1
    assert parse_rule(every[0]).key() == f"{NOMAD} ingress all:all from fd00::/64"
    ref = _api_rule(IpProtocol="17", FromPort=53, ToPort=53,
                    ReferencedGroupInfo={"GroupId": NODES, "UserId": "123456789012"})  # fmt: skip
    assert parse_rule(ref).key() == f"{NOMAD} ingress udp:53 from {NODES}"
    whole = _api_rule(IpProtocol="tcp", FromPort=0, ToPort=65535, CidrIpv4="0.0.0.0/0")
    assert parse_rule(whole).key() == f"{NOMAD} ingress tcp:all from 0.0.0.0/0"


def test_a_rendered_rule_and_the_same_rule_read_back_share_key_and_fingerprint() -> None:
    out = render_security_groups([rule()], aws(), OWNER)
    [item] = atomic_rules(out)
    [atom] = out.atoms
    perm = atom.permission()
    back = parse_rule(
        _api_rule(
            IpProtocol=perm["IpProtocol"],
            FromPort=perm["FromPort"],
            ToPort=perm["ToPort"],
            ReferencedGroupInfo={"GroupId": perm["UserIdGroupPairs"][0]["GroupId"]},
            Description=perm["UserIdGroupPairs"][0]["Description"],
        )
    )
    assert back.key() == item.key
    assert back.description == atom.description


protocols = st.sampled_from(["tcp", "udp"])
ports = st.integers(min_value=1, max_value=65535)


@given(protocols, ports, ports, st.integers(min_value=0, max_value=2**32 - 1), st.integers(8, 32))
def test_normalisation_is_stable_under_aws_spellings(
    proto: str, a: int, b: int, address: int, prefix: int
) -> None:
    first, last = min(a, b), max(a, b)
    net = ipaddress.ip_network((address, prefix), strict=False)
    host = ipaddress.ip_address(address)
    number = {"tcp": "6", "udp": "17"}[proto]
    one = _api_rule(IpProtocol=proto, FromPort=first, ToPort=last, CidrIpv4=f"{host}/{prefix}")
    two = _api_rule(IpProtocol=number, FromPort=first, ToPort=last, CidrIpv4=str(net))
    assert parse_rule(one).key() == parse_rule(two).key()
    assert normalise_protocol(number) == proto
    assert normalise_ports(proto, first, last) == normalise_ports(proto, first, last)


def test_permissions_round_trip_through_atoms() -> None:
    atoms = [
        AtomicRule(NOMAD, Direction.EGRESS, "tcp", 443, 443, "cidr4", "0.0.0.0/0", "d"),
        AtomicRule(NOMAD, Direction.EGRESS, "tcp", 443, 443, "cidr6", "::/0", "d"),
        AtomicRule(NOMAD, Direction.EGRESS, "tcp", 443, 443, "group", VMS, "d"),
        AtomicRule(NOMAD, Direction.EGRESS, "-1", None, None, "group", NOMAD, "d"),
    ]
    perms = permissions(atoms)
    assert len(perms) == 2
    assert perms[0] == {
        "IpProtocol": "-1",
        "UserIdGroupPairs": [{"GroupId": NOMAD, "Description": "d"}],
    }
    assert sum(len(p.get("IpRanges", [])) + len(p.get("Ipv6Ranges", []))
               + len(p.get("UserIdGroupPairs", [])) for p in perms) == 4  # fmt: skip
