"""Fixtures for the packaging tests: the pinned helm/promtool and a real local API server.

The binaries come from scripts/testbin (built on first use into a cache outside the repo).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server_hardening_dev.controlplane import (
    ControlPlane,
    TestBinaries,
)

# The helpers beside the tests (hardening_chart, runtime_lock) are plain modules: with
# --import-mode=importlib the test directory is not on sys.path, so put it there.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def packaging_control_plane(test_binaries: TestBinaries) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver on 127.0.0.1 for the whole packaging session."""
    with ControlPlane(test_binaries) as cp:
        yield cp


@pytest.fixture(scope="session")
def packaging_admin_api(packaging_control_plane: ControlPlane) -> Iterator[Any]:
    api = packaging_control_plane.api_client()
    yield api
    api.close()
