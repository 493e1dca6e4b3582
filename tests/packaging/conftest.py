"""Fixtures for the packaging tests: the pinned helm/promtool and a real local API server.

The binaries come from scripts/testbin (built on first use into a cache outside the repo).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server_hardening.devtools.controlplane import (
    ControlPlane,
    ControlPlaneError,
    TestBinaries,
    ensure_binaries,
)

# The helpers beside the tests (hardening_chart, runtime_lock) are plain modules: with
# --import-mode=importlib the test directory is not on sys.path, so put it there.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def packaging_binaries() -> TestBinaries:
    """The pinned kube-apiserver, etcd, helm and promtool (built if missing)."""
    progress = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
    try:
        return ensure_binaries(progress=progress)
    except ControlPlaneError as exc:
        pytest.fail(f"cannot build the test binaries with scripts/testbin: {exc}")


@pytest.fixture(scope="session")
def packaging_control_plane(packaging_binaries: TestBinaries) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver on 127.0.0.1 for the whole packaging session."""
    with ControlPlane(packaging_binaries) as cp:
        yield cp


@pytest.fixture(scope="session")
def packaging_admin_api(packaging_control_plane: ControlPlane) -> Iterator[Any]:
    api = packaging_control_plane.api_client()
    yield api
    api.close()
