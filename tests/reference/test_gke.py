"""VPC-native GKE installations of CircleCI Server 4.8-4.10 as server-terraform, GKE and the docs
build them (tests/reference/gcp.py): after the operator's apply, with unmanagedRules Report and
Remove, every flow the installation needs is still allowed (evaluated the way GCP evaluates VPC
firewall rules, over what the project holds, pods as alias IPs), no rule a flow needs was
removed, and the findings are the ones a security engineer expects."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.gcp.gcp_support import anonymous
from fakes.gcp_compute import FakeCompute
from reference.gcp import PROJECT, GcpReference, build_gke
from reference.support import CloudTargets, apply, release
from server_hardening.model import DeletionPolicy, UnmanagedRules
from server_hardening.rules import FindingCode
from truth import gcp_eval

VARIANTS = [
    pytest.param({"version": "4.8"}, id="4.8"),
    pytest.param({"version": "4.9"}, id="4.9"),
    pytest.param({"version": "4.10", "podman": True}, id="4.10-podman"),
    pytest.param({"version": "4.10", "external_servers": False}, id="4.10-in-cluster-nomad"),
]


def _build(fake: FakeCompute, **variant: Any) -> tuple[GcpReference, CloudTargets]:
    # The installers' rules are set up through a bare client; the operator then meets the fake
    # as it is (operations that finish later, unasked refusals).
    with fake.answering_at_once():
        reference = build_gke(fake.url, **variant)
    return reference, CloudTargets(gcp_client_factory=anonymous)


def _blocked(fake: FakeCompute, reference: GcpReference) -> list[str]:
    rules = list(fake.rules(PROJECT).values())
    out = []
    for flow in reference.flows:
        src, dst = reference.endpoints[flow.source], reference.endpoints[flow.destination]
        if not gcp_eval.allowed(rules, src, dst, flow.protocol, flow.port):
            out.append(f"{flow}: {gcp_eval.explain(rules, src, dst, flow.protocol, flow.port)}")
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_flow_is_allowed_as_the_installers_leave_it(
    fake: FakeCompute, variant: dict[str, Any]
) -> None:
    reference, _ = _build(fake, **variant)
    assert reference.flows and _blocked(fake, reference) == []


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("unmanaged", [UnmanagedRules.REPORT, UnmanagedRules.REMOVE])
def test_after_apply_every_flow_is_still_allowed(
    fake: FakeCompute, variant: dict[str, Any], unmanaged: UnmanagedRules
) -> None:
    reference, factory = _build(fake, **variant)

    apply(reference.spec, factory, unmanaged)

    assert _blocked(fake, reference) == []
    left = set(fake.rules(PROJECT))
    gke = {name for name in reference.seeded if name.startswith(("gke-", "k8s-"))}
    assert gke <= left, "GKE's and the service controller's rules are never touched"
    if unmanaged is UnmanagedRules.REPORT:
        assert set(reference.seeded) <= left
    again = apply(reference.spec, factory, unmanaged)
    assert again.plan is not None and again.plan.empty, again.plan


def test_remove_deletes_server_terraforms_nomad_rule_only_with_the_health_checks_written(
    fake: FakeCompute,
) -> None:
    """server-terraform's 4646-4648 from the Nomad subnetwork and Google's health-check ranges
    is wider than the guide (every Nomad client reaches every other's API): Remove deletes it,
    and the clients' autohealing check still passes, through CHOICE-NOMAD-HEALTH-CHECKS."""
    reference, factory = _build(fake, version="4.10")

    report = apply(reference.spec, factory, UnmanagedRules.REMOVE)

    left = fake.rules(PROJECT)
    assert "cci-circleci-allow-traffic-nomad-clients" not in left
    (check,) = [
        f for f in left.values()
        if "CHOICE-NOMAD-HEALTH-CHECKS" in f.get("description", "")
        and f["targetTags"] == ["cci-circleci-nomad-clients"]
    ]  # fmt: skip
    assert sorted(check["sourceRanges"]) == ["130.211.0.0/22", "35.191.0.0/16"]
    assert check["allowed"] == [{"IPProtocol": "tcp", "ports": ["4646"]}]
    assert report.applied is not None and report.applied.removed_unmanaged >= 1


def test_report_names_what_the_installers_open_wider_than_the_guide(fake: FakeCompute) -> None:
    reference, factory = _build(fake, version="4.9")

    report = apply(reference.spec, factory, UnmanagedRules.REPORT)

    by_code: dict[FindingCode, set[str]] = {}
    for f in report.findings:
        words = f.message.split()
        by_code.setdefault(f.code, set()).add(words[1] if words[0] == "firewall" else words[0])
    # The Nomad traffic rules reach every client from every other client and the servers from
    # the whole subnetwork: wider than the guide. The retry-SSH range and SSH from IAP are
    # what the spec asks for (NOMAD-IN-2, adminSSH from IAP); GKE's and the service
    # controller's rules are theirs: none of them is reported.
    assert by_code.get(FindingCode.UNMANAGED_WIDENING) == {
        "cci-circleci-allow-traffic-nomad-clients",
        "cci-circleci-allow-nomad-client-traffic-nomad-servers",
    }, by_code
    assert FindingCode.WORLD_OPEN_SENSITIVE_PORT not in by_code, by_code
    assert report.drift.unmanaged_widening == 2


@pytest.mark.parametrize(
    "policy",
    [
        pytest.param(DeletionPolicy.DELETE, id="Delete"),
        pytest.param(DeletionPolicy.ORPHAN, id="Orphan"),
    ],
)
def test_uninstall_keeps_every_flow_that_was_allowed_before_the_operator(
    fake: FakeCompute, policy: DeletionPolicy
) -> None:
    reference, factory = _build(fake, version="4.10")
    apply(reference.spec, factory, UnmanagedRules.REPORT)

    result = release(reference.spec, factory, policy)

    assert result.errors == []
    assert _blocked(fake, reference) == []
    assert set(reference.seeded) <= set(fake.rules(PROJECT))


def test_without_the_pod_range_pods_on_different_nodes_are_cut_which_is_why_it_is_required(
    fake: FakeCompute,
) -> None:
    """The product refuses a restricting GCP spec without kubernetesPods; this is what it
    prevents: the egress floor blocks pod-to-pod traffic between nodes (alias IPs)."""
    reference, factory = _build(fake, version="4.10")
    spec = {**reference.spec, "topology": dict(reference.spec["topology"])}
    del spec["topology"]["kubernetesPods"]
    spec["gcp"] = {**spec["gcp"], "restrictEgress": False}
    apply(spec, factory, UnmanagedRules.REPORT)
    assert _blocked(fake, reference) == []  # without restrictEgress: GKE's -all rule admits pods

    from server_hardening.model import SpecError, parse_spec

    with pytest.raises(SpecError, match=r"spec\.topology\.kubernetesPods"):
        parse_spec({**spec, "gcp": {**spec["gcp"], "restrictEgress": True}})
