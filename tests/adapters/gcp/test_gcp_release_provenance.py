"""Release keeps what was there before, on the GCP fake: a hand-made rule the operator adopted
is returned unmarked with the same content, only the rules it created are deleted
(``deletionPolicy: Delete``); ``Orphan`` keeps both."""

from __future__ import annotations

from typing import Any

from adapters.gcp.gcp_support import (
    PROJECT,
    Recorder,
    fake,
    gcp_spec,
    make_target,
    reconcile,
    recorder,
)
from builders import OWNER
from fakes.gcp_compute import FakeCompute
from server_hardening.ownership import (
    Provenance,
    description_owner,
    description_provenance,
    gcp_name_prefix,
)
from server_hardening.renderers.gcp import normalise_firewall
from server_hardening.targets.gcp import GcpTarget

__all__ = ["fake", "recorder"]  # fixtures

PREFIX = gcp_name_prefix(OWNER)


def _access(rule: dict[str, Any]) -> dict[str, Any]:
    """What a rule does: everything but its description."""
    out = normalise_firewall(rule, PROJECT)
    out.pop("description")
    return out


def _adopt_one_create_the_rest(
    fake: FakeCompute, recorder: Recorder
) -> tuple[GcpTarget, str, set[str]]:
    target = make_target(gcp_spec(fake), recorder)
    first = target.policy.desired()[0]
    fake.seed(PROJECT, {**dict(first.payload), "description": "made by hand"})
    _, result = reconcile(target)
    assert result.errors == [] and result.adopted == 1
    rules = fake.rules(PROJECT)
    created = {n for n in rules if n.startswith(PREFIX) and n != first.key}
    assert result.created == len(created) > 0
    assert description_provenance(rules[first.key]["description"]) is Provenance.ADOPTED
    assert {description_provenance(rules[n]["description"]) for n in created} == {
        Provenance.CREATED
    }
    return target, first.key, created


def test_delete_removes_only_what_the_operator_created(
    fake: FakeCompute, recorder: Recorder
) -> None:
    target, adopted, created = _adopt_one_create_the_rest(fake, recorder)
    access = _access(fake.rules(PROJECT)[adopted])

    result = target.release(target.observe(), delete=True)

    assert result.errors == [] and (result.deleted, result.updated) == (len(created), 1)
    rules = fake.rules(PROJECT)
    assert adopted in rules and not created & set(rules)
    kept = rules[adopted]
    assert _access(kept) == access
    assert description_owner(kept["description"]) == ""  # unmarked
    assert description_provenance(kept["description"]) is Provenance.UNKNOWN


def test_orphan_keeps_both_unmarked(fake: FakeCompute, recorder: Recorder) -> None:
    target, adopted, created = _adopt_one_create_the_rest(fake, recorder)

    result = target.release(target.observe(), delete=False)

    assert result.errors == [] and (result.deleted, result.updated) == (0, len(created) + 1)
    rules = fake.rules(PROJECT)
    assert {adopted, *created} <= set(rules)
    assert not any(description_owner(rules[n]["description"]) for n in (adopted, *created))
    assert {description_provenance(rules[n]["description"]) for n in created} == {
        Provenance.CREATED
    }
    assert description_provenance(rules[adopted]["description"]) is Provenance.UNKNOWN
    assert not any(i.owned for i in target.observe().items)
