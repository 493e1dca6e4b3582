"""Where the operator's Kubernetes credentials come from: kubeconfig files (merged as kubectl
merges them), the pod's ServiceAccount, exec plugins, and the errors that name what is wrong.
No API server here: the e2e tier runs these credentials against a real one."""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat
from pathlib import Path

import pytest

from server_hardening.targets import kubeconfig
from server_hardening.targets.kubeconfig import (
    CredentialSource,
    KubeConfigError,
    from_kubeconfig,
    in_cluster,
    load_credentials,
)


def write_kubeconfig(path: Path, *, user: dict[str, object], cluster: dict[str, object] | None = None,
               context: str = "lab") -> Path:  # fmt: skip
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": context,
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
                "clusters": [
                    {"name": "lab", "cluster": cluster or {"server": "https://10.0.0.1:6443"}}
                ],
                "users": [{"name": "lab", "user": user}],
            }
        )
    )
    return path


def test_files_are_relative_to_their_kubeconfig_and_data_is_decoded(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    path = write_kubeconfig(
        tmp_path / "config",
        user={"client-certificate": "pki/admin.crt", "client-key": "/abs/admin.key"},
        cluster={
            "server": "https://10.0.0.1:6443",
            "certificate-authority-data": base64.b64encode(pem.encode()).decode(),
        },
    )
    creds = from_kubeconfig([path])
    assert creds.server == "https://10.0.0.1:6443"
    assert creds.cert_path == str(tmp_path / "pki" / "admin.crt")
    assert creds.key_path == "/abs/admin.key"
    assert creds.ca_data == pem


def test_merged_files_take_each_name_from_the_first_file_that_has_it(tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.write_text(json.dumps({"users": [{"name": "lab", "user": {"token": "from-first"}}]}))
    second = write_kubeconfig(tmp_path / "second", user={"token": "from-second"})
    env = {"KUBECONFIG": f"{first}:{tmp_path / 'missing'}:{second}"}
    creds = load_credentials(environ=env)
    assert creds.token == "from-first"  # first file's user, second file's context and cluster
    assert creds.server == "https://10.0.0.1:6443"


@pytest.mark.parametrize(
    ("user", "cluster", "context", "names"),
    [
        ({"auth-provider": {"name": "gcp"}}, None, "lab", "users[lab].user.auth-provider"),
        ({"username": "admin", "password": "x"}, None, "lab", "users[lab].user.username"),
        ({"token": "t"}, {"server": "10.0.0.1:6443"}, "lab", "clusters[lab].cluster.server"),
        ({"token": "t"}, None, "prod", "current-context: no context named 'prod'"),
        ({"exec": {"args": ["x"]}}, None, "lab", "users[lab].user.exec.command: missing"),
        ({"client-key-data": "not base64!"}, None, "lab", "users[lab].user.client-key-data"),
    ],
)
def test_unusable_kubeconfigs_are_refused_naming_the_field(
    tmp_path: Path,
    user: dict[str, object],
    cluster: dict[str, object] | None,
    context: str,
    names: str,
) -> None:
    path = write_kubeconfig(tmp_path / "config", user=user, cluster=cluster, context=context)
    with pytest.raises(KubeConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        from_kubeconfig([path])


def test_in_cluster_reads_the_service_account_and_brackets_an_ipv6_host(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "namespace").write_text("circleci-server")
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    creds = in_cluster(env, tmp_path)
    assert creds.server == "https://[fd00::1]:443"
    assert creds.namespace == "circleci-server"
    assert creds.ca_path == str(tmp_path / "ca.crt")
    assert CredentialSource(creds).current().token == "sa-token"


def test_a_rotated_token_file_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("first")
    source = CredentialSource(in_cluster({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, tmp_path))
    assert source.current().token == "first"
    token.write_text("rotated")
    assert source.current().token == "first"  # not read again within the minute
    monkeypatch.setattr(kubeconfig, "TOKEN_FILE_REREAD_SECONDS", 0.0)
    assert source.current().token == "rotated"


def exec_plugin(tmp_path: Path, *, expires_in: dt.timedelta, exit_code: int = 0) -> Path:
    """A plugin that prints a numbered token (it counts its runs) and checks it was told it
    is not interactive, as client-go tells plugins."""
    script = tmp_path / "plugin"
    expiry = (dt.datetime.now(dt.UTC) + expires_in).strftime("%Y-%m-%dT%H:%M:%SZ")
    script.write_text(
        "#!/bin/sh\n"
        f"[ {exit_code} -eq 0 ] || {{ echo 'login required' >&2; exit {exit_code}; }}\n"
        'echo "$KUBERNETES_EXEC_INFO" | grep -q \'"interactive": false\' || exit 3\n'
        'n=$(($(cat "$0.runs" 2>/dev/null || echo 0) + 1)); echo $n > "$0.runs"\n'
        'printf \'{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",'
        f' "status": {{"token": "token-%s", "expirationTimestamp": "{expiry}"}}}}\' "$n"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_an_exec_plugin_is_run_again_only_when_its_credential_expires(tmp_path: Path) -> None:
    lasting = exec_plugin(tmp_path, expires_in=dt.timedelta(hours=1))
    path = write_kubeconfig(tmp_path / "config", user={"exec": {"command": str(lasting)}})
    source = CredentialSource(from_kubeconfig([path]))
    assert [source.current().token for _ in range(3)] == ["token-1"] * 3
    assert source.current().expires is not None

    (tmp_path / "plugin.runs").unlink()
    expiring = exec_plugin(tmp_path, expires_in=dt.timedelta(seconds=30))  # within renewal
    source = CredentialSource(from_kubeconfig([path]))
    assert [source.current().token for _ in range(2)] == ["token-1", "token-2"]
    assert expiring == lasting


def test_a_failing_exec_plugin_is_reported_with_its_message(tmp_path: Path) -> None:
    failing = exec_plugin(tmp_path, expires_in=dt.timedelta(hours=1), exit_code=1)
    path = write_kubeconfig(tmp_path / "config", user={"exec": {"command": str(failing)}})
    with pytest.raises(
        KubeConfigError, match=r"users\[lab\]\.user\.exec: .* exited 1: login required"
    ):
        CredentialSource(from_kubeconfig([path])).current()
