"""A GKE-like project: GKE's and the service controller's firewalls are left alone even with
unmanagedRules: Remove, and two installations with the same resource name in one project both
converge, each with its own rules (ownership by the mark, never by the name)."""

from __future__ import annotations

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
from builders import OWNER
from fakes.gcp_compute import FakeCompute
from server_hardening.model import ResourceRef, UnmanagedRules
from server_hardening.reconcile import run_target

NETWORK = "global/networks/circleci"
__all__ = ["fake", "recorder"]  # fixtures

GKE = [
    {"name": "gke-circleci-1a2b3c4d-all", "network": NETWORK, "sourceRanges": ["10.4.0.0/14"],
     "allowed": [{"IPProtocol": "tcp"}, {"IPProtocol": "udp"}, {"IPProtocol": "icmp"}],
     "targetTags": ["k8s-node"]},
    {"name": "gke-circleci-1a2b3c4d-master", "network": NETWORK, "sourceRanges": ["172.16.0.0/28"],
     "allowed": [{"IPProtocol": "tcp", "ports": ["443", "10250"]}], "targetTags": ["k8s-node"]},
    {"name": "gke-circleci-1a2b3c4d-ssh", "network": NETWORK, "sourceRanges": ["35.235.240.0/20"],
     "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}], "targetTags": ["k8s-node"]},
    {"name": "k8s-fw-a953ad6f802b345fe85f29d793a4e104", "network": NETWORK,
     "sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "tcp", "ports": ["443"]}],
     "targetTags": ["k8s-node"],
     "description": '{"kubernetes.io/service-name":"circleci-server/circleci-proxy"}'},
    {"name": "k8s-5f9d0e1c2b3a4d5e-node-hc", "network": NETWORK,
     "sourceRanges": ["130.211.0.0/22", "35.191.0.0/16"],
     "allowed": [{"IPProtocol": "tcp", "ports": ["10256"]}], "targetTags": ["k8s-node"]},
]  # fmt: skip


def test_with_remove_no_gke_or_service_controller_rule_is_deleted(
    fake: FakeCompute, recorder: Recorder
) -> None:
    for body in GKE:
        fake.seed(PROJECT, dict(body))
    target = make_target(gcp_spec(fake), recorder, unmanaged=UnmanagedRules.REMOVE)

    plan, result = reconcile(target, remove=True)

    left = fake.rules(PROJECT)
    assert {b["name"] for b in GKE} <= set(left)
    assert result.removed_unmanaged == 0 and result.errors == []
    reasons = {item.observed.native_id: item.reason for item in plan.leave}
    assert reasons["gke-circleci-1a2b3c4d-master"] == "owned by GKE"
    assert "service controller" in reasons["k8s-fw-a953ad6f802b345fe85f29d793a4e104"]
    assert "service controller" in reasons["k8s-5f9d0e1c2b3a4d5e-node-hc"]
    assert not plan.unmanaged


def test_two_installations_with_one_name_in_one_project_each_converge_with_their_own_rules(
    fake: FakeCompute, recorder: Recorder
) -> None:
    """Two clusters, each with circleci-server/circleci, share a project (their own networks'
    tags): with an installationId each, names and marks differ, and neither touches the other."""
    other_tags = {k: f"b-{v}" for k, v in TAGS.items()}
    first = make_target(gcp_spec(fake, **{"gcp.installationId": "blue"}), recorder, owner=OWNER)
    second_owner = ResourceRef(OWNER.namespace, OWNER.name, "uid-of-the-other-cluster")
    second = make_target(
        gcp_spec(fake, **{"gcp.installationId": "green", "gcp.targetTags": other_tags}),
        recorder,
        owner=second_owner,
    )

    reconcile(first)
    theirs_before = dict(fake.rules(PROJECT))
    report = run_target("gcp", lambda: second, gcp_spec(fake), 0, [])
    assert report.error is None and report.conflict_with == ""
    reconcile(first)

    rules = fake.rules(PROJECT)
    first_names = {d.key for d in first.policy.desired()}
    second_names = {d.key for d in second.policy.desired()}
    assert first_names.isdisjoint(second_names)
    assert first_names | second_names <= set(rules)
    for name in first_names:
        assert rules[name] == theirs_before[name], name  # the second wrote none of the first's
    for target in (first, second):
        again = run_target("gcp", lambda t=target: t, gcp_spec(fake), 1, [])
        assert again.plan is not None and again.plan.empty, target.owner


def test_the_same_name_in_another_cluster_without_an_installation_id_is_a_named_clash(
    fake: FakeCompute, recorder: Recorder
) -> None:
    """Without installation IDs both clusters' resources own the same names: the second sees the
    first's marks with another UID, names the clash, and overwrites nothing."""
    first = make_target(gcp_spec(fake), recorder, owner=OWNER)
    reconcile(first)
    before = dict(fake.rules(PROJECT))
    twin = ResourceRef(OWNER.namespace, OWNER.name, "uid-of-the-other-cluster")
    second = make_target(gcp_spec(fake), recorder, owner=twin)
    fake.reset_log()

    report = run_target("gcp", lambda: second, gcp_spec(fake), 0, [])

    assert "another cluster" in report.conflict_with and OWNER.uid in report.conflict_with
    assert [r.method for r in fake.log if r.method != "GET"] == []
    assert fake.rules(PROJECT) == before


def test_a_firewall_policy_that_overrides_a_guide_row_is_reported(
    fake: FakeCompute, recorder: Recorder
) -> None:
    """Hierarchical and network firewall policies are evaluated before the VPC rules: an allow
    there undoes the isolation denies. Observed through networks.getEffectiveFirewalls."""
    fake.seed_firewall_policy(
        PROJECT,
        "circleci",
        {
            "name": "org-baseline",
            "type": "HIERARCHY",
            "rules": [
                {"priority": 100, "direction": "INGRESS", "action": "allow",
                 "match": {"srcIpRanges": ["0.0.0.0/0"],
                           "layer4Configs": [{"ipProtocol": "tcp", "ports": ["22"]}]}},
                {"priority": 200, "direction": "INGRESS", "action": "allow",
                 "match": {"srcIpRanges": ["10.1.0.0/16"],
                           "layer4Configs": [{"ipProtocol": "tcp", "ports": ["4646"]}]}},
                {"priority": 300, "direction": "INGRESS", "action": "deny",
                 "match": {"srcIpRanges": ["0.0.0.0/0"], "layer4Configs": [{"ipProtocol": "all"}]}},
                {"priority": 2147483645, "direction": "INGRESS", "action": "goto_next",
                 "match": {"srcIpRanges": ["0.0.0.0/0"], "layer4Configs": [{"ipProtocol": "all"}]}},
            ],
        },
    )  # fmt: skip
    target = make_target(gcp_spec(fake), recorder)

    observation = target.observe()

    codes = [(f.code.value, f.message) for f in observation.findings]
    exposed = [m for c, m in codes if c == "WorldOpenSensitivePort"]
    assert len(exposed) == 1 and "hierarchy policy org-baseline rule 100" in exposed[0]
    overrides = [m for c, m in codes if c == "FirewallPolicyOverrides"]
    assert len(overrides) == 1 and "rule 200" in overrides[0] and "10.1.0.0/16" in overrides[0]
    assert "networks.getEffectiveFirewalls" in fake.calls()


def test_without_permission_for_policies_the_vpc_rules_are_still_enforced(
    fake: FakeCompute, recorder: Recorder
) -> None:
    fake.deny_permission("networks.getEffectiveFirewalls", "compute.networks.getEffectiveFirewalls")
    target = make_target(gcp_spec(fake), recorder)

    plan, result = reconcile(target)

    assert result.errors == [] and result.created == len(target.policy.desired())
    unseen = [f for f in plan.findings if f.code == "FirewallPolicyOverrides"]
    assert len(unseen) == 1 and "cannot be read" in unseen[0].message
    assert "compute.networks.getEffectiveFirewalls" in unseen[0].message
