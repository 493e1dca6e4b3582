"""Where the operator's Kubernetes credentials come from, for both its own client
(:mod:`server_hardening.targets.kubeapi`) and kopf's watches (``handlers.login`` hands kopf the
same), so the two can never talk to different clusters or as different users.

It understands what a platform engineer's kubeconfig holds: in-cluster ServiceAccount tokens
(re-read as the kubelet rotates them), tokens and token files, client certificates (files or
data), CA files or data, ``insecure-skip-tls-verify``, ``tls-server-name``, and ``exec``
credential plugins (``aws eks get-token``, ``gke-gcloud-auth-plugin``), re-run when their
credential expires. The legacy ``auth-provider`` entries and basic authentication are refused
by name.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = Path.home() / ".kube" / "config"
# The kubelet rotates a projected ServiceAccount token well before it expires; reading the file
# again every minute (as client-go does) always sends a valid one.
TOKEN_FILE_REREAD_SECONDS = 60.0
# An exec plugin's credential is renewed this long before the expiry it states.
EXEC_RENEW_BEFORE = dt.timedelta(seconds=60)
EXEC_TIMEOUT_SECONDS = 60.0


class KubeConfigError(Exception):
    """Credentials that cannot be used; the message names the file, the field and why."""


@dataclass(frozen=True)
class ExecPlugin:
    """A kubeconfig ``user.exec``: a command that prints an ExecCredential."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = "client.authentication.k8s.io/v1"
    where: str = "user.exec"  # for messages: which kubeconfig entry this came from


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate to it, as configured (not yet read)."""

    server: str
    ca_path: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    token: str | None = None
    token_path: str | None = None
    cert_path: str | None = None
    cert_data: bytes | None = None
    key_path: str | None = None
    key_data: bytes | None = None
    exec_plugin: ExecPlugin | None = None
    namespace: str | None = None
    source: str = ""  # "in-cluster" or the kubeconfig path, for messages


@dataclass(frozen=True)
class ResolvedCredentials:
    """What to send now: the token read, the exec plugin run."""

    credentials: Credentials
    token: str | None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    expires: dt.datetime | None = None


class CredentialSource:
    """Hands out the current credentials: re-reads a token file, re-runs an exec plugin when
    its credential expires. Thread-safe; one per process is enough."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self._lock = threading.Lock()
        self._current: ResolvedCredentials | None = None
        self._read_at = 0.0

    def current(self) -> ResolvedCredentials:
        with self._lock:
            if self._current is None or self._stale(self._current):
                self._current = self._resolve()
                self._read_at = time.monotonic()
            return self._current

    def _stale(self, current: ResolvedCredentials) -> bool:
        creds = self.credentials
        if creds.token_path:
            return time.monotonic() - self._read_at >= TOKEN_FILE_REREAD_SECONDS
        if creds.exec_plugin is not None and current.expires is not None:
            return dt.datetime.now(dt.UTC) >= current.expires - EXEC_RENEW_BEFORE
        return False

    def _resolve(self) -> ResolvedCredentials:
        creds = self.credentials
        if creds.exec_plugin is not None:
            return _run_exec_plugin(creds)
        token = creds.token
        if creds.token_path:
            try:
                token = Path(creds.token_path).read_text().strip()
            except OSError as exc:
                raise KubeConfigError(f"{creds.source}: cannot read the token file: {exc}") from exc
        return ResolvedCredentials(creds, token, creds.cert_data, creds.key_data)


