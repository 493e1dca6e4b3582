"""The compiler applies the rows the spec asks for, to the peers the spec names."""

from __future__ import annotations

import pytest

from builders import make_spec
from server_hardening.compiler import compile_intent
from server_hardening.guide import CHOICES, PROFILES
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


def rules_with(rules: tuple[Rule, ...], row: str) -> list[Rule]:
    return [r for r in rules if row in r.rows]


def test_every_rule_cites_rows_of_the_catalogue_or_a_documented_choice() -> None:
    known = {c.id for c in CHOICES}.union(*(p.row_ids() for p in PROFILES.values()))
    for version in ("3", "4.0", "4.3"):
        intent = compile_intent(make_spec(serverVersion=version))
        for rule in intent.rules + intent.cloud_rules("gcp"):
            assert rule.rows and rule.rows <= known, rule


def test_a_layered_load_balancer_gets_its_own_rules_and_the_nodeport_hop() -> None:
    intent = compile_intent(make_spec())
    (lb_in_4,) = rules_with(intent.rules, "LB-IN-4")
    assert (lb_in_4.subject, lb_in_4.peer.kind, lb_in_4.ports) == (
        Role.LOAD_BALANCERS, PeerKind.NOMAD_CLIENTS, PortRange(4647, 4647),
    )  # fmt: skip
    (k8s_in_1,) = rules_with(intent.rules, "K8S-IN-1")
    assert k8s_in_1.ports == PortRange(30000, 32767)
    assert k8s_in_1.peer.cidrs == ("10.0.0.0/16",)  # no loadBalancers.cidrs: the node subnets


def test_a_transparent_load_balancer_moves_its_rows_onto_the_nodes() -> None:
    intent = compile_intent(make_spec(**{"topology.loadBalancers": {"transparent": True}}))
    assert not [r for r in intent.rules if r.subject is Role.LOAD_BALANCERS]
    assert not rules_with(intent.rules, "K8S-IN-1") and not rules_with(intent.rules, "LB-OUT-1")
    (lb_in_4,) = rules_with(intent.rules, "LB-IN-4")
    assert lb_in_4.subject is Role.KUBERNETES_NODES
    (nomad_out_3,) = rules_with(intent.rules, "NOMAD-OUT-3")
    assert nomad_out_3.peer.kind is PeerKind.KUBERNETES_NODES


def test_the_node_port_range_comes_from_the_spec() -> None:
    spec = make_spec(**{"topology.loadBalancers": {"nodePortRange": {"from": 31000, "to": 31999}}})
    (k8s_in_1,) = rules_with(compile_intent(spec).rules, "K8S-IN-1")
    assert k8s_in_1.ports == PortRange(31000, 31999)


def test_admin_ssh_is_only_written_when_enabled_and_only_from_its_sources() -> None:
    assert not rules_with(compile_intent(make_spec()).rules, "ALL-IN-1")
    spec = make_spec(**{"access.adminSSH": {"enabled": True, "sources": ["192.0.2.0/24"]}})
    admin = rules_with(compile_intent(spec).rules, "ALL-IN-1")
    assert {r.subject for r in admin} == {
        Role.KUBERNETES_NODES,
        Role.NOMAD_CLIENTS,
        Role.EXTERNAL_VMS,
    }
    assert {r.peer.cidrs for r in admin} == {("192.0.2.0/24",)}


def test_ssh_rerun_defaults_to_external_and_takes_narrower_sources() -> None:
    (wide,) = rules_with(compile_intent(make_spec()).rules, "NOMAD-IN-2")
    assert wide.peer.cidrs == ("0.0.0.0/0",) and wide.ports == PortRange(64535, 65535)
    spec = make_spec(**{"access.sshRerun": {"sources": ["203.0.113.0/24"]}})
    (narrow,) = rules_with(compile_intent(spec).rules, "NOMAD-IN-2")
    assert narrow.peer.cidrs == ("203.0.113.0/24",)
    off = make_spec(**{"access.sshRerun": {"enabled": False}})
    assert not rules_with(compile_intent(off).rules, "NOMAD-IN-2")
    assert not rules_with(compile_intent(off).rules, "VM-IN-5")


