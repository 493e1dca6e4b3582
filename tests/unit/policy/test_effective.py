"""Each machine as AWS really exposes it, without any SDK: the union of every group on an
interface, the subnets' ACLs (ordered, stateless, only across subnets), group references."""

from __future__ import annotations

from server_hardening.machines import (
    AwsInterface,
    AwsMachines,
    AwsRoleMachines,
    NaclEntry,
    NetworkAcl,
)
from server_hardening.policy.effective import AwsEffective
from server_hardening.renderers.aws import AtomicRule
from server_hardening.rules import Direction, FindingCode, Role
from server_hardening.verification import Check, Endpoint, Verdict

NODES, NOMAD, SSH, OTHER = "sg-0000000a", "sg-0000000b", "sg-0000000c", "sg-0000000d"
WORLD = Endpoint("the internet", None, ("0.0.0.0/0",))
NODES_EP = Endpoint("kubernetesNodes", Role.KUBERNETES_NODES)
NOMAD_EP = Endpoint("nomadClients", Role.NOMAD_CLIENTS)


def rule(
    group: str, direction: Direction, port: int | None, peer: str, kind: str = "cidr4"
) -> AtomicRule:
    protocol = "-1" if port is None else "tcp"
    return AtomicRule(group, direction, protocol, port, port, kind, peer)


def interface(name: str, ip: str, subnet: str, *groups: str) -> AwsInterface:
    return AwsInterface(f"eni-{name}", f"i-{name}", subnet, (ip,), groups)


def machines(
    nomad_groups: tuple[str, ...] = (NOMAD,),
    rules: dict[str, tuple[AtomicRule, ...]] | None = None,
    acls: dict[str, NetworkAcl] | None = None,
) -> AwsMachines:
    base = {
        NODES: (rule(NODES, Direction.EGRESS, 4647, NOMAD, "group"),),
        NOMAD: (rule(NOMAD, Direction.INGRESS, 4647, NODES, "group"),),
    }
    return AwsMachines(
        roles=(
            AwsRoleMachines(
                Role.KUBERNETES_NODES, (interface("n1", "10.0.0.10", "subnet-n", NODES),), NODES
            ),
            AwsRoleMachines(
                Role.NOMAD_CLIENTS,
                (
                    interface("c1", "10.0.16.10", "subnet-c", *nomad_groups),
                    interface("c2", "10.0.16.11", "subnet-c", *nomad_groups),
                ),
                NOMAD,
            ),
        ),
        group_rules={**base, **(rules or {})},
        group_names={SSH: "circleci-nomad_ssh"},
        subnet_acls=acls or {},
    )


def effective(m: AwsMachines) -> AwsEffective:
    return AwsEffective(m, managed_groups=(NODES, NOMAD))


def test_the_guide_row_holds_through_group_references_and_isolation_holds_by_omission() -> None:
    view = effective(machines())
    nomad_in = view.evaluate(Check("NOMAD-IN-1", NODES_EP, NOMAD_EP, "tcp", 4647, True))
    isolation = view.evaluate(Check("NOMAD-ISO-1", NOMAD_EP, NOMAD_EP, "tcp", 4647, False))
    assert nomad_in.verdict is Verdict.HOLDS
    assert set(nomad_in.machines) == {"i-c1", "i-c2"}
    assert isolation.verdict is Verdict.HOLDS


def test_a_second_group_that_opens_ssh_to_half_the_internet_each_opens_it_to_all() -> None:
    halves = {
        SSH: (rule(SSH, Direction.INGRESS, 22, "0.0.0.0/1"),),
        OTHER: (rule(OTHER, Direction.INGRESS, 22, "128.0.0.0/1"),),
    }
    view = effective(machines((NOMAD, SSH, OTHER), rules=halves))

    ssh = view.evaluate(Check("ALL-IN-1", WORLD, NOMAD_EP, "tcp", 22, False))
    findings = [f for f in view.findings() if f.code is FindingCode.WORLD_OPEN_SENSITIVE_PORT]

    assert ssh.verdict is Verdict.VIOLATED
    assert any(SSH in d for d in ssh.decided_by) and any(OTHER in d for d in ssh.decided_by)
    assert len(findings) == 1 and findings[0].row == "ALL-IN-1"
    assert (
        set(findings[0].objects) == {"i-c1", "i-c2"} and "circleci-nomad_ssh" in findings[0].message
    )


def test_one_half_of_the_internet_is_not_the_internet() -> None:
    view = effective(
        machines((NOMAD, SSH), rules={SSH: (rule(SSH, Direction.INGRESS, 22, "0.0.0.0/1"),)})
    )
    assert (
        view.evaluate(Check("ALL-IN-1", WORLD, NOMAD_EP, "tcp", 22, False)).verdict is Verdict.HOLDS
    )
    assert not [f for f in view.findings() if f.code is FindingCode.WORLD_OPEN_SENSITIVE_PORT]


