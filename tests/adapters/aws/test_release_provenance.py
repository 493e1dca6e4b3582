"""Release keeps what was there before, on moto: a hand-made rule the operator adopted is
returned unmarked with the same rule ID and access, only the rules it created are revoked
(``deletionPolicy: Delete``), and ``Orphan`` keeps both. A desired rule another controller
holds is left to it: ``HeldByOther``, no create, no drift."""

from __future__ import annotations

from typing import Any

from adapters.aws.world import World, run_pass
from server_hardening.live import actions
from server_hardening.ownership import OWNER_TAG, OWNER_UID_TAG, PROVENANCE_TAG
from server_hardening.renderers.aws import AtomicRule, parse_rule
from server_hardening.rules import Direction, FindingCode, Role
from server_hardening.targets.aws import AwsTarget

OUR_TAGS = {OWNER_TAG, OWNER_UID_TAG, PROVENANCE_TAG, "app.kubernetes.io/managed-by"}


def _by_id(world: World) -> dict[str, dict[str, Any]]:
    return {str(r["SecurityGroupRuleId"]): r for r in world.rules()}


def _tags(rule: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in rule.get("Tags", [])}


def _hand_made(world: World, atom: AtomicRule, description: str = "added by hand") -> str:
    perm: Any = atom.permission()
    for kind in ("IpRanges", "Ipv6Ranges", "UserIdGroupPairs", "PrefixListIds"):
        for entry in perm.get(kind, []):
            entry["Description"] = description
    authorize = (
        world.ec2.authorize_security_group_ingress
        if atom.direction is Direction.INGRESS
        else world.ec2.authorize_security_group_egress
    )
    out = authorize(GroupId=atom.group_id, IpPermissions=[perm])
    return str(out["SecurityGroupRules"][0]["SecurityGroupRuleId"])


def _one_guide_rule(world: World) -> AtomicRule:
    """The load balancers' inbound rule on the nodes (K8S-IN-1), as the guide renders it."""
    nodes = world.groups[Role.KUBERNETES_NODES]
    return next(
        a
        for a in world.guide_rendering().atoms
        if a.group_id == nodes and a.direction is Direction.INGRESS and "K8S-IN-1" in a.rows
    )


def _adopt_one_create_the_rest(world: World) -> tuple[AwsTarget, str, set[str]]:
    """A hand-made rule identical to one the guide wants, then an Enforce pass: that one is
    adopted, the rest created. Returns the target, the adopted rule's ID, the created IDs."""
    atom = _one_guide_rule(world)
    adopted = _hand_made(world, atom)
    before = set(_by_id(world))
    target = world.target(world.guide_rendering())
    report = run_pass(target)
    assert report.error is None and report.applied is not None
    assert report.applied.adopted == 1 and report.applied.created > 0
    rules = _by_id(world)
    assert _tags(rules[adopted])[PROVENANCE_TAG] == "adopted"
    created = {i for i, r in rules.items() if _tags(r).get(OWNER_TAG) and i != adopted}
    assert created and not created & before
    assert all(_tags(rules[i])[PROVENANCE_TAG] == "created" for i in created)
    return target, adopted, created


def test_delete_revokes_only_what_the_operator_created_and_returns_the_adopted_rule(
    world: World,
) -> None:
    target, adopted, created = _adopt_one_create_the_rest(world)
    access_before = parse_rule(_by_id(world)[adopted]).key()

    result = target.release(target.observe(), delete=True)

    assert result.errors == [] and (result.deleted, result.updated) == (len(created), 1)
    rules = _by_id(world)
    assert adopted in rules and not created & set(rules)
    assert parse_rule(rules[adopted]).key() == access_before  # the same access
    assert not OUR_TAGS & set(_tags(rules[adopted]))  # unmarked, as it was found


def test_orphan_keeps_both_unmarked_and_the_created_ones_remember_it(world: World) -> None:
    target, adopted, created = _adopt_one_create_the_rest(world)

    result = target.release(target.observe(), delete=False)

    assert result.errors == [] and (result.deleted, result.updated) == (0, len(created) + 1)
    rules = _by_id(world)
    assert {adopted, *created} <= set(rules)
    for rule_id in (adopted, *created):
        assert OWNER_TAG not in _tags(rules[rule_id]) and OWNER_UID_TAG not in _tags(rules[rule_id])
    assert PROVENANCE_TAG not in _tags(rules[adopted])
    assert {_tags(rules[i]).get(PROVENANCE_TAG) for i in created} == {"created"}

    # Adopted again by a resource re-created under the same name: the operator's creations are
    # still its creations, so a later Delete removes them and still returns the hand-made one.
    again = world.target(world.guide_rendering())
    report = run_pass(again)
    assert report.applied is not None and report.applied.adopted == len(created) + 1
    rules = _by_id(world)
    assert _tags(rules[adopted])[PROVENANCE_TAG] == "adopted"
    assert {_tags(rules[i])[PROVENANCE_TAG] for i in created} == {"created"}
    again.release(again.observe(), delete=True)
    assert set(_by_id(world)) & ({adopted} | created) == {adopted}


def test_marks_without_provenance_are_returned_never_revoked(world: World) -> None:
    """Rules an operator marked before provenance was recorded: nothing proves the operator
    created them, so Delete returns every rule of the target unmarked."""
    target, adopted, created = _adopt_one_create_the_rest(world)
    world.ec2.delete_tags(
        Resources=[adopted, *created], Tags=[{"Key": PROVENANCE_TAG}]
    )  # as an older operator left them

    result = target.release(target.observe(), delete=True)

    assert (result.deleted, result.updated) == (0, len(created) + 1)
    rules = _by_id(world)
    assert {adopted, *created} <= set(rules)
    assert not any(OWNER_TAG in _tags(rules[i]) for i in (adopted, *created))


LBC_DESCRIPTION = "elbv2.k8s.aws/targetGroupBinding=shared"


def test_a_rule_the_load_balancer_controller_holds_is_satisfied_not_missing(world: World) -> None:
    """The AWS Load Balancer Controller's rule, identical to K8S-IN-1: AWS refuses a duplicate,
    so the operator leaves it to its owner: HeldByOther (info), nothing created, no drift."""
    atom = _one_guide_rule(world)
    held = _hand_made(world, atom, LBC_DESCRIPTION)

    audit = run_pass(world.target(world.guide_rendering()), apply=False)
    assert audit.plan is not None
    assert atom.key() not in {d.key for d in audit.plan.create}
    lines = [a for a in actions(audit.plan, audit.findings, False) if a.id == held]
    assert [(a.action, a.reason) for a in lines] == [
        ("leave", f"held by the AWS Load Balancer Controller {held}")
    ]

    first = run_pass(world.target(world.guide_rendering()))
    assert first.error is None and first.applied is not None and first.applied.errors == []
    codes = {f.code for f in first.findings if atom.key() in f.message}
    assert codes == {FindingCode.HELD_BY_OTHER}
    rules = _by_id(world)
    assert rules[held].get("Tags", []) == []  # never marked, never changed
    assert rules[held]["Description"] == LBC_DESCRIPTION

    again = run_pass(world.target(world.guide_rendering()), previously_managed=first.managed_rules)
    assert again.plan is not None and again.plan.empty
    # No drift of its own: only the groups' default allow-all egress rules are reported.
    assert (again.drift.missing, again.drift.modified, again.drift.unexpected) == (0, 0, 0)
    assert held not in again.drifted["unmanaged_widening"]
