"""GCP machine discovery (``GcpTarget.observe_machines``) on the fake, through the real clients:
the instances of each role on the network, the VPC rules the same pass listed, the firewall-policy
rules around them in evaluation order; bad input named by its field; nothing written."""

from __future__ import annotations

import pytest

from adapters.gcp.gcp_support import (
    PROJECT,
    TAGS,
    Recorder,
    fake,
    gcp_spec,
    make_target,
    reconcile,
    recorder,
)
from fakes.gcp_compute import FakeCompute
from server_hardening.rules import Role
from server_hardening.targets.base import PermanentTargetError

__all__ = ["fake", "recorder"]  # fixtures

NOMAD_SA = f"nomad@{PROJECT}.iam.gserviceaccount.com"
ALLOW_22 = {
    "sourceRanges": ["0.0.0.0/0"],
    "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
}


def _seed_installation(fake: FakeCompute) -> None:
    for i in range(3):
        fake.seed_instance(
            PROJECT, f"nomad-{i}", zone=("us-east1-b", "us-east1-c")[i % 2],
            tags=[TAGS["nomadClients"], "team-debug"], service_accounts=[NOMAD_SA],
        )  # fmt: skip
    fake.seed_instance(
        PROJECT, "gke-node-0", tags=[TAGS["kubernetesNodes"], "gke-cluster-abc"],
        ip="10.0.0.5", alias_ranges=["10.4.0.0/24"],
    )  # fmt: skip
    fake.seed_instance(PROJECT, "vm-1", tags=[TAGS["externalVMs"]])
    # Tagged alike, but in another VPC of the project: not this installation's machine.
    fake.seed_instance(PROJECT, "nomad-elsewhere", network="other", tags=[TAGS["nomadClients"]])
    fake.seed(PROJECT, {"name": "debug-ssh", "network": "global/networks/circleci",
                        "targetTags": ["team-debug"], **ALLOW_22})  # fmt: skip
    fake.seed(PROJECT, {"name": "by-sa", "network": "global/networks/circleci",
                        "targetServiceAccounts": [NOMAD_SA], **ALLOW_22})  # fmt: skip
    egress_443 = {
        "direction": "EGRESS",
        "match": {"destIpRanges": ["0.0.0.0/0"],
                  "layer4Configs": [{"ipProtocol": "tcp", "ports": ["443"]}]},
    }  # fmt: skip
    fake.seed_firewall_policy(
        PROJECT, "circleci",
        {"name": "net", "type": "NETWORK", "rules": [
            {**egress_443, "priority": 20, "action": "deny",
             "targetServiceAccounts": [NOMAD_SA]},
        ]},
    )  # fmt: skip
    fake.seed_firewall_policy(
        PROJECT, "circleci",
        {"name": "4821", "shortName": "org-baseline", "type": "HIERARCHY", "rules": [
            {**egress_443, "priority": 900, "action": "goto_next"},
            {**egress_443, "priority": 10, "action": "allow",
             "targetSecureTags": [{"name": "tagValues/77", "state": "EFFECTIVE"}],
             "match": {**egress_443["match"],
                       "srcSecureTags": [{"name": "tagValues/8", "state": "EFFECTIVE"}]}},
        ]},
    )  # fmt: skip


def test_finds_each_roles_instances_and_reuses_the_passes_reads(
    fake: FakeCompute, recorder: Recorder
) -> None:
    _seed_installation(fake)
    target = make_target(gcp_spec(fake), recorder)
    target.observe()
    fake.reset_log()

    machines = target.observe_machines()

    by_role = {r.role: r for r in machines.roles}
    nomad = by_role[Role.NOMAD_CLIENTS]
    assert nomad.target_tag == TAGS["nomadClients"]
    assert [(i.zone, i.name) for i in nomad.instances] == [
        ("us-east1-b", "nomad-0"), ("us-east1-b", "nomad-2"), ("us-east1-c", "nomad-1"),
    ]  # fmt: skip
    assert nomad.instances[0].network_tags == (TAGS["nomadClients"], "team-debug")
    assert nomad.instances[0].service_accounts == (NOMAD_SA,)
    (node,) = by_role[Role.KUBERNETES_NODES].instances
    assert node.network_ips == ("10.0.0.5", "10.4.0.0/24")  # primary IP, then alias ranges
    assert [i.name for i in by_role[Role.EXTERNAL_VMS].instances] == ["vm-1"]
    assert machines.findings == ()

    names = {str(f["name"]) for f in machines.firewalls}
    assert {"debug-ssh", "by-sa"} <= names
    # The rules and policies came from the pass's observe: not read twice.
    assert sorted(fake.calls()) == ["instances.aggregatedList"] * 3 + ["networks.get"]
    listed = [r.query["filter"] for r in fake.log if r.operation == "instances.aggregatedList"]
    assert set(listed) == {f'tags.items = "{tag}"' for tag in TAGS.values()}
    assert fake.writes() == []

    rules = [(r.policy, r.priority, r.action, r.after_vpc_rules) for r in machines.policy_rules]
    assert rules == [
        ("org-baseline", 10, "allow", False),
        ("org-baseline", 900, "goto_next", False),
        ("net", 20, "deny", True),  # the network's policy: after the VPC rules by default
    ]
    first, _, deny = machines.policy_rules
    assert first.target_secure_tags == ("tagValues/77",)
    assert first.source_secure_tags == ("tagValues/8",)
    assert deny.direction == "EGRESS" and deny.ranges == ("0.0.0.0/0",)
    assert deny.layer4 == (("tcp", ("443",)),) and deny.target_service_accounts == (NOMAD_SA,)


