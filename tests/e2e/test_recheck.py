"""`hardening recheck NAME`: the CLI sets the recheck annotation on the real API server, and the
operator (running as the chart's ServiceAccount with exactly the chart's RBAC) checks every target
in full at once and posts a Rechecked Event; a resource whose interval is 10 minutes is checked
at once, and a second request (a new value) is a second check."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.harness import (
    OperatorProcess,
    create,
    events_for,
    get_resource,
    operator_identity,
    resource,
    status_of,
    wait_for,
    wait_for_event,
)

pytestmark = pytest.mark.e2e

NAMESPACE = f"svh-recheck-{uuid.uuid4().hex[:6]}"
NAME = "circleci"
ANNOTATION = "hardening.circleci.com/recheck"


@pytest.fixture(scope="module")
def operator(control_plane: Any, admin_api: Any) -> Iterator[OperatorProcess]:
    kubeconfig, _ = operator_identity(control_plane, admin_api, [NAMESPACE])
    proc = OperatorProcess(kubeconfig, [NAMESPACE]).start()
    yield proc
    proc.stop()


def recheck(control_plane: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server_hardening", "recheck", *args,
         "--kubeconfig", str(control_plane.admin_kubeconfig)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def rechecked(admin_api: Any) -> list[Any]:
    return [e for e in events_for(admin_api, NAMESPACE, NAME) if e.reason == "Rechecked"]


def test_hardening_recheck_makes_the_operator_check_in_full_and_say_so(
    operator: OperatorProcess, control_plane: Any, admin_api: Any
) -> None:
    create(admin_api, resource(NAMESPACE, NAME, driftCheckInterval="10m"))
    wait_for(
        "Enforced",
        lambda: status_of(admin_api, NAMESPACE, NAME).get("phase") == "Enforced" or None,
    )
    checks_before = operator.metric("server_hardening_reconciles_total", result="in_sync")

    done = recheck(control_plane, NAME, "-n", NAMESPACE)
    assert done.returncode == 0, done.stderr
    value = get_resource(admin_api, NAMESPACE, NAME)["metadata"]["annotations"][ANNOTATION]
    assert f"{ANNOTATION}={value}" in done.stdout
    try:
        event = wait_for_event(
            admin_api, NAMESPACE, NAME, "a Rechecked event", lambda e: e.reason == "Rechecked"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{operator.log_tail()}") from exc
    assert event.type == "Normal"
    assert event.message == (
        f"checked every target in full on request ({ANNOTATION}={value}): phase Enforced, drift 0"
    )
    assert operator.metric("server_hardening_reconciles_total", result="in_sync") > checks_before

    # Any new value is a new request.
    again = recheck(control_plane, NAME, "-n", NAMESPACE)
    assert again.returncode == 0, again.stderr
    wait_for("a second Rechecked event", lambda: len(rechecked(admin_api)) >= 2 or None)


def test_recheck_of_a_missing_resource_says_so(
    control_plane: Any, operator: OperatorProcess
) -> None:
    done = recheck(control_plane, "nothing-here", "-n", NAMESPACE)
    assert done.returncode == 1
    assert f"serverhardening {NAMESPACE}/nothing-here not found" in done.stderr
