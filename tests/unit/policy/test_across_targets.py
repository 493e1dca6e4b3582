"""One situation, one verdict: the same unmanaged world-open SSH rule is the same finding code,
severity and metric on AWS, GCP and in a NetworkPolicy."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from builders import GKE_POD_RANGE, OWNER, make_spec
from server_hardening import metrics
from server_hardening.compiler import compile_intent
from server_hardening.model import parse_spec
from server_hardening.policy import networkpolicy as np_policy
from server_hardening.policy.aws import judge_rule
from server_hardening.policy.gcp import judge_firewall
from server_hardening.reconcile import Report, TargetReport
from server_hardening.renderers.aws import AtomicRule, render_security_groups
from server_hardening.renderers.gcp import render_firewalls
from server_hardening.renderers.networkpolicy import render_network_policies
from server_hardening.rules import Direction, Finding, FindingCode, Severity
from server_hardening.status import Phase

NODES, NOMAD, VMS = "sg-0000000a", "sg-0000000b", "sg-0000000c"
SSH_FROM_THE_WORLD = ("0.0.0.0/1", "128.0.0.0/1")  # the whole internet, in two halves


def _spec() -> Any:
    body: dict[str, Any] = make_spec().model_dump(by_alias=True, exclude_none=True)
    body["aws"] = {
        "region": "us-east-1",
        "securityGroups": {"kubernetesNodes": NODES, "nomadClients": NOMAD, "externalVMs": VMS},
    }
    body["topology"]["kubernetesPods"] = {"cidrs": [GKE_POD_RANGE]}
    body["gcp"] = {
        "project": "proj-12345",
        "network": "circleci",
        "targetTags": {"nomadClients": "nomad-client"},
    }
    return parse_spec(body)


def aws_verdict() -> Finding | None:
    spec = _spec()
    rendered = render_security_groups(compile_intent(spec).cloud_rules("aws"), spec.aws, OWNER)
    # AWS holds one CIDR per rule: the two halves are two rules, judged on their union.
    halves = [
        AtomicRule(NOMAD, Direction.INGRESS, "tcp", 22, 22, "cidr4", half)
        for half in SSH_FROM_THE_WORLD
    ]
    first, second = halves
    alone = judge_rule(first, "sgr-1", rendered, removing=False)
    assert alone is not None and alone.code is FindingCode.UNMANAGED_WIDENING  # half the world
    other_half = judge_rule(second, "sgr-2", rendered, removing=False, neighbours=[first])
    assert other_half is not None and other_half.code is FindingCode.WORLD_OPEN_SENSITIVE_PORT
    return judge_rule(first, "sgr-1", rendered, removing=False, neighbours=[second])


def gcp_verdict() -> Finding | None:
    spec = _spec()
    rendered = render_firewalls(compile_intent(spec).cloud_rules("gcp"), spec.gcp, OWNER)
    body = {
        "name": "debug-ssh",
        "network": "global/networks/circleci",
        "priority": 1000,
        "direction": "INGRESS",
        "sourceRanges": list(SSH_FROM_THE_WORLD),
        "targetTags": ["nomad-client"],
        "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
    }
    return judge_firewall(body, rendered)


def networkpolicy_verdict() -> Finding | None:
    spec = _spec()
    managed = render_network_policies(compile_intent(spec), OWNER.namespace, OWNER, {})
    view = np_policy.managed_view(managed, restrict_egress=False)
    policy = {
        "metadata": {"name": "debug-ssh"},
        "spec": {
            "podSelector": {},
            "ingress": [
                {
                    "from": [{"ipBlock": {"cidr": c}} for c in SSH_FROM_THE_WORLD],
                    "ports": [{"protocol": "TCP", "port": 22}],
                }
            ],
        },
    }
    return np_policy.judge_policy(policy, view)


VERDICTS = {"aws": aws_verdict, "gcp": gcp_verdict, "kubernetes": networkpolicy_verdict}


@pytest.mark.parametrize("target", sorted(VERDICTS))
def test_a_world_open_ssh_rule_is_world_open_sensitive_port(target: str) -> None:
    finding = VERDICTS[target]()
    assert finding is not None
    assert finding.code is FindingCode.WORLD_OPEN_SENSITIVE_PORT
    assert finding.severity is Severity.ERROR
    assert finding.row == "ALL-IN-1"
    assert finding.target == target


def test_every_target_gives_the_same_code_severity_row_and_metric() -> None:
    findings = {target: verdict() for target, verdict in VERDICTS.items()}
    assert len({(f.code, f.severity, f.row) for f in findings.values() if f}) == 1
    report = Report(
        ref=OWNER,
        generation=1,
        mode="Enforce",
        phase=Phase.DRIFTED,
        reason="UnmanagedWidening",
        message="",
        checked_at=dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        targets=[
            TargetReport(name=target, findings=[finding], observed=True)
            for target, finding in findings.items()
            if finding is not None
        ],
    )
    metrics.SNAPSHOTS.update(report.snapshot())
    try:
        for target in VERDICTS:
            value = metrics.REGISTRY.get_sample_value(
                "server_hardening_world_open_sensitive_ports",
                {"namespace": OWNER.namespace, "name": OWNER.name, "target": target},
            )
            assert value == 1.0, target
    finally:
        metrics.SNAPSHOTS.forget(OWNER.namespace, OWNER.name)
