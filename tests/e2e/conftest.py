"""Fixtures for tests against the real local control plane (etcd + kube-apiserver).

The binaries are built on first use by ``scripts/testbin`` (minutes, cold; instant after that)
into a cache outside the repository; see docs/control-plane.md. One control plane serves the
whole session; every test gets its own namespace.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.harness import ensure_namespace, wait_for
from server_hardening_dev.controlplane import (
    ControlPlane,
    TestBinaries,
)


@pytest.fixture(scope="session")
def control_plane(control_plane_binaries: TestBinaries) -> Iterator[ControlPlane]:
    """A running etcd + kube-apiserver on 127.0.0.1, stopped and deleted after the session."""
    with ControlPlane(control_plane_binaries) as cp:
        yield cp


@pytest.fixture(scope="session")
def admin_api(control_plane: ControlPlane) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` authenticated as admin (group system:masters)."""
    api = control_plane.api_client()
    yield api
    api.close()


@pytest.fixture
def namespace(admin_api: Any) -> str:
    """A fresh namespace (never deleted: there is no namespace controller to finalize it)."""
    name = f"e2e-{uuid.uuid4().hex[:10]}"
    # A loaded API server can answer 504 while the write still lands: retried as any client
    # would (wait_for retries API errors), and a 409 then means an earlier attempt did.

    def created() -> bool:
        ensure_namespace(admin_api, name)
        return True

    wait_for(f"namespace {name}", created, timeout=30)
    return name
