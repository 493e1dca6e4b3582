"""Provenance in the marks and what release does with it: only what the operator created is
ever removed, and only where nothing of unknown origin could be left without it."""

from __future__ import annotations

import pytest

from builders import OWNER
from server_hardening.ownership import (
    PROVENANCE_ANNOTATION,
    Provenance,
    ReleaseAction,
    claimed_provenance,
    describe,
    description_owner,
    description_provenance,
    release_action,
    released_description,
    with_description_provenance,
    without_description_provenance,
)
from server_hardening.renderers.networkpolicy import with_provenance

CREATED, ADOPTED, UNKNOWN = Provenance.CREATED, Provenance.ADOPTED, Provenance.UNKNOWN


@pytest.mark.parametrize(
    ("provenance", "delete", "others", "expected"),
    [
        (CREATED, True, [CREATED, ADOPTED], ReleaseAction.REMOVE),
        (ADOPTED, True, [CREATED, ADOPTED], ReleaseAction.RETURN),
        (UNKNOWN, True, [UNKNOWN], ReleaseAction.RETURN),
        # Something of unknown origin on the target: nothing there is removed.
        (CREATED, True, [CREATED, UNKNOWN], ReleaseAction.RETURN),
        (CREATED, False, [CREATED], ReleaseAction.RETURN),
    ],
)
def test_release_removes_only_the_operators_creations(
    provenance: Provenance, delete: bool, others: list[Provenance], expected: ReleaseAction
) -> None:
    assert release_action(provenance, delete=delete, target_provenances=others) is expected


def test_a_claimed_rule_keeps_a_known_provenance_and_is_never_promoted_to_created() -> None:
    assert claimed_provenance(CREATED) is CREATED  # ours, orphaned, taken back
    assert claimed_provenance(ADOPTED) is ADOPTED
    assert claimed_provenance(UNKNOWN) is ADOPTED  # nothing proves we made it


def test_a_mark_value_that_is_not_a_provenance_is_unknown() -> None:
    assert Provenance.of("created") is CREATED
    assert Provenance.of(None) is UNKNOWN and Provenance.of("imported") is UNKNOWN


def test_the_gcp_description_word_is_set_replaced_and_ignored_by_drift() -> None:
    created = describe(["K8S-IN-1"], OWNER, "allow lb", with_uid=True, provenance=CREATED)
    assert created.endswith("] uid=0000-test-uid provenance=created allow lb")
    assert description_provenance(created) is CREATED
    adopted = with_description_provenance(created, ADOPTED)
    assert description_provenance(adopted) is ADOPTED and adopted.count("provenance=") == 1
    old = describe(["K8S-IN-1"], OWNER, "allow lb", with_uid=True)  # before it was recorded
    assert description_provenance(old) is UNKNOWN
    assert without_description_provenance(adopted) == without_description_provenance(old) == old
    assert with_description_provenance(created, UNKNOWN) == old
    released = released_description(created)
    assert description_owner(released) == "" and description_provenance(released) is CREATED


def test_a_network_policy_records_its_provenance_without_touching_the_original() -> None:
    manifest = {"metadata": {"name": "svh-default-deny", "annotations": {"a": "b"}}, "spec": {}}
    body = with_provenance(manifest, ADOPTED)
    assert body["metadata"]["annotations"] == {"a": "b", PROVENANCE_ANNOTATION: "adopted"}
    assert manifest["metadata"]["annotations"] == {"a": "b"}
    assert PROVENANCE_ANNOTATION not in with_provenance(body, UNKNOWN)["metadata"]["annotations"]
