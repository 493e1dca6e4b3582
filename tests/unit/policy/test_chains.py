"""Each target's chain, a table per check: what it flags, with which code, and what it lets by."""

from __future__ import annotations

from typing import Any

import pytest

from builders import GKE_POD_RANGE, OWNER, make_spec
from server_hardening.compiler import compile_intent
from server_hardening.model import parse_spec
from server_hardening.policy import aws as aws_policy
from server_hardening.policy import networkpolicy as np_policy
from server_hardening.renderers.aws import AtomicRule, render_security_groups
from server_hardening.renderers.networkpolicy import render_network_policies
from server_hardening.rules import Direction, FindingCode

NOMAD = "sg-0000000b"


def _rendered() -> Any:
    body: dict[str, Any] = make_spec().model_dump(by_alias=True, exclude_none=True)
    body["aws"] = {"region": "us-east-1", "securityGroups": {"nomadClients": NOMAD}}
    spec = parse_spec(body)
    return render_security_groups(compile_intent(spec).cloud_rules("aws"), spec.aws, OWNER)


@pytest.mark.parametrize(
    ("rule", "code", "check"),
    [
        (
            AtomicRule(NOMAD, Direction.INGRESS, "tcp", 4647, 4647, "cidr6", "::/0"),
            FindingCode.WORLD_OPEN_SENSITIVE_PORT,
            "opens 4647",
        ),
        (
            AtomicRule(NOMAD, Direction.INGRESS, "-1", None, None, "cidr4", "0.0.0.0/0"),
            FindingCode.WORLD_OPEN_SENSITIVE_PORT,
            "opens 22",
        ),
        (
            AtomicRule(NOMAD, Direction.EGRESS, "-1", None, None, "cidr4", "0.0.0.0/0"),
            FindingCode.UNMANAGED_WIDENING,
            "allows all egress",
        ),
        (
            AtomicRule(NOMAD, Direction.INGRESS, "tcp", 8080, 8080, "cidr4", "10.8.0.0/16"),
            FindingCode.UNMANAGED_WIDENING,
            "every rule widens access",
        ),
        (
            AtomicRule(NOMAD, Direction.INGRESS, "tcp", 22, 22, "group", "sg-0000000f"),
            FindingCode.UNMANAGED_WIDENING,
            "every rule widens access",
        ),
    ],
)
def test_aws_chain(rule: AtomicRule, code: FindingCode, check: str) -> None:
    finding = aws_policy.judge_rule(rule, "sgr-1", _rendered(), removing=True)
    assert finding is not None
    assert finding.code is code
    assert check in finding.message
    assert finding.message.endswith("it will be revoked (unmanagedRules: Remove)")