def load_credentials(
    kubeconfig: str | None = None, *, environ: Mapping[str, str] | None = None
) -> Credentials:
    """``kubeconfig`` when given; else the pod's ServiceAccount when in a cluster; else
    ``$KUBECONFIG`` (its files merged as kubectl does) or ``~/.kube/config``."""
    env = os.environ if environ is None else environ
    if kubeconfig:
        return from_kubeconfig([Path(kubeconfig)])
    if env.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT_DIR / "token").exists():
        return in_cluster(env)
    paths = [Path(p) for p in (env.get("KUBECONFIG") or "").split(os.pathsep) if p]
    paths = [p for p in paths if p.exists()] or [DEFAULT_KUBECONFIG]
    if not paths[0].exists():
        raise KubeConfigError(
            "no Kubernetes credentials: not in a cluster (KUBERNETES_SERVICE_HOST unset or no "
            f"ServiceAccount token) and no kubeconfig at {paths[0]}; pass --kubeconfig"
        )
    return from_kubeconfig(paths)


def in_cluster(environ: Mapping[str, str], directory: Path = SERVICE_ACCOUNT_DIR) -> Credentials:
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubeConfigError("in-cluster: KUBERNETES_SERVICE_HOST is not set")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    namespace_file = directory / "namespace"
    return Credentials(
        server=f"https://{host}:{port}",
        ca_path=str(directory / "ca.crt"),
        token_path=str(directory / "token"),
        namespace=namespace_file.read_text().strip() if namespace_file.exists() else None,
        source="in-cluster",
    )


def from_kubeconfig(paths: Sequence[Path], context: str | None = None) -> Credentials:
    """The current (or named) context of the kubeconfig files: for every name, the first
    file that defines it wins, as kubectl merges them. Relative paths in a file are relative to
    that file's directory."""
    merged: dict[str, dict[str, tuple[Path, Mapping[str, Any]]]] = {
        "clusters": {},
        "users": {},
        "contexts": {},
    }
    current = context
    for path in paths:
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise KubeConfigError(f"{path}: cannot read it as a kubeconfig: {exc}") from exc
        if not isinstance(document, dict):
            raise KubeConfigError(f"{path}: not a kubeconfig (a mapping at the top is expected)")
        current = current or document.get("current-context") or None
        for section, inner in (("clusters", "cluster"), ("users", "user"), ("contexts", "context")):
            for index, entry in enumerate(document.get(section) or []):
                if not isinstance(entry, dict) or not isinstance(entry.get(inner), dict):
                    raise KubeConfigError(f"{path}: {section}[{index}].{inner}: missing")
                merged[section].setdefault(str(entry.get("name")), (path, entry[inner]))
    where = ", ".join(str(p) for p in paths)
    if not current:
        raise KubeConfigError(f"{where}: current-context: not set (and no context named)")
    if current not in merged["contexts"]:
        raise KubeConfigError(f"{where}: current-context: no context named {current!r}")
    _, ctx = merged["contexts"][current]
    cluster_name, user_name = str(ctx.get("cluster", "")), str(ctx.get("user", ""))
    if cluster_name not in merged["clusters"]:
        raise KubeConfigError(f"{where}: contexts[{current}].cluster: no cluster {cluster_name!r}")
    cluster_file, cluster = merged["clusters"][cluster_name]
    server = str(cluster.get("server") or "")
    if not server.startswith(("https://", "http://")):
        raise KubeConfigError(
            f"{cluster_file}: clusters[{cluster_name}].cluster.server: {server!r} is not an "
            "http(s) URL"
        )
    creds = Credentials(
        server=server,
        ca_path=_relative(cluster_file, cluster.get("certificate-authority")),
        ca_data=_decoded(cluster, "certificate-authority-data", cluster_file, cluster_name),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        tls_server_name=cluster.get("tls-server-name") or None,
        namespace=ctx.get("namespace") or None,
        source=where,
    )
    if user_name and user_name not in merged["users"]:
        raise KubeConfigError(f"{where}: contexts[{current}].user: no user {user_name!r}")
    if not user_name:
        return creds
    user_file, user = merged["users"][user_name]
    return _with_user(creds, user_file, user_name, user)


