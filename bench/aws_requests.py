"""Request counts of the AWS adapter, by operation, against moto in server mode.

    .venv/bin/python bench/aws_requests.py

Scenarios, each on fresh groups (their default allow-all egress rule revoked first):

- converge: empty groups -> the desired rules (for reference);
- no-op: a reconcile with nothing to change;
- change: in every group one description changes, one inbound and one outbound rule go, one
  inbound and one outbound rule come.

for 4 groups x 50 rules (200) and 40 groups x 50 rules (2,000). Counts are taken at the HTTP
proxy in front of moto: what AWS would see and bill against the request-rate limits. moto's
DescribeSecurityGroupRules is patched to page by MaxResults as EC2 does (tests/adapters/aws/
double.py), so the page counts are the real ones.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "tests")]

from adapters.aws.double import MotoDouble  # noqa: E402
from adapters.aws.world import make_world, many_groups, reconcile  # noqa: E402
from server_hardening.renderers.aws import AtomicRule, RenderedSecurityGroups  # noqa: E402
from server_hardening.rules import Direction  # noqa: E402

OPERATIONS = [
    "DescribeSecurityGroupRules",
    "DescribeSecurityGroups",
    "AuthorizeSecurityGroupIngress",
    "AuthorizeSecurityGroupEgress",
    "ModifySecurityGroupRules",
    "RevokeSecurityGroupIngress",
    "RevokeSecurityGroupEgress",
]
SHORT = ["Describe Rules", "Describe Groups", "Auth In", "Auth Out", "Modify", "Revoke In",
         "Revoke Out"]  # fmt: skip


def changed(rendered: RenderedSecurityGroups) -> RenderedSecurityGroups:
    atoms: list[AtomicRule] = []
    for group in rendered.group_ids:
        mine = [a for a in rendered.atoms if a.group_id == group]
        ingress = [a for a in mine if a.direction is Direction.INGRESS]
        egress = [a for a in mine if a.direction is Direction.EGRESS]
        relabel, drop_in, drop_out = ingress[0], ingress[1], egress[0]
        for atom in mine:
            if atom in (drop_in, drop_out):
                continue
            if atom == relabel:
                atom = dataclasses.replace(  # noqa: PLW2901
                    atom,
                    description=atom.description.replace("BENCH-1", "BENCH-2"),
                    rows=("BENCH-2",),
                )
            atoms.append(atom)
        for direction, port in ((Direction.INGRESS, 20000), (Direction.EGRESS, 20001)):
            atoms.append(
                AtomicRule(
                    group,
                    direction,
                    "tcp",
                    port,
                    port,
                    "cidr4",
                    "192.0.2.0/24",
                    description=relabel.description,
                    rows=("BENCH-1",),
                )
            )
    return dataclasses.replace(rendered, atoms=tuple(sorted(atoms)))


def run(double: MotoDouble, groups: int, per_group: int) -> dict[str, Counter[str]]:
    world = make_world(double, keep_default_egress=False)
    rendered = many_groups(world.ec2, world.vpc, groups, per_group)
    # make_world's four role groups are empty and not in this rendering: only the bench
    # groups are observed and written.
    double.proxy.reset()
    out: dict[str, Counter[str]] = {}
    target = world.target(rendered)
    reconcile(target)
    out["converge"] = Counter(double.counts())
    double.proxy.reset()
    plan, result = reconcile(target)
    assert plan.empty
    assert result is None
    out["no-op"] = Counter(double.counts())
    double.proxy.reset()
    _, result = reconcile(world.target(changed(rendered)))
    assert result is not None
    assert result.errors == [], result.errors
    assert (result.created, result.updated, result.deleted) == (2 * groups, groups, 2 * groups)
    out["change"] = Counter(double.counts())
    return out


def main() -> None:
    double = MotoDouble()
    try:
        rows = []
        for groups, per_group in ((4, 50), (40, 50)):
            for scenario, counts in run(double, groups, per_group).items():
                rows.append((f"{groups} groups x {per_group} ({groups * per_group} rules)",
                             scenario, counts))  # fmt: skip
    finally:
        double.stop()
    header = ["installation", "pass", *SHORT, "total", "writes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, scenario, counts in rows:
        cells = [str(counts.get(op, 0)) for op in OPERATIONS]
        writes = sum(counts.get(op, 0) for op in OPERATIONS[2:])
        lines.append(
            "| "
            + " | ".join([label, scenario, *cells, str(sum(counts.values())), str(writes)])
            + " |"
        )
        extra = set(counts) - set(OPERATIONS)
        assert not extra, extra
    print("\n".join(lines))


if __name__ == "__main__":
    main()
