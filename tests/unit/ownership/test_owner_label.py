"""The owner label is a valid Kubernetes label value for any namespace and name, including names
the API server would refuse (an offline plan reads any file): never an invalid label written."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from server_hardening.model import LABEL_VALUE_PATTERN, ResourceRef
from server_hardening.ownership import owner_label


@given(st.text(max_size=300), st.text(max_size=70))
def test_the_owner_label_is_always_a_valid_label_value(name: str, namespace: str) -> None:
    value = owner_label(ResourceRef(namespace=namespace, name=name, uid=""))
    assert len(value) <= 63
    assert re.fullmatch(LABEL_VALUE_PATTERN, value)


def test_a_label_safe_owner_is_written_as_it_is_and_others_stay_readable() -> None:
    assert owner_label(ResourceRef("circleci-server", "circleci", "")) == "circleci-server.circleci"
    odd = owner_label(ResourceRef("circleci-server", "Ünïcode Name", ""))
    assert odd.startswith("circleci-server.-n-code-name-")
    assert odd != owner_label(ResourceRef("circleci-server", "ünïcode name", ""))
