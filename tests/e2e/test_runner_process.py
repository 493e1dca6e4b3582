"""``hardening run`` as a process the way a pod runs it: a uid without a passwd entry, stopped by
SIGTERM. Against the real kube-apiserver; each test failed before its fix (issue 12): a KeyError
from getpwuid (and exit code 0), SIGTERM killing the process without withdrawing its peering
record. The exit code of a fatal error is tested in tests/unit/cli/test_runner.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils
from kubernetes.client.rest import ApiException

from e2e.harness import (
    REPO,
    OperatorProcess,
    apply_objects,
    operator_identity,
    wait_for,
)

pytestmark = [pytest.mark.e2e]

PEERING_CRDS = REPO / "helm" / "server-hardening" / "crds" / "kopf-peerings.yaml"
PEERING = "server-hardening"
#: What a pod's environment has (the chart's downward API), and no user name at all.
POD_ENV = {"POD_NAME": "server-hardening-7d4b9c-x2k8q"}
USER_VARIABLES = ("USER", "LOGNAME", "LNAME", "USERNAME")


def pod_like_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES}
    return {**env, **POD_ENV, "HOME": "/nonexistent", **extra}


def install_peering(api: Any, namespace: str) -> None:
    for doc in yaml.safe_load_all(PEERING_CRDS.read_text()):
        try:
            utils.create_from_dict(api, doc)
        except utils.FailToCreateError as exc:
            if not all(e.status == 409 for e in exc.api_exceptions):
                raise
    body = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
            "metadata": {"name": PEERING, "namespace": namespace}}  # fmt: skip
    wait_for("the KopfPeering CRD to serve", lambda: _create_peering(api, namespace, body))


def _create_peering(api: Any, namespace: str, body: dict[str, Any]) -> bool:
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", body
        )
    except ApiException as exc:
        if exc.status == 404:
            return False  # the CRD is not served yet
        if exc.status != 409:
            raise
    return True


def peers(api: Any, namespace: str) -> dict[str, Any]:
    body = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", PEERING
    )
    return dict(body.get("status") or {})


def ha_rbac(namespace: str) -> list[dict[str, Any]]:
    """The chart's RBAC with ``ha.enabled`` (it adds the kopfpeerings rules)."""
    sys.path.insert(0, str(REPO / "tests" / "packaging"))
    from hardening_chart import rbac_objects, render_chart

    rendered = render_chart(
        {"watchNamespaces": [namespace], "ha": {"enabled": True, "peeringName": PEERING}},
        namespace="server-hardening",
    )
    return rbac_objects(rendered)


def without_passwd_entry(directory: Path) -> list[str]:
    """A command prefix: run in a private mount namespace whose /etc/passwd has no entry for
    our uid, which is what a pod running the image as uid 65532 sees."""
    passwd, nsswitch = directory / "passwd", directory / "nsswitch.conf"
    passwd.write_text("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    nsswitch.write_text("passwd: files\ngroup: files\nhosts: files dns\n")  # no nss-systemd
    script = 'mount --bind "$0" /etc/passwd && mount --bind "$1" /etc/nsswitch.conf && shift && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
            str(passwd), str(nsswitch)]  # fmt: skip


def test_runs_without_a_passwd_entry_for_its_uid(
    control_plane: Any, admin_api: Any, namespace: str, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding /etc/passwd needs root and unshare(1) (CI runs as root)")
    prefix = without_passwd_entry(tmp_path)
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import getpass; getpass.getuser()"],
        env=pod_like_env(), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert "getpwuid(): uid not found" in probe.stderr  # the premise, as in the image
    kubeconfig, _ = operator_identity(control_plane, admin_api, [namespace])
    operator = OperatorProcess(kubeconfig, [namespace], env=pod_like_env(), command_prefix=prefix)
    try:
        operator.start()  # fails with the log tail if the process exits
        assert operator.http("/readyz") == (200, "ok\n")
    finally:
        operator.stop()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_withdraws_the_peering_record_and_exits_zero(
    control_plane: Any, admin_api: Any, namespace: str, stop_signal: signal.Signals
) -> None:
    kubeconfig, _ = operator_identity(control_plane, admin_api, [namespace])
    install_peering(admin_api, namespace)
    apply_objects(admin_api, ha_rbac(namespace))
    operator = OperatorProcess(
        kubeconfig, [namespace], env=pod_like_env(),
        extra_args=["--peering", PEERING, "--priority", "7"],
    ).start()  # fmt: skip
    try:
        identity, record = wait_for(
            "the operator's peering record",
            lambda: next(iter(peers(admin_api, namespace).items()), None),
        )
        assert record["priority"] == 7
        assert operator.proc is not None
        operator.proc.send_signal(stop_signal)
        code = operator.proc.wait(timeout=25)
        assert code == 0, operator.log_tail()
        assert identity not in peers(admin_api, namespace), "the peering record stayed"
        log = operator.log_tail(200)
        assert f"{stop_signal.name} received: stopping" in log
        # kopf did not have to wait out (5 s) and cancel a task it does not own.
        assert "Hung tasks stopping is skipped: no tasks given." in log
        assert identity == POD_ENV["POD_NAME"]  # the chart's downward-API pod name
    finally:
        operator.kill()
