"""Shared pytest settings. Tiers: unit (pure), golden, adapters (moto, the GCP fake), e2e (real
kube-apiserver), packaging (helm, promtool)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from server_hardening_dev.controlplane import TestBinaries

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def test_binaries() -> TestBinaries:
    """The pinned kube-apiserver, etcd, helm and promtool (built if missing).

    Imported here, not at the top: the unit tier never loads the control plane."""
    from server_hardening_dev.controlplane import ControlPlaneError, ensure_binaries

    # Bypass output capture so a cold build (minutes) shows its progress.
    progress = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
    try:
        return ensure_binaries(progress=progress)
    except ControlPlaneError as exc:
        pytest.fail(f"cannot build the control-plane binaries with scripts/testbin: {exc}")


@pytest.fixture(scope="session")
def control_plane_binaries() -> TestBinaries:
    """kube-apiserver and etcd only (built if missing): what a control plane needs, without
    waiting for helm and promtool."""
    from server_hardening_dev.controlplane import (
        CONTROL_PLANE_BINARIES,
        ControlPlaneError,
        ensure_binaries,
    )

    progress = sys.__stderr__ if sys.__stderr__ is not None else sys.stderr
    try:
        return ensure_binaries(progress=progress, names=CONTROL_PLANE_BINARIES)
    except ControlPlaneError as exc:
        pytest.fail(f"cannot build kube-apiserver and etcd with scripts/testbin: {exc}")