def _policy(ingress: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": "extra"}, "spec": {"podSelector": {}, "ingress": ingress}}


@pytest.mark.parametrize(
    ("ingress", "code", "check"),
    [
        ([{}], FindingCode.WORLD_OPEN_SENSITIVE_PORT, "opens 22 (SSH), 2376"),
        (
            [{"ports": [{"port": 4647}]}],
            FindingCode.WORLD_OPEN_SENSITIVE_PORT,
            "opens 4647",
        ),
        (
            [
                {
                    "from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                    "ports": [{"port": 4000, "endPort": 5000}],
                }
            ],
            FindingCode.WORLD_OPEN_SENSITIVE_PORT,
            "opens 4647",
        ),
        ([{"ports": [{"port": 8080}]}], FindingCode.UNMANAGED_WIDENING, "allows_every_source"),
        (
            [{"from": [{"namespaceSelector": {}}]}],
            FindingCode.UNMANAGED_WIDENING,
            "admits_other_namespaces",
        ),
        (
            [{"from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 8080}]}],
            FindingCode.UNMANAGED_WIDENING,
            "admits_addresses_beyond_the_guide",
        ),
        (
            [{"ports": [{"port": "nomad-rpc"}]}],
            FindingCode.UNMANAGED_WIDENING,
            "allows_every_source",
        ),
    ],
)
def test_networkpolicy_chain(ingress: list[dict[str, Any]], code: FindingCode, check: str) -> None:
    spec = make_spec()
    managed = render_network_policies(compile_intent(spec), OWNER.namespace, OWNER, {})
    view = np_policy.managed_view(managed, restrict_egress=False)
    finding = np_policy.judge_policy(_policy(ingress), view)
    assert finding is not None
    assert finding.code is code
    assert check in finding.message
    assert finding.target == "kubernetes"


def test_a_policy_within_the_namespace_is_not_flagged() -> None:
    spec = make_spec()
    managed = render_network_policies(compile_intent(spec), OWNER.namespace, OWNER, {})
    view = np_policy.managed_view(managed, restrict_egress=False)
    inside = _policy([{"from": [{"podSelector": {}}], "ports": [{"port": 22}]}])
    assert np_policy.judge_policy(inside, view) is None


def _gcp_rendered() -> Any:
    from server_hardening.renderers.gcp import render_firewalls

    body: dict[str, Any] = make_spec().model_dump(by_alias=True, exclude_none=True)
    body["topology"]["kubernetesPods"] = {"cidrs": [GKE_POD_RANGE]}
    body["gcp"] = {
        "project": "proj-12345",
        "network": "circleci",
        "targetTags": {"nomadClients": "nomad-client", "kubernetesNodes": "k8s-node"},
    }
    spec = parse_spec(body)
    return render_firewalls(compile_intent(spec).cloud_rules("gcp"), spec.gcp, OWNER)


@pytest.mark.parametrize(
    ("extra", "code", "check"),
    [
        (
            {"targetServiceAccounts": ["ci@p.iam.gserviceaccount.com"], "sourceRanges": ["0.0.0.0/0"],
             "allowed": [{"IPProtocol": "all"}]},
            FindingCode.WORLD_OPEN_SENSITIVE_PORT,
            "opens 22 (SSH)",
        ),
        (
            {"targetServiceAccounts": ["ci@p.iam.gserviceaccount.com"], "sourceRanges": ["10.9.0.0/16"],
             "allowed": [{"IPProtocol": "tcp", "ports": ["8080"]}]},
            FindingCode.UNMANAGED_WIDENING,
            "instances running as ci@p.iam.gserviceaccount.com",
        ),
        (
            {"targetTags": ["nomad-client"], "sourceServiceAccounts": ["jobs@p.iam.gserviceaccount.com"],
             "allowed": [{"IPProtocol": "tcp", "ports": ["4647"]}]},
            FindingCode.UNMANAGED_WIDENING,
            "from service account jobs@p.iam.gserviceaccount.com",
        ),
    ],
)  # fmt: skip
def test_gcp_chain_judges_rules_scoped_by_service_account(
    extra: dict[str, Any], code: FindingCode, check: str
) -> None:
    from server_hardening.policy.gcp import judge_firewall

    body = {"name": "sa-rule", "network": "global/networks/circleci", "priority": 1000,
            "direction": "INGRESS", **extra}  # fmt: skip
    finding = judge_firewall(body, _gcp_rendered())
    assert finding is not None
    assert finding.code is code
    assert check in finding.message


# -- coverage by the union of what is desired ------------------------------------------------
# Two desired /24s make up a /23: an unmanaged rule from that /23 on the same port widens
# nothing, on every target; one address more (a /22), or another port, does.


def _desired_aws(cidr: str) -> AtomicRule:
    return AtomicRule(NOMAD, Direction.INGRESS, "tcp", 4647, 4647, "cidr4", cidr)


@pytest.mark.parametrize(
    ("peer", "port", "covered"),
    [
        ("10.0.0.0/23", 4647, True),
        ("10.0.1.128/25", 4647, True),
        ("10.0.0.0/22", 4647, False),
        ("10.0.0.0/23", 4646, False),
    ],
)
def test_aws_coverage_is_the_union_of_the_desired_rules(
    peer: str, port: int, covered: bool
) -> None:
    desired = [_desired_aws("10.0.0.0/24"), _desired_aws("10.0.1.0/24")]
    rule = AtomicRule(NOMAD, Direction.INGRESS, "tcp", port, port, "cidr4", peer)
    assert aws_policy.covered_by_the_guide(rule, desired) is covered
    other_group = AtomicRule("sg-0000000c", Direction.INGRESS, "tcp", port, port, "cidr4", peer)
    assert aws_policy.covered_by_the_guide(other_group, desired) is False


@pytest.mark.parametrize(
    ("cidr", "port", "covered"),
    [("10.0.0.0/23", "4647", True), ("10.0.0.0/22", "4647", False), ("10.0.0.0/23", "4646", False)],
)
def test_networkpolicy_coverage_is_the_union_of_the_components_addresses(
    cidr: str, port: str, covered: bool
) -> None:
    view = np_policy.ManagedView(
        components=(({"app": "nomad"}, ("10.0.0.0/24", "10.0.1.0/24"), (("TCP", "4647"),)),),
        restrict_egress=False,
    )
    policy = {
        "podSelector": {"matchLabels": {"app": "nomad"}},
        "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}], "ports": [{"port": int(port)}]}],
    }
    found = np_policy.admits_addresses_beyond_the_guide("extra", policy, view)
    assert (found is None) is covered


@pytest.mark.parametrize(
    ("ranges", "port", "covered"),
    [(["10.0.0.0/23"], "4647", True), (["10.0.0.0/22"], "4647", False),
     (["10.0.0.0/23"], "4646", False)],
)  # fmt: skip
def test_gcp_coverage_is_the_union_of_a_rendered_rules_ranges(
    ranges: list[str], port: str, covered: bool
) -> None:
    from dataclasses import replace

    from server_hardening.policy.gcp import judge_firewall

    rendered = _gcp_rendered()
    [nomad_rpc] = [f for f in rendered.firewalls if f.get("targetTags") == ["nomad-client"]
                   and "10.0.0.0/16" in f.get("sourceRanges", [])  # the nodes, not their pods
                   and {"IPProtocol": "tcp", "ports": ["4647"]} in f.get("allowed", [])]  # fmt: skip
    widened = {**nomad_rpc, "sourceRanges": ["10.0.0.0/24", "10.0.1.0/24"]}
    rendered = replace(rendered, firewalls=[widened if f is nomad_rpc else f
                                            for f in rendered.firewalls])  # fmt: skip
    body = {"name": "team-rule", "network": "global/networks/circleci", "priority": 1000,
            "direction": "INGRESS", "targetTags": ["nomad-client"], "sourceRanges": ranges,
            "allowed": [{"IPProtocol": "tcp", "ports": [port]}]}  # fmt: skip
    assert (judge_firewall(body, rendered) is None) is covered


def test_an_nlb_rule_opening_the_nodeports_to_the_world_is_a_warning_naming_the_service() -> None:
    rendered = _rendered()
    nodes = rendered.group_ids[0]
    nlb = AtomicRule(nodes, Direction.INGRESS, "tcp", 30000, 32767, "cidr4", "0.0.0.0/0",
                     "kubernetes.io/rule/nlb/client=a1b2c3")  # fmt: skip
    node_ports = {31443: ("circleci-proxy", 443)}

    finding = aws_policy.judge_foreign_rule(
        nlb, "sgr-1", "kubernetes-cloud-provider", rendered, node_ports, (30000, 32767)
    )
    narrow = aws_policy.judge_foreign_rule(
        AtomicRule(nodes, Direction.INGRESS, "tcp", 30000, 32767, "cidr4", "203.0.113.0/24"),
        "sgr-2", "kubernetes-cloud-provider", rendered, node_ports, (30000, 32767),
    )  # fmt: skip

    assert finding is not None and finding.code is FindingCode.UNMANAGED_WIDENING
    assert "circleci-proxy port 443 (NodePort 31443)" in finding.message
    assert "loadBalancerSourceRanges" in finding.message
    assert narrow is None