def test_without_an_observe_it_reads_the_network_once_itself(
    fake: FakeCompute, recorder: Recorder
) -> None:
    _seed_installation(fake)
    fake.add_network(PROJECT, "circleci", enforcement_order="BEFORE_CLASSIC_FIREWALL")
    target = make_target(gcp_spec(fake), recorder)
    fake.reset_log()
    machines = target.observe_machines()
    assert sorted(set(fake.calls())) == [
        "firewalls.list", "instances.aggregatedList", "networks.get",
        "networks.getEffectiveFirewalls",
    ]  # fmt: skip
    assert fake.calls("firewalls.list") == ["firewalls.list"]
    assert [r.after_vpc_rules for r in machines.policy_rules] == [False, False, False]


def test_instances_are_paged(fake: FakeCompute, recorder: Recorder) -> None:
    for i in range(501):
        fake.seed_instance(PROJECT, f"nomad-{i:03d}", tags=[TAGS["nomadClients"]])
    target = make_target(gcp_spec(fake), recorder)
    machines = target.observe_machines()
    (nomad,) = [r for r in machines.roles if r.role is Role.NOMAD_CLIENTS]
    assert len(nomad.instances) == 501
    assert recorder.count("instances.aggregatedList", "ok") == 2 + 2  # nomad: 2 pages; 2 roles


def test_a_role_tag_matching_no_instance_is_a_finding_naming_its_field(
    fake: FakeCompute, recorder: Recorder
) -> None:
    fake.seed_instance(PROJECT, "node-0", tags=[TAGS["kubernetesNodes"]])
    fake.seed_instance(PROJECT, "nomad-0", network="other", tags=[TAGS["nomadClients"]])
    machines = make_target(gcp_spec(fake), recorder).observe_machines()
    fields = sorted(f.message.split(":", 1)[0] for f in machines.findings)
    assert fields == ["spec.gcp.targetTags.externalVMs", "spec.gcp.targetTags.nomadClients"]
    assert {f.code for f in machines.findings} == {"MachineSelectorUnmatched"}
    assert all("nomad-client" in f.message or "circleci-vm" in f.message for f in machines.findings)


def test_a_network_the_project_does_not_have_is_an_error_naming_the_field(
    fake: FakeCompute, recorder: Recorder
) -> None:
    target = make_target(gcp_spec(fake, network="nowhere"), recorder)
    with pytest.raises(PermanentTargetError, match=r"spec\.gcp\.network: .*'nowhere'"):
        target.observe()
    with pytest.raises(PermanentTargetError, match=r"spec\.gcp\.network"):
        target.observe_machines()
    assert fake.writes() == []


def test_after_the_pass_wrote_the_machines_see_the_rules_as_written(
    fake: FakeCompute, recorder: Recorder
) -> None:
    _seed_installation(fake)
    target = make_target(gcp_spec(fake), recorder)
    reconcile(target)  # observe, then every rule of ours created
    fake.reset_log()
    machines = target.observe_machines()
    assert "firewalls.list" in fake.calls()  # listed again: the pass changed the network
    names = {str(f["name"]) for f in machines.firewalls}
    assert {d.key for d in target.policy.desired()} <= names


def test_the_pipeline_examines_the_machines_it_found(fake: FakeCompute, recorder: Recorder) -> None:
    """What discovery feeds ``policy.effective`` on the fake: a rule on a second tag the Nomad
    clients carry and a service-account rule each open 22 to the world on them."""
    from server_hardening.compiler import compile_intent
    from server_hardening.reconcile import examine_machines

    _seed_installation(fake)
    spec = gcp_spec(fake)
    target = make_target(spec, recorder)
    reconcile(target)
    fake.reset_log()
    examined = examine_machines(target, compile_intent(spec))
    assert fake.writes() == []  # read-only
    assert examined is not None
    findings, rows = examined
    (world,) = [f for f in findings if f.code == "WorldOpenSensitivePort"]
    assert "nomad-0" in world.message and "by-sa" in world.message
    assert "debug-ssh" in world.message
    assert {r.row: r.verdict for r in rows}["ALL-IN-1"] == "violated"
