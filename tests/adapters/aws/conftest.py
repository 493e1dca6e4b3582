"""Fixtures for the AWS adapter tests: one moto server (and counting proxy) per test module, an
empty moto and a fresh VPC with one security group per role per test. All traffic stays on
127.0.0.1; credentials are dummies and no real AWS configuration is read."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.aws.double import MotoDouble
from adapters.aws.world import World, make_world


@pytest.fixture(scope="module", autouse=True)
def _no_real_aws() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", "/dev/null")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        yield


@pytest.fixture(scope="module")
def moto_double(_no_real_aws: None) -> Iterator[MotoDouble]:
    double = MotoDouble()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def world(moto_double: MotoDouble) -> World:
    """Four groups (one per role), each with the default allow-all egress rule a new group has."""
    return make_world(moto_double)


@pytest.fixture
def bare_world(moto_double: MotoDouble) -> World:
    """Four groups with no rule at all."""
    return make_world(moto_double, keep_default_egress=False)
