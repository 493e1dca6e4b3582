"""Fixtures for the reference installations: one moto server per module (no real AWS
configuration read), the GCP fake per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.aws.double import MotoDouble
from fakes.gcp_compute import FakeCompute
from reference.gcp import NETWORK, PROJECT


@pytest.fixture(scope="module")
def moto_double() -> Iterator[MotoDouble]:
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_EC2"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_CONFIG_FILE", "/dev/null")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        double = MotoDouble()
        try:
            yield double
        finally:
            double.stop()


@pytest.fixture
def fake() -> Iterator[FakeCompute]:
    with FakeCompute(networks=((PROJECT, NETWORK),)) as server:
        yield server
