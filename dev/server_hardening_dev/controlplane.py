"""A real, local Kubernetes control plane (etcd + kube-apiserver) for tests and the demo.

The binaries are built from pinned Go modules (``hack/testbin``) by ``scripts/testbin`` into a
cache folder outside the repository; see ``docs/control-plane.md``.

Library use::

    with ControlPlane() as cp:              # builds binaries first if they are missing
        api = cp.api_client()               # admin (system:masters) kubernetes.client.ApiClient
        kc = cp.client_cert_kubeconfig("alice", ["team-a"])
        sa = cp.service_account_kubeconfig("circleci-server", "server-hardening")

By hand (the demo)::

    python -m server_hardening_dev.controlplane start [--state-dir DIR]
    python -m server_hardening_dev.controlplane stop [--state-dir DIR]

Everything listens on 127.0.0.1 only, unless ``address`` names another local address (the field
tier's node). There is no controller-manager, scheduler or kubelet here: the API server
validates, stores, authenticates and authorizes, but no pods ever run, namespaces stay
``Terminating`` after deletion, and ServiceAccount tokens come from the TokenRequest API only.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, ClassVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubernetes import client, config  # type: ignore[import-untyped,unused-ignore]
from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "ALL_BINARIES",
    "AUDIT_POLICY",
    "CONTROL_PLANE_BINARIES",
    "SERVICE_ACCOUNT_ISSUER",
    "ControlPlane",
    "ControlPlaneError",
    "TestBinaries",
    "ensure_binaries",
    "find_testbin_script",
    "main",
]

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
CONTEXT_NAME = "server-hardening-dev"
_MARKER = ".server-hardening-controlplane"
_STATE_FILE = "state.json"

#: What the API server audits: each mutating request once (at ResponseComplete, or Panic).
AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {"level": "None", "verbs": ["get", "list", "watch"]},
        {"level": "None", "nonResourceURLs": ["/*"]},
        {"level": "Metadata"},
    ],
}


class ControlPlaneError(RuntimeError):
    """The control plane (or its binaries) could not be built, started or used."""


# --------------------------------------------------------------------------------------------
# Binaries
# --------------------------------------------------------------------------------------------


ALL_BINARIES = ("kube-apiserver", "etcd", "helm", "promtool", "prometheus")
# What etcd + kube-apiserver need; helm and promtool (over half of a cold build) are for the
# packaging tier only.
CONTROL_PLANE_BINARIES = ("kube-apiserver", "etcd")


@dataclass(frozen=True)
class TestBinaries:
    """Paths of the pinned binaries built by ``scripts/testbin``."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    directory: Path
    kube_apiserver: Path
    etcd: Path
    helm: Path
    promtool: Path
    prometheus: Path

    @classmethod
    def in_directory(cls, directory: Path) -> TestBinaries:
        return cls(
            directory=directory,
            kube_apiserver=directory / "kube-apiserver",
            etcd=directory / "etcd",
            helm=directory / "helm",
            promtool=directory / "promtool",
            prometheus=directory / "prometheus",
        )

    def missing(self, names: Sequence[str] = ALL_BINARIES) -> list[Path]:
        """The binaries among ``names`` that do not exist (or are not executable)."""
        paths = [self.directory / name for name in names]
        return [p for p in paths if not (p.is_file() and os.access(p, os.X_OK))]


def find_testbin_script() -> Path:
    """``$SERVER_HARDENING_TESTBIN_SCRIPT``, else ``scripts/testbin`` of this source checkout."""
    env = os.environ.get("SERVER_HARDENING_TESTBIN_SCRIPT")
    if env:
        return Path(env)
    # dev/server_hardening_dev/controlplane.py -> repository root is parents[2]
    candidate = Path(__file__).resolve().parents[2] / "scripts" / "testbin"
    if candidate.is_file():
        return candidate
    raise ControlPlaneError(
        f"cannot find scripts/testbin (looked at {candidate}); "
        "set SERVER_HARDENING_TESTBIN_SCRIPT to its path"
    )