def test_dns_is_rendered_for_udp_and_tcp_when_the_resolver_is_known() -> None:
    assert not rules_with(compile_intent(make_spec()).rules, "ALL-OUT-1")
    spec = make_spec(**{"topology.dns": {"cidrs": ["10.0.0.2/32"]}})
    dns = rules_with(compile_intent(spec).rules, "ALL-OUT-1")
    assert {(r.subject, r.protocol) for r in dns} == {
        (role, proto) for role in (Role.KUBERNETES_NODES, Role.NOMAD_CLIENTS, Role.EXTERNAL_VMS)
        for proto in (Protocol.UDP, Protocol.TCP)
    }  # fmt: skip


def test_without_external_vms_nothing_mentions_them() -> None:
    intent = compile_intent(make_spec(**{"topology.externalVMs": {"enabled": False}}))
    assert not [
        r for r in intent.rules
        if Role.EXTERNAL_VMS in (r.subject, r.peer.role)
    ]  # fmt: skip


def test_v4_3_no_longer_opens_remote_docker() -> None:
    rules = compile_intent(make_spec(serverVersion="4.3")).rules
    assert not [r for r in rules if r.ports == PortRange(2376, 2376)]
    assert not [r for r in rules if r.ports in (PortRange(3000, 3000), PortRange(8585, 8585))]


def test_isolation_is_compiled_as_deny_rules_on_both_sides() -> None:
    intent = compile_intent(make_spec())
    denies = [r for r in intent.rules if r.action is Action.DENY]
    assert {(r.subject, r.direction, r.peer.kind) for r in denies} == {
        (Role.NOMAD_CLIENTS, Direction.INGRESS, PeerKind.NOMAD_CLIENTS),
        (Role.NOMAD_CLIENTS, Direction.EGRESS, PeerKind.NOMAD_CLIENTS),
        (Role.EXTERNAL_VMS, Direction.INGRESS, PeerKind.EXTERNAL_VMS),
        (Role.EXTERNAL_VMS, Direction.EGRESS, PeerKind.EXTERNAL_VMS),
    }


def test_vms_are_not_allowed_ssh_to_each_other() -> None:
    rules = compile_intent(make_spec()).rules
    assert not [
        r for r in rules
        if r.subject is Role.EXTERNAL_VMS and r.peer.kind is PeerKind.EXTERNAL_VMS and r.action is Action.ALLOW
    ]  # fmt: skip


def test_gcp_gets_pass_through_rules_and_the_health_checks() -> None:
    intent = compile_intent(make_spec())
    gcp = intent.cloud_rules("gcp")
    assert not [r for r in gcp if r.subject is Role.LOAD_BALANCERS]
    health = {r.subject: r for r in gcp if r.peer.kind is PeerKind.HEALTH_CHECKS}
    assert set(health) == {Role.KUBERNETES_NODES, Role.NOMAD_CLIENTS}
    nodes, clients = health[Role.KUBERNETES_NODES], health[Role.NOMAD_CLIENTS]
    assert nodes.peer.cidrs == ("35.191.0.0/16", "130.211.0.0/22")
    assert nodes.ports == PortRange(30000, 32767)
    assert nodes.rows == {"K8S-IN-1", "CHOICE-GCP-HEALTH-CHECKS"}
    # server-terraform's client instance group autoheals on :4646 (CHOICE-NOMAD-HEALTH-CHECKS)
    assert (clients.direction, clients.protocol, clients.ports) == (
        Direction.INGRESS, Protocol.TCP, PortRange(4646, 4646),
    )  # fmt: skip
    assert clients.rows == {"CHOICE-NOMAD-HEALTH-CHECKS"}
    assert not [r for r in intent.rules if r.peer.kind is PeerKind.HEALTH_CHECKS]  # not on AWS


