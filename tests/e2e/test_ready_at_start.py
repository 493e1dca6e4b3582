"""A fresh install is ready as soon as the listing at start shows no ServerHardening: the real
operator process against the real API server, with the fallback grace set to an hour, so a
readiness that waited for it would never come."""

from __future__ import annotations

from typing import Any

import pytest

from e2e.harness import OperatorProcess, operator_identity

pytestmark = pytest.mark.e2e


def test_an_operator_with_no_resource_to_catch_up_with_is_ready_without_the_grace(
    control_plane: Any, admin_api: Any, namespace: str
) -> None:
    kubeconfig, _ = operator_identity(control_plane, admin_api, [namespace])
    operator = OperatorProcess(
        kubeconfig, [namespace], env={"SERVER_HARDENING_READY_GRACE": "3600"}
    )
    try:
        operator.start()  # waits for /readyz 200; fails with the log tail otherwise
        assert operator.http("/readyz") == (200, "ok\n")
    finally:
        operator.stop()