def ensure_binaries(
    *,
    script: Path | None = None,
    progress: IO[str] | None = None,
    names: Sequence[str] = ALL_BINARIES,
) -> TestBinaries:
    """Return the pinned binaries, building the missing ones among ``names`` with
    ``scripts/testbin`` (the control plane needs only :data:`CONTROL_PLANE_BINARIES`).

    The build's progress lines are streamed to ``progress`` (default: ``sys.stderr``). A cold
    build takes minutes (see docs/control-plane.md); a warm call costs one ``--print-dir``.
    """
    unknown = set(names) - set(ALL_BINARIES)
    if unknown:
        raise ValueError(f"unknown binaries {sorted(unknown)}; known: {ALL_BINARIES}")
    script = script or find_testbin_script()
    out = progress if progress is not None else sys.stderr
    printed = subprocess.run(
        ["bash", str(script), "--print-dir"], check=True, capture_output=True, text=True
    )
    binaries = TestBinaries.in_directory(Path(printed.stdout.strip().splitlines()[-1]))
    if not binaries.missing(names):
        return binaries

    out.write(f"server-hardening: building test binaries with {script}\n")
    out.flush()
    proc = subprocess.Popen(
        ["bash", str(script), *names],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stderr:  # stdout carries one line only, so this cannot deadlock
        out.write(line)
        out.flush()
        tail = [*tail[-39:], line]
    stdout = proc.stdout.read()
    if proc.wait() != 0:
        raise ControlPlaneError(
            f"{script} failed with exit code {proc.returncode}:\n{''.join(tail)}"
        )
    binaries = TestBinaries.in_directory(Path(stdout.strip().splitlines()[-1]))
    if binaries.missing(names):
        missing = binaries.missing(names)
        raise ControlPlaneError(f"{script} finished but these are missing: {missing}")
    return binaries


# --------------------------------------------------------------------------------------------
# Certificates
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _KeyPair:
    cert_pem: bytes
    key_pem: bytes


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing only (EC keys); a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


class _CertificateAuthority:
    """A throw-away CA that signs the serving certificate and client certificates."""

    def __init__(self, common_name: str) -> None:
        self._key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self._name = name
        public = self._key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server: bool = False,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> _KeyPair:
        key = _new_key()
        now = datetime.datetime.now(datetime.UTC)
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attributes))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        if dns_names or ip_addresses:
            names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
            names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return _KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


# --------------------------------------------------------------------------------------------
# Processes and small helpers
# --------------------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together while picking)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


_PR_SET_PDEATHSIG = 1


def _preexec(death_signal: signal.Signals | None) -> Callable[[], None] | None:
    """Linux: have the child get ``death_signal`` when the thread that started it dies."""
    if death_signal is None or sys.platform != "linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork, not in the child

    def set_death_signal() -> None:  # pragma: no cover - runs in the forked child
        libc.prctl(_PR_SET_PDEATHSIG, int(death_signal))

    return set_death_signal


def _spawn(
    argv: Sequence[str], log_path: Path, *, death_signal: signal.Signals | None
) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        log.write(f"# {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only the Python process, which stops us
            # preexec only calls prctl(2); the fork happens on the caller's thread.
            preexec_fn=_preexec(death_signal),  # noqa: PLW1509
        )


