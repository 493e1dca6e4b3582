"""``hardening run`` as a process the way a pod runs it: a uid without a passwd entry, stopped by
SIGTERM. Against the real kube-apiserver; each test failed before its fix (issue 12): a KeyError
from getpwuid (and exit code 0), SIGTERM killing the process without giving up its part in the
HA election (then kopf's peering record, now the leader Lease). The exit code of a fatal error
is tested in tests/unit/cli/test_runner.py."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.harness import (
    RELEASE_NAMESPACE,
    LeaderReplicas,
    OperatorProcess,
    operator_identity,
    wait_for,
)

pytestmark = [pytest.mark.e2e]

#: What a pod's environment has (the chart's downward API), and no user name at all.
POD_ENV = {"POD_NAME": "server-hardening-7d4b9c-x2k8q"}
USER_VARIABLES = ("USER", "LOGNAME", "LNAME", "USERNAME")


def pod_like_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES}
    return {**env, **POD_ENV, "HOME": "/nonexistent", **extra}


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
def test_a_stop_signal_releases_the_lease_and_exits_zero(
    control_plane: Any, admin_api: Any, namespace: str, stop_signal: signal.Signals
) -> None:
    pod = POD_ENV["POD_NAME"]  # the chart's downward-API pod name
    replicas = LeaderReplicas(control_plane, admin_api, namespace, [pod])
    operator = replicas.process(pod)
    operator.env.update(pod_like_env())
    operator.start()
    try:
        holder = wait_for("the operator to hold the Lease", replicas.holder)
        assert holder.startswith(f"{pod}_")
        assert operator.proc is not None
        operator.proc.send_signal(stop_signal)
        code = operator.proc.wait(timeout=25)
        assert code == 0, operator.log_tail()
        lease = client.CoordinationV1Api(admin_api).read_namespaced_lease(
            replicas.lease, RELEASE_NAMESPACE
        )
        # client-go's release: no holder, a one-second lease, so a standby takes it at once.
        assert (lease.spec.holder_identity or "", lease.spec.lease_duration_seconds) == ("", 1)
        log = operator.log_tail(200)
        assert f"{stop_signal.name} received: stopping" in log
        assert "leader election: released" in log
        # kopf did not have to wait out (5 s) and cancel a task it does not own.
        assert "Hung tasks stopping is skipped: no tasks given." in log
    finally:
        operator.kill()
