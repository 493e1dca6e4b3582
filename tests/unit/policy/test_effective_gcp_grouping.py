"""Machines answering a check together (signatures, then classes of signatures, and decisions
asked once) must answer it as each machine on its own: on randomized networks (tags, service
accounts and ranges that tell some machines of a role apart, priorities that tie, denies,
egress rules, firewall policies), every verdict, machine named and rule that decided it, and
every finding, equals a slow reference that gives each instance its own signature and decides
every pair afresh."""

from __future__ import annotations

import random
from typing import Any

import pytest

from server_hardening.machines import GcpInstance, GcpMachines, GcpPolicyRule, GcpRoleMachines
from server_hardening.policy.effective import GcpEffective, _GcpSignature
from server_hardening.policy.gcp import GcpPolicy
from server_hardening.rules import Direction, Role
from server_hardening.verification import Check, guide_checks, verify
from unit.policy.test_effective_gcp import GKE_VMS, INTENT, RENDERED

TAGS = {Role.KUBERNETES_NODES: "circleci-k8s", Role.NOMAD_CLIENTS: "circleci-nomad",
        Role.EXTERNAL_VMS: "circleci-vm"}  # fmt: skip
BASES = {Role.KUBERNETES_NODES: "10.128.0", Role.NOMAD_CLIENTS: "10.132.0",
         Role.EXTERNAL_VMS: "10.136.0"}  # fmt: skip
EXTRA_TAGS = ["a", "b", "c", "d"]
ACCOUNTS = ["sa-1@p", "sa-2@p"]
PORTS = ["22", "80", "443", "2376", "4647", "54782", "64535", "1-65535", "4000-5000"]
RANGES = ["10.128.0.0/28", "10.132.0.8/29", "10.136.0.0/25", "10.128.0.0/9", "192.0.2.0/24",
          "10.132.0.17/32", "0.0.0.0/0"]  # fmt: skip


class Reference(GcpEffective):
    """Each instance its own signature (its role's ranges kept), every pair decided anew."""

    asks_once = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signatures = {
            role: [
                _GcpSignature(role, sig.tags, sig.accounts, (instance,), sig.held)
                for sig in sigs
                for instance in sig.instances
            ]
            for role, sigs in self.signatures.items()
        }

    def _classes(
        self, signatures: Any, direction: Direction, check: Check
    ) -> list[list[_GcpSignature]]:
        return [[sig] for sig in signatures]


def _pick(rng: random.Random, pool: list[str], most: int = 2) -> list[str]:
    return rng.sample(pool, rng.randint(1, most))


def _firewall(rng: random.Random, n: int) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "name": f"extra-{n}",
        "priority": rng.choice([900, 1000, 1000, 1100]),
        "direction": rng.choice(["INGRESS", "INGRESS", "EGRESS"]),
        rng.choice(["allowed", "allowed", "denied"]): [
            {"IPProtocol": rng.choice(["tcp", "tcp", "all"]), "ports": _pick(rng, PORTS)}
        ],
    }
    target = rng.choice(["none", "tags", "tags", "accounts"])
    if target == "tags":
        rule["targetTags"] = _pick(rng, [*EXTRA_TAGS, *TAGS.values()])
    elif target == "accounts":
        rule["targetServiceAccounts"] = _pick(rng, ACCOUNTS, 1)
    if rule["direction"] == "EGRESS":
        rule["destinationRanges"] = _pick(rng, RANGES)
        return rule
    for source in rng.sample(["sourceRanges", "sourceTags", "sourceServiceAccounts"], 2):
        if rng.random() < 0.5:
            pool = {"sourceRanges": RANGES, "sourceTags": EXTRA_TAGS, "sourceServiceAccounts":
                    ACCOUNTS}[source]  # fmt: skip
            rule[source] = _pick(rng, pool)
    return rule


def _machines(seed: int) -> GcpMachines:
    rng = random.Random(seed)  # noqa: S311 - a reproducible fixture
    roles = []
    for role, tag in TAGS.items():
        instances = tuple(
            GcpInstance(
                f"{tag}-{i}",
                "us-east1-b",
                (tag, *sorted(set(rng.sample(EXTRA_TAGS, rng.randint(0, 1))))),
                tuple(rng.sample(ACCOUNTS, rng.randint(0, 1))),
                (f"{BASES[role]}.{rng.choice([3, 9, 12, 17, 40, 200])}",),
            )
            for i in range(rng.randint(1, 7))
        )
        roles.append(GcpRoleMachines(role, tag, instances))
    policy = tuple(
        GcpPolicyRule(
            "org",
            rng.randint(1, 50),
            rng.choice(["INGRESS", "EGRESS"]),
            rng.choice(["allow", "deny", "goto_next"]),
            tuple(_pick(rng, RANGES)),
            (("tcp", (rng.choice(PORTS),)),),
            target_service_accounts=tuple(rng.sample(ACCOUNTS, rng.randint(0, 1))),
            after_vpc_rules=rng.random() < 0.5,
        )
        for _ in range(rng.randint(0, 2))
    )
    firewalls = (*RENDERED.firewalls, GKE_VMS, *(_firewall(rng, n) for n in range(12)))
    return GcpMachines(roles=tuple(roles), firewalls=firewalls, policy_rules=policy)


def _answers(effective: GcpEffective) -> Any:
    checks = guide_checks(INTENT)
    results = [effective.evaluate(c) for c in checks]
    rows = [(r.row, r.verdict) for r in verify(checks, [effective])]
    findings = [(f.code, f.message, f.row, f.objects) for f in effective.findings(checks)]
    return [(r.allowed, r.machines, r.decided_by) for r in results], rows, findings


@pytest.mark.parametrize("seed", range(40))
def test_grouped_machines_answer_as_each_on_its_own(seed: int) -> None:
    machines = _machines(seed)
    policy = GcpPolicy(RENDERED, name_prefix="svh-")
    fast = policy.effective(machines)
    slow = Reference(machines, managed=fast.managed, guide=RENDERED.firewalls)
    assert _answers(fast) == _answers(slow)


def test_a_lone_instance_is_no_peer_of_itself_in_a_class() -> None:
    """Two lone Nomad clients that receive alike but send differently (a rule names one's tag
    as its source): each is judged only from the other, never from itself."""
    nomad = tuple(
        GcpInstance(f"nomad-{tag}", "us-east1-b", ("circleci-nomad", tag), (), (f"10.132.0.{n}",))
        for n, tag in ((10, "a"), (11, "b"))
    )
    by_a = {"name": "from-a", "direction": "INGRESS", "priority": 100,
            "targetTags": ["circleci-nomad"], "sourceTags": ["a"],
            "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]}  # fmt: skip
    out = {"name": "out", "direction": "EGRESS", "priority": 100, "destinationRanges":
           ["10.132.0.0/16"], "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]}  # fmt: skip
    machines = GcpMachines(
        roles=(GcpRoleMachines(Role.NOMAD_CLIENTS, "circleci-nomad", nomad),),
        firewalls=(*RENDERED.firewalls, by_a, out),
        policy_rules=(),
    )
    check = next(
        c
        for c in guide_checks(INTENT)
        if c.source.role is Role.NOMAD_CLIENTS is c.destination.role and c.port == 22
    )
    fast = GcpPolicy(RENDERED, name_prefix="svh-").effective(machines)
    slow = Reference(machines, managed=fast.managed, guide=RENDERED.firewalls)
    result = fast.evaluate(check)
    assert result.machines == ("nomad-b",)  # only b is reached: from a
    assert result == slow.evaluate(check)