def _terminate(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(data.splitlines()[-lines:])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _safe_name(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value)


def _write_private(path: Path, data: bytes | str) -> Path:
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return path


# --------------------------------------------------------------------------------------------
# The control plane
# --------------------------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver on loopback, with a CA, an admin kubeconfig and test identities.

    ``root_dir`` (default: a fresh temporary directory) holds certificates, kubeconfigs, the
    etcd data and both process logs; the whole directory is deleted by :meth:`stop`. A given
    ``root_dir`` must be missing, empty, or left over from an earlier control plane.

    With ``die_with_parent`` (Linux), etcd gets SIGTERM and kube-apiserver SIGKILL when the
    thread that called :meth:`start` dies, so a killed test run leaves no server behind; start
    it from a thread that lives as long as the control plane (e.g. the main thread).
    """

    def __init__(
        self,
        binaries: TestBinaries | None = None,
        *,
        root_dir: Path | None = None,
        start_timeout: float = 180.0,
        stop_grace: float = 15.0,
        die_with_parent: bool = True,
        extra_apiserver_args: Sequence[str] = (),
        address: str = "127.0.0.1",
        serving_ips: Sequence[str] = (),
        pods_get_tokens: bool = False,
    ) -> None:
        self._binaries = binaries
        # Where kube-apiserver listens and what it advertises (the ``kubernetes`` Service's
        # endpoint): loopback, or an address of an interface the caller made so that pods on a
        # local node reach it. ``serving_ips`` are extra IP SANs (e.g. that Service's ClusterIP).
        self.address = address
        self.serving_ips = tuple(serving_ips)
        self.pods_get_tokens = pods_get_tokens
        self._requested_root = root_dir
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.die_with_parent = die_with_parent
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._apiserver_argv: list[str] = []
        self._ca: _CertificateAuthority | None = None
        self._lock = threading.Lock()
        self._root: Path | None = None
        self.url = ""
        self.version = ""
        self.etcd_url = ""

    # -- paths -----------------------------------------------------------------------------

    @property
    def root_dir(self) -> Path:
        if self._root is None:
            raise ControlPlaneError("control plane not started")
        return self._root

    @property
    def binaries(self) -> TestBinaries:
        if self._binaries is None:
            self._binaries = ensure_binaries(names=CONTROL_PLANE_BINARIES)
        return self._binaries

    @property
    def ca_file(self) -> Path:
        return self.root_dir / "pki" / "ca.crt"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root_dir / "admin.kubeconfig"

    @property
    def apiserver_log(self) -> Path:
        return self.root_dir / "logs" / "kube-apiserver.log"

    @property
    def etcd_log(self) -> Path:
        return self.root_dir / "logs" / "etcd.log"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (JSON lines; mutating requests only, see AUDIT_POLICY)."""
        return self.root_dir / "logs" / "audit.log"

    @property
    def running(self) -> bool:
        return (
            self._apiserver is not None
            and self._apiserver.poll() is None
            and self._etcd is not None
            and self._etcd.poll() is None
        )

    @property
    def pids(self) -> dict[str, int]:
        out = {}
        if self._etcd is not None:
            out["etcd"] = self._etcd.pid
        if self._apiserver is not None:
            out["kube-apiserver"] = self._apiserver.pid
        return out

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Start etcd and kube-apiserver; return once the API is ready. Idempotent."""
        with self._lock:
            if self._root is not None:
                return self
            binaries = self.binaries
            self._root = self._prepare_root()
            atexit.register(self.stop)
            try:
                self._write_pki()
                self._write_audit_policy()
                last: ControlPlaneError | None = None
                for _attempt in range(3):  # a picked port can be taken before we bind it
                    try:
                        self._start_processes(binaries)
                        break
                    except _PortInUseError as exc:
                        last = exc
                        self._stop_processes()
                else:
                    raise last or ControlPlaneError("could not start")
                self._write_admin_kubeconfig()
            except BaseException:
                self._stop_locked()
                raise
            return self

    def stop(self) -> None:
        """Stop both processes (SIGTERM, SIGKILL after ``stop_grace``) and delete ``root_dir``."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        atexit.unregister(self.stop)
        self._stop_processes()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
        self.url = ""
        self.etcd_url = ""

    def _stop_processes(self) -> None:
        _terminate(self._apiserver, self.stop_grace)
        _terminate(self._etcd, self.stop_grace)
        self._apiserver = None
        self._etcd = None

    def _prepare_root(self) -> Path:
        if self._requested_root is None:
            root = Path(tempfile.mkdtemp(prefix="server-hardening-cp-"))
        else:
            root = self._requested_root.resolve()
            if root.exists() and any(root.iterdir()):
                if not (root / _MARKER).exists():
                    raise ControlPlaneError(
                        f"{root} is not empty and was not made by a control plane; "
                        "refusing to use (and later delete) it"
                    )
                shutil.rmtree(root)
            root.mkdir(parents=True, exist_ok=True)
            root.chmod(0o700)
        (root / _MARKER).write_text("made by server_hardening_dev.controlplane\n")
        for sub in ("pki", "logs", "kubeconfigs", "etcd"):
            (root / sub).mkdir(mode=0o700)
        return root

    def _write_audit_policy(self) -> None:
        (self.root_dir / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))

    def _write_pki(self) -> None:
        pki = self.root_dir / "pki"
        ca = _CertificateAuthority("server-hardening-dev-ca")
        self._ca = ca
        self.ca_file.write_bytes(ca.cert_pem)
        serving = ca.issue(
            "kube-apiserver",
            server=True,
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=tuple(dict.fromkeys(("127.0.0.1", self.address, *self.serving_ips))),
        )
        (pki / "apiserver.crt").write_bytes(serving.cert_pem)
        _write_private(pki / "apiserver.key", serving.key_pem)
        admin = ca.issue("admin", ["system:masters"])
        (pki / "admin.crt").write_bytes(admin.cert_pem)
        _write_private(pki / "admin.key", admin.key_pem)
        sa_key = _new_key()
        _write_private(pki / "sa.key", _key_pem(sa_key))
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _start_processes(self, binaries: TestBinaries) -> None:
        client_port, peer_port, api_port = _free_ports(3)
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        data_dir = self.root_dir / "etcd"
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(mode=0o700)
        self._etcd = _spawn(
            [
                str(binaries.etcd),
                "--name=default",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",  # throw-away data: trade durability for speed
            ],
            self.etcd_log,
            # etcd flushes and exits promptly on SIGTERM.
            death_signal=signal.SIGTERM if self.die_with_parent else None,
        )
        self._wait("etcd", self._etcd, self.etcd_log, self._etcd_healthy)

        pki = self.root_dir / "pki"
        self.url = f"https://{self.address}:{api_port}"
        self._apiserver_argv = [
            str(binaries.kube_apiserver),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.address}",
            f"--advertise-address={self.address}",
            f"--secure-port={api_port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={self.ca_file}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # No controller-manager: nothing would mint legacy tokens or mount them (unless the
            # caller runs one and a kubelet: then pods get their projected tokens).
            *(() if self.pods_get_tokens else ("--disable-admission-plugins=ServiceAccount",)),
            "--allow-privileged=true",
            "--profiling=false",
            f"--audit-policy-file={self.root_dir / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",  # an event is on disk before its response is sent
            *self.extra_apiserver_args,
        ]
        self._spawn_apiserver()
        self.version = str(self.get_json("/version").get("gitVersion", ""))

    def _spawn_apiserver(self) -> None:
        self._apiserver = _spawn(
            self._apiserver_argv,
            self.apiserver_log,
            # Stateless, and its graceful shutdown retries a vanished etcd for ~30 s.
            death_signal=signal.SIGKILL if self.die_with_parent else None,
        )
        self._wait("kube-apiserver", self._apiserver, self.apiserver_log, self._apiserver_ready)

    def stop_apiserver(self) -> None:
        """An API-server outage: stop kube-apiserver only (etcd and all state stay) until
        :meth:`start_apiserver`. Clients see connections refused on the same address."""
        with self._lock:
            proc, self._apiserver = self._apiserver, None
            if proc is not None:
                proc.kill()  # an outage, not a graceful shutdown
                proc.wait(timeout=30)

    def start_apiserver(self) -> None:
        """Start kube-apiserver again on the same address, port and certificates."""
        with self._lock:
            if self._apiserver is None or self._apiserver.poll() is not None:
                self._spawn_apiserver()

    def restart_apiserver(self, down_for: float = 0.0) -> None:
        """Stop kube-apiserver (SIGTERM), keep it down ``down_for`` seconds, start it again
        on the same address and port with the same etcd; return once it is ready."""
        with self._lock:
            if self._root is None:
                raise ControlPlaneError("control plane not started")
            _terminate(self._apiserver, self.stop_grace)
            time.sleep(down_for)
            self._spawn_apiserver()

    def _wait(
        self,
        what: str,
        proc: subprocess.Popen[bytes],
        log: Path,
        ready: Callable[[], bool],
    ) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if proc.poll() is not None:
                tail = _tail(log)
                error = _PortInUseError if "address already in use" in tail else ControlPlaneError
                raise error(
                    f"{what} exited with code {proc.returncode} while starting; "
                    f"last lines of {log}:\n{tail}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{what} not ready after {self.start_timeout:.0f}s; "
                    f"last lines of {log}:\n{_tail(log)}"
                )
            time.sleep(0.2)

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:  # noqa: S310
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _apiserver_ready(self) -> bool:
        for path in (
            "/readyz",
            "/api/v1/namespaces/default",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/admin",
            "/apis/apiextensions.k8s.io/v1",
        ):
            try:
                self.get_json(path, timeout=2)
            except (OSError, ValueError):
                return False
        return True

    def audit_events(
        self, *, namespace: str | None = None, resource: str | None = None
    ) -> list[dict[str, Any]]:
        """The audit events (``audit.k8s.io/v1`` Event objects) logged so far, oldest first.

        One event per mutating request (create, update, patch, delete, deletecollection; reads
        are not logged), at level Metadata, including refused ones: check
        ``event["responseStatus"]["code"]``. ``event["user"]["username"]`` is who made it.
        Optionally filtered by ``objectRef`` namespace and resource.
        """
        events = []
        try:
            lines = self.audit_log.read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line still being written
            ref = event.get("objectRef", {})
            if namespace is not None and ref.get("namespace") != namespace:
                continue
            if resource is not None and ref.get("resource") != resource:
                continue
            events.append(event)
        return events

    # -- raw access --------------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context that trusts the CA and presents the admin client certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        pki = self.root_dir / "pki"
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return ctx

    def get_json(self, path: str, *, timeout: float = 10.0) -> dict[str, Any]:
        """GET ``path`` as admin; the body parsed as JSON (``/readyz`` gives ``{}``)."""
        url = f"{self.url}{path}"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=timeout, context=self.ssl_context()) as resp:  # noqa: S310
            body = resp.read()
        try:
            parsed = json.loads(body)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {"items": parsed}

    # -- kubeconfigs and identities ----------------------------------------------------------

    def _kubeconfig(self, path: Path, user_name: str, user: dict[str, str]) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": CONTEXT_NAME,
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": _b64(self.ca_file.read_bytes()),
                    },
                }
            ],
            "users": [{"name": user_name, "user": user}],
            "contexts": [
                {
                    "name": CONTEXT_NAME,
                    "context": {"cluster": CONTEXT_NAME, "user": user_name},
                }
            ],
            "current-context": CONTEXT_NAME,
            "preferences": {},
        }
        return _write_private(path, yaml.safe_dump(config, sort_keys=False))

    def _write_admin_kubeconfig(self) -> None:
        pki = self.root_dir / "pki"
        self._kubeconfig(
            self.admin_kubeconfig,
            "admin",
            {
                "client-certificate-data": _b64((pki / "admin.crt").read_bytes()),
                "client-key-data": _b64((pki / "admin.key").read_bytes()),
            },
        )

    def client_cert_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig for ``user`` in ``groups``, authenticated by a CA-signed client cert.

        The identity has no RBAC grants until you create some.
        """
        if self._ca is None:
            raise ControlPlaneError("control plane not started")
        pair = self._ca.issue(user, list(groups))
        path = self.root_dir / "kubeconfigs" / f"user-{_safe_name(user)}.kubeconfig"
        return self._kubeconfig(
            path,
            user,
            {
                "client-certificate-data": _b64(pair.cert_pem),
                "client-key-data": _b64(pair.key_pem),
            },
        )

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> Path:
        """A token kubeconfig acting as ServiceAccount ``namespace/name``.

        Creates the namespace and the ServiceAccount if missing; the token comes from the
        TokenRequest API (audience: the API server's).
        """
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            try:
                core.create_namespace(
                    client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace))
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
            try:
                core.create_namespaced_service_account(
                    namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(
                    audiences=[SERVICE_ACCOUNT_ISSUER], expiration_seconds=expiration_seconds
                )
            )
            token = core.create_namespaced_service_account_token(name, namespace, request)
        user_name = f"system:serviceaccount:{namespace}:{name}"
        path = (
            self.root_dir
            / "kubeconfigs"
            / f"sa-{_safe_name(namespace)}-{_safe_name(name)}.kubeconfig"
        )
        return self._kubeconfig(path, user_name, {"token": str(token.status.token)})

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for ``kubeconfig`` (default: the admin one)."""
        return config.new_client_from_config(config_file=str(kubeconfig or self.admin_kubeconfig))


class _PortInUseError(ControlPlaneError):
    pass


# --------------------------------------------------------------------------------------------
# Command line: start / stop / status by hand (the demo)
# --------------------------------------------------------------------------------------------


def _default_state_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"server-hardening-controlplane-{os.getuid()}"


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((state_dir / _STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(2)
    return stat.rpartition(")")[2].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _cmd_start(state_dir: Path, timeout: float) -> int:
    state = _read_state(state_dir)
    if state and _alive(int(state.get("pid", 0))):
        print(f"a control plane is already running (pid {state['pid']}): {state.get('url')}")
        print(f"kubeconfig: {state.get('kubeconfig')}")
        return 1

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    cp = ControlPlane(root_dir=state_dir, start_timeout=timeout, die_with_parent=True)
    try:
        started = time.monotonic()
        cp.start()
        state = {
            "pid": os.getpid(),
            "url": cp.url,
            "version": cp.version,
            "kubeconfig": str(cp.admin_kubeconfig),
            "ca_file": str(cp.ca_file),
            "apiserver_log": str(cp.apiserver_log),
            "etcd_log": str(cp.etcd_log),
            "children": cp.pids,
        }
        (state_dir / _STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        print(f"control plane ready in {time.monotonic() - started:.1f}s: {cp.url} ({cp.version})")
        print(f"kubeconfig: {cp.admin_kubeconfig}")
        print(f"  export KUBECONFIG={cp.admin_kubeconfig}")
        print(f"logs: {cp.apiserver_log} {cp.etcd_log}")
        print(
            "stop with Ctrl-C, or: python -m server_hardening_dev.controlplane stop "
            f"--state-dir {state_dir}",
            flush=True,
        )
        while not stopping.wait(1.0):
            if not cp.running:
                print("a control plane process exited unexpectedly:", file=sys.stderr)
                print(_tail(cp.apiserver_log), file=sys.stderr)
                print(_tail(cp.etcd_log), file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping control plane", file=sys.stderr, flush=True)
        cp.stop()
    return 0


def _cmd_stop(state_dir: Path, timeout: float) -> int:
    state = _read_state(state_dir)
    if state is None:
        print(f"no control plane state in {state_dir}; nothing to stop")
        return 0
    pid = int(state.get("pid", 0))
    if pid and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            print(f"control plane (pid {pid}) did not stop within {timeout:.0f}s", file=sys.stderr)
            return 1
    # The foreground process is gone; clean up whatever it could not (e.g. it was SIGKILLed).
    children = state.get("children", {})
    for name, child in children.items() if isinstance(children, dict) else ():
        if _alive(int(child)) and name in _cmdline(int(child)):
            os.kill(int(child), signal.SIGKILL)
    if (state_dir / _MARKER).exists():
        shutil.rmtree(state_dir, ignore_errors=True)
    print(f"control plane stopped ({state.get('url')})")
    return 0


def _cmd_status(state_dir: Path) -> int:
    state = _read_state(state_dir)
    if state is None or not _alive(int(state.get("pid", 0))):
        print("not running")
        return 1
    print(json.dumps(state, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``start`` (foreground until Ctrl-C/SIGTERM), ``stop`` or ``status`` a control plane."""
    parser = argparse.ArgumentParser(
        prog="python -m server_hardening_dev.controlplane",
        description="Run a local kube-apiserver + etcd (loopback only) for the demo and tests.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("start", "build binaries if missing, start, and stay in the foreground"),
        ("stop", "stop the control plane started with the same --state-dir"),
        ("status", "print the state of a running control plane"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument(
            "--state-dir",
            type=Path,
            default=_default_state_dir(),
            help="directory for certificates, kubeconfig, logs, etcd data and state.json "
            "(deleted on stop; default: %(default)s)",
        )
        p.add_argument("--timeout", type=float, default=180.0, help="seconds (default 180)")
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    if args.command == "start":
        return _cmd_start(state_dir, args.timeout)
    if args.command == "stop":
        return _cmd_stop(state_dir, args.timeout)
    return _cmd_status(state_dir)


if __name__ == "__main__":
    sys.exit(main())
