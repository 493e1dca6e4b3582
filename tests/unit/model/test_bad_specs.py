"""The model names the field of every fault in the bad-spec corpus (tests/bad_specs.py); the e2e
tier checks that the API server names the same ones."""

from __future__ import annotations

import pytest

from bad_specs import CORPUS, BadSpec, asserted_cases
from server_hardening.model import SpecError, parse_spec


def model_paths(spec: dict[str, object]) -> frozenset[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    return frozenset(e.path for e in caught.value.errors)


@pytest.mark.parametrize("case", asserted_cases(), ids=lambda c: c.name)
def test_the_model_names_the_faulty_field(case: BadSpec) -> None:
    assert model_paths(case.spec) == case.paths


def test_case_names_are_unique() -> None:
    names = [c.name for c in CORPUS]
    assert len(names) == len(set(names))