def test_world_open_ssh_rerun_is_a_warning_not_an_error() -> None:
    codes = {(f.code, f.row) for f in compile_intent(make_spec()).findings}
    assert ("WorldOpenSSHRerun", "NOMAD-IN-2") in codes and (
        "WorldOpenSSHRerun",
        "VM-IN-5",
    ) in codes
    narrow = make_spec(**{"access.sshRerun": {"sources": ["203.0.113.0/24"]}})
    assert "WorldOpenSSHRerun" not in {f.code for f in compile_intent(narrow).findings}


def test_ipv6_peers_stay_ipv6() -> None:
    spec = make_spec(**{"topology.external": {"cidrs": ["0.0.0.0/0", "::/0"]}})
    (https,) = [
        r
        for r in rules_with(compile_intent(spec).rules, "ALL-OUT-3")
        if r.subject is Role.NOMAD_CLIENTS
    ]
    assert https.peer.cidrs == ("0.0.0.0/0", "::/0")


def test_a_version_newer_than_the_catalogue_compiles_the_newest_profile_and_warns() -> None:
    intent = compile_intent(make_spec(serverVersion="4.11"))
    assert intent.profile.name == "v4.3"
    (finding,) = [f for f in intent.findings if f.code.startswith("ServerVersion")]
    assert finding.code == "ServerVersionNewerThanCatalogue"
    assert finding.severity.value == "warning" and "'4.11'" in finding.message
    assert intent.rules == compile_intent(make_spec(serverVersion="4.10")).rules


def test_an_unpinned_4_x_compiles_the_newest_profile_with_a_note() -> None:
    intent = compile_intent(make_spec(serverVersion="4.x"))
    assert intent.profile.name == "v4.3"
    assert [f.code for f in intent.findings if f.code.startswith("ServerVersion")] == [
        "ServerVersionUnpinned"
    ]
    pinned = compile_intent(make_spec(serverVersion="4.8"))
    assert not [f for f in pinned.findings if f.code.startswith("ServerVersion")]


def _covers(wide: Rule, narrow: Rule) -> bool:
    protocol = wide.protocol in {Protocol.ALL, narrow.protocol}
    if wide.ports is None:
        return protocol
    if narrow.ports is None:
        return False
    return (
        protocol and wide.ports.first <= narrow.ports.first <= narrow.ports.last <= wide.ports.last
    )


@pytest.mark.parametrize("version", ["3", "4.0", "4.3", "4.x"])
def test_every_rule_between_two_roles_has_its_other_half(version: str) -> None:
    """An egress that no ingress accepts (or the reverse) can never carry traffic: between two
    roles the product manages, every allow has its pair on the other side."""
    rules = compile_intent(make_spec(serverVersion=version)).rules
    allows = [r for r in rules if r.action is Action.ALLOW and r.peer.role is not None]
    for rule in allows:
        assert rule.peer.role is not None
        pair = Direction.INGRESS if rule.direction is Direction.EGRESS else Direction.EGRESS
        assert any(
            other.subject is rule.peer.role
            and other.direction is pair
            and other.peer.role is rule.subject
            and _covers(other, rule)
            for other in allows
        ), f"{version}: {sorted(rule.rows)} ({rule.subject} {rule.direction} {rule.peer.kind} "
        f"{rule.ports}) has no {pair} pair on {rule.peer.role}"


def test_v4_3_writes_no_ssh_to_the_vms() -> None:
    rules = compile_intent(make_spec(serverVersion="4.3")).rules
    assert not [
        r for r in rules
        if r.peer.kind is PeerKind.EXTERNAL_VMS and r.action is Action.ALLOW
        and r.ports is not None and r.ports.first <= 22 <= r.ports.last
    ]  # fmt: skip
    v4_0 = compile_intent(make_spec(serverVersion="4.0")).rules
    assert {"ALL-OUT-4", "V4-NOMAD-OUT-22"} <= {
        row for r in v4_0 if r.peer.kind is PeerKind.EXTERNAL_VMS for row in r.rows
    }