def test_an_all_from_self_rule_on_a_second_group_breaks_isolation_between_the_clients() -> None:
    traffic = {
        OTHER: (
            rule(OTHER, Direction.INGRESS, None, "10.0.0.0/16"),
            rule(OTHER, Direction.EGRESS, None, "0.0.0.0/0"),
        )
    }
    view = effective(machines((NOMAD, OTHER), rules=traffic))
    isolation = view.evaluate(Check("NOMAD-ISO-1", NOMAD_EP, NOMAD_EP, "tcp", 4647, False))
    assert isolation.verdict is Verdict.VIOLATED
    widening = [f for f in view.findings() if f.code is FindingCode.UNMANAGED_WIDENING]
    assert widening and OTHER in widening[0].message


def acl(*entries: NaclEntry) -> NetworkAcl:
    return NetworkAcl("acl-1", ("subnet-c",), entries)


def entry(number: int, egress: bool, allow: bool, cidr: str, port: int | None = None) -> NaclEntry:
    return NaclEntry(number, egress, "6" if port else "-1", port, port, cidr, allow)


def test_an_acl_deny_before_the_allow_blocks_the_row_and_names_the_entry() -> None:
    acls = {
        "subnet-c": acl(
            entry(90, False, False, "10.0.0.0/20", 4647),
            entry(100, False, True, "0.0.0.0/0"),
            entry(100, True, True, "0.0.0.0/0"),
        )
    }
    view = effective(machines(acls=acls))
    check = Check("NOMAD-IN-1", NODES_EP, NOMAD_EP, "tcp", 4647, True)

    result = view.evaluate(check)
    blocked = [f for f in view.findings([check]) if f.code is FindingCode.GUIDE_ROW_BLOCKED]

    assert result.verdict is Verdict.VIOLATED
    assert result.decided_by == ("acl-1 inbound entry 90 (deny 10.0.0.0/20)",)
    assert blocked and blocked[0].row == "NOMAD-IN-1"


def test_the_allow_before_the_deny_wins_and_acls_do_not_apply_inside_a_subnet() -> None:
    acls = {
        "subnet-c": acl(
            entry(80, False, True, "0.0.0.0/0"),
            entry(90, False, False, "10.0.0.0/20", 4647),
            entry(100, True, True, "0.0.0.0/0"),
        )
    }
    view = effective(machines(acls=acls))
    assert (
        view.evaluate(Check("NOMAD-IN-1", NODES_EP, NOMAD_EP, "tcp", 4647, True)).verdict
        is Verdict.HOLDS
    )
    # Inside the clients' subnet an ACL that denies everything changes nothing.
    closed = {"subnet-c": acl()}
    traffic = {
        OTHER: (
            rule(OTHER, Direction.INGRESS, None, "10.0.16.0/20"),
            rule(OTHER, Direction.EGRESS, None, "0.0.0.0/0"),
        )
    }
    inside = effective(machines((NOMAD, OTHER), rules=traffic, acls=closed))
    assert (
        inside.evaluate(Check("NOMAD-ISO-1", NOMAD_EP, NOMAD_EP, "tcp", 4647, False)).verdict
        is Verdict.VIOLATED
    )


def test_a_stateless_acl_that_lets_no_reply_out_blocks_the_flow() -> None:
    acls = {"subnet-c": acl(entry(100, False, True, "0.0.0.0/0"))}  # inbound only: no egress entry
    view = effective(machines(acls=acls))
    result = view.evaluate(Check("NOMAD-IN-1", NODES_EP, NOMAD_EP, "tcp", 4647, True))
    assert result.verdict is Verdict.VIOLATED and "outbound" in result.decided_by[0]


def test_a_role_without_machines_is_unknown_not_holding() -> None:
    empty = AwsMachines(roles=(AwsRoleMachines(Role.NOMAD_CLIENTS, (), NOMAD),))
    result = AwsEffective(empty, managed_groups=(NOMAD,)).evaluate(
        Check("ALL-IN-1", WORLD, NOMAD_EP, "tcp", 22, False)
    )
    assert result.verdict is Verdict.UNKNOWN


def test_a_rule_naming_one_machines_address_is_judged_for_that_machine_not_its_neighbours() -> None:
    # c1 and c2 carry the same groups in the same subnet; a second group admits SSH from c2's
    # address alone: c2 reaches c1, so the isolation between the clients is broken.
    one_machine = {
        OTHER: (
            rule(OTHER, Direction.INGRESS, 22, "10.0.16.11/32"),
            rule(OTHER, Direction.EGRESS, None, "0.0.0.0/0"),
        )
    }
    view = effective(machines((NOMAD, OTHER), rules=one_machine))

    isolation = view.evaluate(Check("NOMAD-ISO-1", NOMAD_EP, NOMAD_EP, "tcp", 22, False))

    assert isolation.verdict is Verdict.VIOLATED
    assert isolation.machines == ("i-c1",)  # the one reached (from c2)
    assert any(OTHER in d and "10.0.16.11/32" in d for d in isolation.decided_by)
    # The machines without such a rule stay together: one evaluation for both.
    assert [s.machines for s in effective(machines()).signatures[Role.NOMAD_CLIENTS]] == [
        ("i-c1", "i-c2")
    ]
