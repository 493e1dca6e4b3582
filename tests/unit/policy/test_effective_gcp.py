"""Each instance as GCP really exposes it, without any SDK: every rule that targets it by any
means (none, a tag, a service account), by priority, under the firewall policies; the guide
verified on it. The rendered firewalls of examples/gcp-v3.yaml are the managed ones."""

from __future__ import annotations

from typing import Any

from builders import example
from server_hardening.compiler import compile_intent
from server_hardening.machines import GcpInstance, GcpMachines, GcpPolicyRule, GcpRoleMachines
from server_hardening.policy.gcp import GcpPolicy
from server_hardening.renderers.gcp import render_firewalls
from server_hardening.rules import FindingCode, Role
from server_hardening.verification import RowResult, Verdict, guide_checks, verify

REF, SPEC = example("gcp-v3")
assert SPEC.gcp is not None
INTENT = compile_intent(SPEC)
RENDERED = render_firewalls(INTENT.cloud_rules("gcp"), SPEC.gcp, REF)
NOMAD_SA = "nomad@circleci-prod-1234.iam.gserviceaccount.com"


def instances(role: Role, tag: str, base: str, *extra_tags: str) -> GcpRoleMachines:
    return GcpRoleMachines(
        role,
        tag,
        tuple(
            GcpInstance(
                f"{tag}-{i}",
                "us-east1-b",
                (tag, *extra_tags),
                (NOMAD_SA,) if role is Role.NOMAD_CLIENTS else (),
                (f"{base}.{10 + i}",),
            )
            for i in range(2)
        ),
    )


def machines(*extra: dict[str, Any], policy: tuple[GcpPolicyRule, ...] = ()) -> GcpMachines:
    return GcpMachines(
        roles=(
            instances(Role.KUBERNETES_NODES, "circleci-k8s", "10.128.0"),
            instances(Role.NOMAD_CLIENTS, "circleci-nomad", "10.132.0", "legacy-ssh"),
            instances(Role.EXTERNAL_VMS, "circleci-vm", "10.136.0"),
        ),
        firewalls=(*RENDERED.firewalls, *extra),
        policy_rules=policy,
    )


def rows(m: GcpMachines) -> tuple[list[RowResult], list[Any]]:
    effective = GcpPolicy(RENDERED, name_prefix="svh-").effective(m)
    checks = guide_checks(INTENT)
    return verify(checks, [effective]), effective.findings(checks)


def verdict(results: list[RowResult], row: str) -> Verdict:
    return next(r.verdict for r in results if r.row == row)


def evidence(results: list[RowResult], row: str) -> list[str]:
    return [
        d
        for r in results
        if r.row == row
        for c in r.checks
        if c.verdict is Verdict.VIOLATED
        for d in c.decided_by
    ]


def test_the_rendered_rules_alone_make_every_row_hold() -> None:
    results, findings = rows(machines())
    assert results and all(r.verdict is Verdict.HOLDS for r in results), [
        (r.row, c.check.describe(), c.decided_by)
        for r in results
        for c in r.checks
        if c.verdict is not Verdict.HOLDS
    ]
    assert not findings


