"""/healthz and server_hardening_watch_alive through a real API-server outage: unhealthy once
the watches have been down longer than the bound, healthy again when the API server is back.

A control plane of its own (the outage must not disturb the session's), and a 5 s bound
(``SERVER_HARDENING_WATCH_DOWN_SECONDS``) instead of the default 60 s."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from e2e.harness import OperatorProcess, operator_identity, wait_for
from server_hardening_dev.controlplane import ControlPlane, TestBinaries

pytestmark = pytest.mark.e2e

NAMESPACE = f"svh-health-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def own_control_plane(test_binaries: TestBinaries) -> Iterator[ControlPlane]:
    with ControlPlane(test_binaries) as cp:
        yield cp


def test_healthz_and_the_watch_gauge_fail_while_the_api_server_is_down(
    own_control_plane: ControlPlane,
) -> None:
    api = own_control_plane.api_client()
    kubeconfig, _ = operator_identity(own_control_plane, api, [NAMESPACE])
    operator = OperatorProcess(
        kubeconfig, [NAMESPACE], env={"SERVER_HARDENING_WATCH_DOWN_SECONDS": "5"}
    ).start()
    try:
        wait_for("healthy", lambda: operator.http("/healthz") == (200, "ok\n"))
        wait_for("watch_alive 1", lambda: operator.metric("server_hardening_watch_alive") == 1)

        own_control_plane.stop_apiserver()
        _, why = wait_for(
            "/healthz to fail",
            lambda: (r := operator.http("/healthz"))[0] == 503 and r,
            timeout=90,
        )
        assert "watches down" in why and "bound 5s" in why, why
        assert operator.metric("server_hardening_watch_alive") == 0
        assert operator.http("/readyz")[0] == 503
        assert operator.proc is not None and operator.proc.poll() is None  # still running

        own_control_plane.start_apiserver()
        wait_for("healthy again", lambda: operator.http("/healthz") == (200, "ok\n"), timeout=90)
        assert operator.metric("server_hardening_watch_alive") == 1
    finally:
        operator.stop()
        api.close()