EXTERNAL_SERVERS = {"serverVersion": "4.8", "topology.nomadServers": {"cidrs": ["10.3.0.0/24"]}}


def test_external_nomad_servers_move_the_rows_that_concern_them() -> None:
    intent = compile_intent(make_spec(**EXTERNAL_SERVERS))
    servers = Peer(PeerKind.NOMAD_SERVERS, ("10.3.0.0/24",))
    nomad_in_1 = rules_with(intent.rules, "NOMAD-IN-1")
    assert [(r.subject, r.peer, r.ports) for r in nomad_in_1] == [
        (Role.NOMAD_CLIENTS, servers, PortRange(4647, 4647))
    ]
    # Through the servers' NLB, AWS rules name the servers by address (CHOICE-AWS-NOMAD-NLB);
    # GCP keeps the role (its tags).
    by_address = Peer(PeerKind.CIDRS, servers.cidrs)
    for rules, peer in ((intent.rules, by_address), (intent.cloud_rules("gcp"), servers)):
        assert [(r.subject, r.peer) for r in rules_with(rules, "NOMAD-OUT-3")] == [
            (Role.NOMAD_CLIENTS, peer)
        ]
        (drive,) = rules_with(rules, "V48-K8S-OUT-1")
        assert (drive.subject, drive.direction, drive.peer, drive.ports) == (
            Role.KUBERNETES_NODES, Direction.EGRESS, peer, PortRange(4646, 4648),
        )  # fmt: skip
    assert {"CHOICE-AWS-NOMAD-NLB"} <= rules_with(intent.rules, "NOMAD-OUT-3")[0].rows
    for gone in ("K8S-OUT-2", "LB-IN-4"):
        assert not rules_with(intent.rules, gone), gone
    assert {c.component.value for c in intent.cluster} == {"frontend"}  # no in-cluster Nomad


def test_in_cluster_nomad_servers_write_no_server_rows() -> None:
    intent = compile_intent(make_spec(serverVersion="4.8"))
    assert not [r for r in intent.rules if Role.NOMAD_SERVERS in (r.subject, r.peer.role)]
    assert rules_with(intent.rules, "K8S-OUT-2") and rules_with(intent.rules, "LB-IN-4")


def test_with_external_servers_every_role_to_role_allow_has_its_pair() -> None:
    rules = compile_intent(make_spec(**EXTERNAL_SERVERS)).cloud_rules("gcp")
    allows = [r for r in rules if r.action is Action.ALLOW and r.peer.role is not None]
    assert any(r.subject is Role.NOMAD_SERVERS for r in allows)
    for rule in allows:
        pair = Direction.INGRESS if rule.direction is Direction.EGRESS else Direction.EGRESS
        assert any(
            o.subject is rule.peer.role and o.direction is pair and o.peer.role is rule.subject
            and _covers(o, rule)
            for o in allows
        ), sorted(rule.rows)  # fmt: skip


def test_on_gcp_the_external_servers_admit_the_health_checks_of_their_load_balancer() -> None:
    intent = compile_intent(make_spec(**EXTERNAL_SERVERS))
    checks = [
        r for r in intent.cloud_rules("gcp")
        if r.subject is Role.NOMAD_SERVERS and r.peer.kind is PeerKind.HEALTH_CHECKS
    ]  # fmt: skip
    assert [(r.ports, r.peer.cidrs) for r in checks] == [
        (PortRange(4646, 4648), ("35.191.0.0/16", "130.211.0.0/22"))
    ]
    assert not [r for r in intent.rules if r.peer.kind is PeerKind.HEALTH_CHECKS]  # GCP only
