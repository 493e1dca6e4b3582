"""Fixtures for tests against the real local control plane (etcd + kube-apiserver).

The binaries are built on first use by ``scripts/testbin`` (minutes, cold; instant after that)
into a cache outside the repository; see docs/control-plane.md. One control plane serves the
whole session; every test gets its own namespace.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

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
    # A loaded API server answers 504 when etcd is slow, and the write may still land: retried
    # like any client would, a 409 then means it did.
    attempt = 0
    while True:
        try:
            client.CoreV1Api(admin_api).create_namespace({"metadata": {"name": name}})
            return name
        except ApiException as exc:
            if exc.status == 409 and attempt:
                return name
            if exc.status not in (429, 500, 503, 504) or attempt == 4:
                raise
        attempt += 1
        time.sleep(attempt)