def test_an_untargeted_world_open_ssh_rule_violates_all_in_1_on_every_role() -> None:
    rule = {"name": "allow-ssh-everywhere", "direction": "INGRESS", "priority": 1000,
            "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}], "sourceRanges": ["0.0.0.0/0"]}  # fmt: skip
    results, findings = rows(machines(rule))
    assert verdict(results, "ALL-IN-1") is Verdict.VIOLATED
    assert "allow-ssh-everywhere" in evidence(results, "ALL-IN-1")
    world = [f for f in findings if f.code is FindingCode.WORLD_OPEN_SENSITIVE_PORT]
    assert {f.message.split(" ")[0] for f in world} == {
        "kubernetesNodes",
        "nomadClients",
        "externalVMs",
    }


def test_a_rule_on_a_second_tag_a_nomad_instance_carries_applies_to_it() -> None:
    rule = {"name": "legacy-docker", "direction": "INGRESS", "priority": 1000, "targetTags": ["legacy-ssh"],
            "allowed": [{"IPProtocol": "tcp", "ports": ["4647"]}], "sourceRanges": ["0.0.0.0/0"]}  # fmt: skip
    results, findings = rows(machines(rule))
    assert verdict(results, "NOMAD-IN-1") is Verdict.VIOLATED
    assert "legacy-docker" in evidence(results, "NOMAD-IN-1")
    assert any(
        f.code is FindingCode.WORLD_OPEN_SENSITIVE_PORT and "circleci-nomad-0" in f.objects
        for f in findings
    )


def test_a_service_account_rule_applies_to_the_instances_running_as_it() -> None:
    rule = {"name": "sa-ssh", "direction": "INGRESS", "priority": 800, "targetServiceAccounts": [NOMAD_SA],
            "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}], "sourceRanges": ["0.0.0.0/0"]}  # fmt: skip
    results, _ = rows(machines(rule))
    assert verdict(results, "ALL-IN-1") is Verdict.VIOLATED
    violated = [
        c for r in results if r.row == "ALL-IN-1" for c in r.checks if c.verdict is Verdict.VIOLATED
    ]
    assert {c.check.destination.label for c in violated} == {"nomadClients"}


def test_a_firewall_policy_deny_of_egress_443_blocks_the_rows_that_need_it() -> None:
    deny = GcpPolicyRule(
        "org-egress-lockdown", 100, "EGRESS", "deny", ("0.0.0.0/0",), (("tcp", ("443",)),)
    )
    results, findings = rows(machines(policy=(deny,)))
    blocked = [r.row for r in results if r.verdict is Verdict.VIOLATED]
    assert blocked and all(
        "firewall policy org-egress-lockdown rule 100 (deny)" in evidence(results, row)
        for row in blocked
    )
    assert {f.row for f in findings if f.code is FindingCode.GUIDE_ROW_BLOCKED} == set(blocked)


def test_a_higher_priority_deny_of_ours_stops_an_unmanaged_allow() -> None:
    # The guide's isolation deny (priority 900) is above an allow at the default 1000.
    rule = {"name": "nomad-mesh", "direction": "INGRESS", "priority": 1000, "targetTags": ["circleci-nomad"],
            "allowed": [{"IPProtocol": "all"}], "sourceTags": ["circleci-nomad"]}  # fmt: skip
    results, _ = rows(machines(rule))
    assert verdict(results, "NOMAD-ISO-1") is Verdict.HOLDS


def test_a_network_policy_evaluated_after_the_vpc_rules_decides_only_what_none_matched() -> None:
    # AFTER_CLASSIC_FIREWALL (the default order): our VPC allows of 443 egress still decide.
    late_deny = GcpPolicyRule("net-policy", 100, "EGRESS", "deny", ("0.0.0.0/0",),
                              (("tcp", ("443",)),), policy_type="NETWORK", after_vpc_rules=True)  # fmt: skip
    results, _ = rows(machines(policy=(late_deny,)))
    assert all(r.verdict is Verdict.HOLDS for r in results)
    # Ingress to 22 from the world meets our priority-65000 deny floor, a VPC rule: a network
    # policy evaluated after the VPC rules never reaches it.
    late_allow = GcpPolicyRule("net-policy", 200, "INGRESS", "allow", ("0.0.0.0/0",),
                               (("tcp", ("22",)),), policy_type="NETWORK", after_vpc_rules=True)  # fmt: skip
    results, _ = rows(machines(policy=(late_allow,)))
    assert verdict(results, "ALL-IN-1") is Verdict.HOLDS
    # Evaluated before the VPC rules (BEFORE_CLASSIC_FIREWALL), the same allow decides.
    early_allow = GcpPolicyRule("net-policy", 200, "INGRESS", "allow", ("0.0.0.0/0",),
                                (("tcp", ("22",)),), policy_type="NETWORK")  # fmt: skip
    results, _ = rows(machines(policy=(early_allow,)))
    assert verdict(results, "ALL-IN-1") is Verdict.VIOLATED
    assert "firewall policy net-policy rule 200 (allow)" in evidence(results, "ALL-IN-1")


def test_a_rule_naming_one_instances_address_is_judged_for_it_not_its_neighbours() -> None:
    # Above the guide's isolation denies, SSH out to the clients' subnet, and in from one
    # Nomad client's address alone: that client reaches its neighbour.
    out = {"name": "ssh-out", "direction": "EGRESS", "priority": 800,
           "targetTags": ["circleci-nomad"], "destinationRanges": ["10.132.0.0/20"],
           "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]}  # fmt: skip
    rule = {"name": "from-one-client", "direction": "INGRESS", "priority": 800,
            "targetTags": ["circleci-nomad"], "sourceRanges": ["10.132.0.11/32"],
            "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]}  # fmt: skip
    results, _ = rows(machines(out, rule))
    assert verdict(results, "NOMAD-ISO-1") is Verdict.VIOLATED
    assert "from-one-client" in evidence(results, "NOMAD-ISO-1")
    (violated,) = [
        c
        for r in results
        if r.row == "NOMAD-ISO-1"
        for c in r.checks
        if c.verdict is Verdict.VIOLATED
    ]
    assert violated.machines == ("circleci-nomad-0",)  # the one reached (from nomad-1)


# GKE's own rule as GKE makes it on a default (auto-mode) network: 10.128.0.0/9, which holds the
# example's Nomad (10.132.0.0/20) and VM (10.136.0.0/20) subnets, to the nodes on every port.
GKE_VMS = {"name": "gke-circleci-1a2b3c4d-vms", "direction": "INGRESS", "priority": 1000,
           "targetTags": ["circleci-k8s"], "sourceRanges": ["10.128.0.0/9"],
           "allowed": [{"IPProtocol": "tcp", "ports": ["1-65535"]},
                       {"IPProtocol": "udp", "ports": ["1-65535"]}, {"IPProtocol": "icmp"}]}  # fmt: skip


def open_egress(*extra: dict[str, Any]) -> tuple[list[RowResult], list[Any], list[Any]]:
    """The example with spec.gcp.restrictEgress false: the rows, the findings with the guide's
    checks, and the findings without any check."""
    assert SPEC.gcp is not None
    spec = SPEC.model_copy(update={"gcp": SPEC.gcp.model_copy(update={"restrict_egress": False})})
    assert spec.gcp is not None
    intent = compile_intent(spec)
    rendered = render_firewalls(intent.cloud_rules("gcp"), spec.gcp, REF)
    found = GcpMachines(roles=machines().roles, firewalls=(*rendered.firewalls, *extra))
    checks = guide_checks(intent)
    effective = GcpPolicy(rendered, name_prefix="svh-").effective(found)
    results = verify(checks, [effective])
    return results, effective.findings(checks), effective.findings(())


def test_gkes_vms_rule_letting_nomad_and_vms_reach_the_nodes_is_found_on_every_unlisted_port() -> (
    None
):
    results, findings, unchecked = open_egress(GKE_VMS)

    assert all(r.verdict is Verdict.HOLDS for r in results)  # no check of the guide asks
    widening = {f.message.split(" lets ")[1].split(" ")[0]: f for f in findings
                if f.code is FindingCode.UNMANAGED_WIDENING}  # fmt: skip
    assert set(widening) == {"nomadClients", "externalVMs"}, [f.message for f in findings]
    nomad = widening["nomadClients"]
    assert nomad.message.startswith("firewall gke-circleci-1a2b3c4d-vms (GKE) lets nomadClients")
    # Every port but those the guide lets the clients send to the nodes: 80 and 443 (the
    # transparent load balancers' frontend), 3000, 4647 and 8585.
    assert "tcp 1-79, 81-442, 444-2999, 3001-4646, 4648-8584, 8586-65535; udp 1-65535" in (
        nomad.message
    )
    assert "restores it" in nomad.message and "priority below 1000" in nomad.message
    assert nomad.objects[:3] == ("gke-circleci-1a2b3c4d-vms", "circleci-k8s-0", "circleci-k8s-1")
    assert "tcp 1-79, 81-442, 444-65535; udp 1-65535" in widening["externalVMs"].message
    # Found whether or not a check of the guide covers a port.
    assert sorted(f.message for f in unchecked) == sorted(widening_[1].message for widening_ in
                                                          widening.items())  # fmt: skip


def test_the_same_rule_behind_the_nomad_and_vm_egress_floor_is_reported_as_shadowed() -> None:
    results, findings = rows(machines(GKE_VMS))

    assert all(r.verdict is Verdict.HOLDS for r in results)
    shadowed = [f for f in findings if f.code is FindingCode.UNMANAGED_RULE_SHADOWED]
    assert len(shadowed) == 2 and not [
        f for f in findings if f.code is FindingCode.UNMANAGED_WIDENING
    ]
    assert all("gke-circleci-1a2b3c4d-vms" in f.message for f in shadowed)
    assert any("eg-deny-all" in f.message and "nomadClients" in f.message for f in shadowed)


def test_a_users_rule_between_nomad_clients_and_vms_on_an_unlisted_port() -> None:
    rule = {"name": "debug-8080", "direction": "INGRESS", "priority": 1000,
            "targetTags": ["circleci-vm"], "sourceRanges": ["10.132.0.0/20"],
            "allowed": [{"IPProtocol": "tcp", "ports": ["8080", "2376"]}]}  # fmt: skip
    _, findings, _ = open_egress(rule)

    (found,) = [f for f in findings if f.code is FindingCode.UNMANAGED_WIDENING]
    assert found.message.startswith(
        "firewall debug-8080 lets nomadClients instances (circleci-nomad-0, circleci-nomad-1) "
        "reach externalVMs instances circleci-vm-0, circleci-vm-1 on tcp 8080, which no guide "
        "row lists"
    )  # 2376 from the Nomad clients is VM-IN-4's
    assert "narrow its sources (10.132.0.0/20) or ports, or remove it" in found.message


def test_a_rule_between_nomad_clients_is_reported_once_with_every_port() -> None:
    mesh = [
        {"name": "nomad-mesh-in", "direction": "INGRESS", "priority": 800,
         "targetTags": ["circleci-nomad"], "sourceTags": ["circleci-nomad"],
         "allowed": [{"IPProtocol": "tcp"}]},
        {"name": "nomad-mesh-out", "direction": "EGRESS", "priority": 800,
         "targetTags": ["circleci-nomad"], "destinationRanges": ["10.132.0.0/20"],
         "allowed": [{"IPProtocol": "tcp"}]},
    ]  # fmt: skip
    results, findings = rows(machines(*mesh))

    assert verdict(results, "NOMAD-ISO-1") is Verdict.VIOLATED
    about = [f for f in findings if "nomad-mesh-in" in f.message]
    assert len(about) == 1 and about[0].code is FindingCode.UNMANAGED_WIDENING
    assert about[0].row == "NOMAD-ISO-1" and "on tcp 1-65535" in about[0].message
