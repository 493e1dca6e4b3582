"""EKS installations of CircleCI Server 4.8-4.10 as server-terraform and the install docs build
them (tests/reference/aws.py): after the operator's apply, with unmanagedRules Report and Remove,
every flow the installation needs is still allowed (evaluated the way AWS evaluates security
groups, over what the account holds), no rule a flow needs was removed, and the findings are the
ones a security engineer expects. After an uninstall every flow allowed before the operator
still is."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.aws.double import MotoDouble
from reference.aws import AwsReference, build_eks, observed_groups
from reference.flows import Flow
from reference.support import CloudTargets, apply, release
from server_hardening.model import DeletionPolicy, UnmanagedRules
from server_hardening.rules import FindingCode
from truth import aws_eval

VARIANTS = [
    pytest.param({"version": "4.8"}, id="4.8-three-client-groups"),
    pytest.param({"version": "4.8", "external_servers": False}, id="4.8-in-cluster-nomad"),
    pytest.param({"version": "4.9"}, id="4.9-one-client-group"),
    pytest.param({"version": "4.10", "podman": True}, id="4.10-podman"),
    pytest.param({"version": "4.10", "load_balancer": "ip"}, id="4.10-lbc-ip-targets"),
]


def _build(double: MotoDouble, **variant: Any) -> tuple[AwsReference, CloudTargets]:
    double.reset()
    reference = build_eks(double.client(), endpoint_url=double.url, **variant)
    return reference, CloudTargets(aws_client_factory=lambda _aws: double.client())


def _blocked(double: MotoDouble, reference: AwsReference) -> list[str]:
    groups = observed_groups(double.client(), reference)
    out = []
    for flow in reference.flows:
        src, dst = reference.hosts[flow.source], reference.hosts[flow.destination]
        verdict = aws_eval.verdict(groups, src, dst, flow.protocol, flow.port)
        assert verdict is not None, f"no security group decides {flow}"
        if not verdict:
            why = aws_eval.explain(groups, src, dst, flow.protocol, flow.port)
            out.append(f"{flow}: {why}")
    return out


def _rules(double: MotoDouble, reference: AwsReference) -> set[str]:
    out = double.client().describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": reference.group_ids}], MaxResults=1000
    )["SecurityGroupRules"]
    return {str(r["SecurityGroupRuleId"]) for r in out}


def test_every_flow_is_allowed_as_server_terraform_and_the_docs_leave_it(
    moto_double: MotoDouble,
) -> None:
    """The fixture itself: before the operator, every flow passes (else the fixture is wrong)."""
    for param in VARIANTS:
        reference, _ = _build(moto_double, **param.values[0])  # type: ignore[arg-type]
        assert reference.flows and _blocked(moto_double, reference) == [], param.id


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("unmanaged", [UnmanagedRules.REPORT, UnmanagedRules.REMOVE])
def test_after_apply_every_flow_is_still_allowed(
    moto_double: MotoDouble, variant: dict[str, Any], unmanaged: UnmanagedRules
) -> None:
    reference, factory = _build(moto_double, **variant)
    before = _rules(moto_double, reference)

    report = apply(reference.spec, factory, unmanaged)

    assert _blocked(moto_double, reference) == []
    after = _rules(moto_double, reference)
    if unmanaged is UnmanagedRules.REPORT:
        assert before <= after, "Report removed a rule"
    assert report.applied is not None
    # Converged: a second pass writes nothing.
    again = apply(reference.spec, factory, unmanaged)
    assert again.plan is not None and again.plan.empty, again.plan


def test_report_names_what_server_terraform_opens_wider_than_the_guide(
    moto_double: MotoDouble,
) -> None:
    """4.9's one client group: SSH from the world is the sensitive exposure; Nomad's 4646-4648
    from the whole VPC and every group's allow-all egress are wider than the guide; what is
    exactly the guide's (the EKS self-reference, the retry-SSH range, the VMs' 54782) is
    adopted; the cloud provider's NLB rules are its own and raise nothing."""
    reference, factory = _build(moto_double, version="4.9")
    retry, vpc_wide, ssh = reference.seeded["nomad"]
    servers_from_clients, servers_vpc_wide = reference.seeded["nomad-servers"]
    eks_self, *nlb_rules = reference.seeded["eks-cluster"]

    report = apply(reference.spec, factory, UnmanagedRules.REPORT)

    def ids(code: FindingCode) -> set[str]:
        return {f.message.split()[0] for f in report.findings if f.code is code}

    assert ids(FindingCode.WORLD_OPEN_SENSITIVE_PORT) == {ssh}
    widening = ids(FindingCode.UNMANAGED_WIDENING)
    assert {vpc_wide, servers_from_clients, servers_vpc_wide} <= widening
    egress_all = [f for f in report.findings if "allows all egress" in f.message]
    assert len(egress_all) == 4 and len(widening) == 7  # nodes, clients, servers, VMs
    adoptable = [f for f in report.findings if f.code is FindingCode.ADOPTABLE]
    assert {f.row for f in adoptable} == {"K8S-IN-2", "NOMAD-IN-2", "VM-IN-5"}
    assert {f.message.split()[0] for f in adoptable} >= {eks_self, retry}
    assert not [f for f in report.findings if any(r in f.message for r in nlb_rules)]
    assert report.applied is not None and report.applied.adopted == 3
    assert report.drift.unmanaged_widening == 8  # the 7 above and the world-open SSH


def test_remove_takes_away_only_what_no_flow_needs(moto_double: MotoDouble) -> None:
    reference, factory = _build(moto_double, version="4.10", podman=True)
    before = _rules(moto_double, reference)

    report = apply(reference.spec, factory, UnmanagedRules.REMOVE)

    assert report.applied is not None and report.applied.removed_unmanaged >= 2
    gone = before - _rules(moto_double, reference)
    nomad = set(reference.seeded["nomad"])
    # The world-open 22 and the VPC-wide 4646-4648 on the clients' group went; podman's
    # 32768-65535 stayed (adopted as NOMAD-IN-2 with runtime: podman).
    assert len(gone & nomad) == 2
    kept = nomad - gone
    (retry,) = kept
    kept_rule = moto_double.client().describe_security_group_rules(SecurityGroupRuleIds=[retry])[
        "SecurityGroupRules"
    ][0]
    assert (kept_rule["FromPort"], kept_rule["ToPort"]) == (32768, 65535)
    # The cloud provider's NLB rules and the EKS self-reference are never touched.
    assert not gone & set(reference.seeded["eks-cluster"])


UNINSTALL = [
    pytest.param(DeletionPolicy.DELETE, id="Delete"),
    pytest.param(DeletionPolicy.ORPHAN, id="Orphan"),
]


@pytest.mark.parametrize("policy", UNINSTALL)
def test_uninstall_keeps_every_flow_that_was_allowed_before_the_operator(
    moto_double: MotoDouble, policy: DeletionPolicy
) -> None:
    reference, factory = _build(moto_double, version="4.10")
    assert _blocked(moto_double, reference) == []
    apply(reference.spec, factory, UnmanagedRules.REPORT)

    result = release(reference.spec, factory, policy)

    assert result.errors == []
    assert _blocked(moto_double, reference) == []


def test_flows_cite_their_source(moto_double: MotoDouble) -> None:
    reference, _ = _build(moto_double, version="4.9")
    assert all(isinstance(f, Flow) and f.why for f in reference.flows)
    assert {f.source for f in reference.flows} | {f.destination for f in reference.flows} <= set(
        reference.hosts
    )