def _with_user(creds: Credentials, path: Path, name: str, user: Mapping[str, Any]) -> Credentials:
    prefix = f"{path}: users[{name}].user"
    if "auth-provider" in user:
        raise KubeConfigError(
            f"{prefix}.auth-provider: not supported (it was removed from Kubernetes clients); "
            "use the provider's exec plugin (e.g. gke-gcloud-auth-plugin) or a token"
        )
    if "username" in user or "password" in user:
        raise KubeConfigError(f"{prefix}.username: basic authentication is not supported")
    cert_data = user.get("client-certificate-data")
    key_data = user.get("client-key-data")
    exec_plugin = None
    if "exec" in user:
        spec = user["exec"]
        if not isinstance(spec, dict) or not spec.get("command"):
            raise KubeConfigError(f"{prefix}.exec.command: missing")
        env = tuple((str(e.get("name")), str(e.get("value", ""))) for e in spec.get("env") or [])
        command = str(spec["command"])
        if "/" in command and not os.path.isabs(command):
            command = str(path.parent / command)  # relative to the kubeconfig, as kubectl does
        exec_plugin = ExecPlugin(
            command=command,
            args=tuple(str(a) for a in spec.get("args") or []),
            env=env,
            api_version=str(spec.get("apiVersion") or ExecPlugin.api_version),
            where=f"{prefix}.exec",
        )
    return replace(
        creds,
        token=user.get("token") or None,
        token_path=_relative(path, user.get("tokenFile")),
        cert_path=_relative(path, user.get("client-certificate")),
        cert_data=_b64(cert_data, f"{prefix}.client-certificate-data") if cert_data else None,
        key_path=_relative(path, user.get("client-key")),
        key_data=_b64(key_data, f"{prefix}.client-key-data") if key_data else None,
        exec_plugin=exec_plugin,
    )


def _relative(path: Path, value: Any) -> str | None:
    if not value:
        return None
    return str(value) if os.path.isabs(str(value)) else str(path.parent / str(value))


def _decoded(entry: Mapping[str, Any], key: str, path: Path, name: str) -> str | None:
    value = entry.get(key)
    if not value:
        return None
    return _b64(value, f"{path}: clusters[{name}].cluster.{key}").decode()


def _b64(value: Any, where: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KubeConfigError(f"{where}: not base64: {exc}") from exc


def _run_exec_plugin(creds: Credentials) -> ResolvedCredentials:
    plugin = creds.exec_plugin
    assert plugin is not None
    exec_info = {
        "apiVersion": plugin.api_version,
        "kind": "ExecCredential",
        "spec": {"interactive": False},
    }
    env = {**os.environ, **dict(plugin.env), "KUBERNETES_EXEC_INFO": json.dumps(exec_info)}
    try:
        done = subprocess.run(
            [plugin.command, *plugin.args],
            env=env,
            capture_output=True,
            text=True,
            timeout=EXEC_TIMEOUT_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KubeConfigError(f"{plugin.where}: cannot run {plugin.command}: {exc}") from exc
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [""])[-1][:300]
        raise KubeConfigError(f"{plugin.where}: {plugin.command} exited {done.returncode}: {why}")
    try:
        status = json.loads(done.stdout).get("status") or {}
    except (ValueError, AttributeError) as exc:
        raise KubeConfigError(
            f"{plugin.where}: {plugin.command} printed no ExecCredential JSON: {exc}"
        ) from exc
    expires = None
    if status.get("expirationTimestamp"):
        stamp = str(status["expirationTimestamp"]).replace("Z", "+00:00")
        try:
            expires = dt.datetime.fromisoformat(stamp)
        except ValueError as exc:
            raise KubeConfigError(
                f"{plugin.where}: status.expirationTimestamp: not RFC 3339: {stamp}"
            ) from exc
    cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
    if not status.get("token") and not (cert and key):
        raise KubeConfigError(
            f"{plugin.where}: the ExecCredential has neither status.token nor "
            "status.clientCertificateData and status.clientKeyData"
        )
    return ResolvedCredentials(
        creds,
        token=status.get("token") or None,
        cert_data=cert.encode() if cert else creds.cert_data,
        key_data=key.encode() if key else creds.key_data,
        expires=expires,
    )
