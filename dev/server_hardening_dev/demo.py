"""``hardening demo``: the whole product, locally, in one command (no cloud account, no Docker).

Six steps, each printed as it runs (a spinner on a terminal; plain lines with ``--no-progress``
or when stdout is not a terminal):

1. start a real kube-apiserver + etcd (:mod:`.controlplane`, binaries built on first use) and an
   EC2 API (moto's ``ThreadedMotoServer``, in this process), all on 127.0.0.1;
2. create the ``circleci-server`` namespace with a stand-in ``circleci-proxy`` Service, and in
   a simulated VPC the four security groups, ``nomadClients`` holding a world-open SSH rule and
   each group the default allow-all egress rule every new AWS group has;
3. install the CRD, apply ``examples/aws-v4.yaml`` pointed at those groups and that endpoint,
   run the operator (``python -m server_hardening run``) and wait for it to converge;
4. print the status, the NetworkPolicies and every security-group rule (managed or not);
5. delete a managed NetworkPolicy and revoke a managed security-group rule, then show the drift
   detected and repaired (Enforce) or reported and left alone (Audit): status, events and the
   ``/metrics`` lines that changed;
6. ``--keep``: stay up until Ctrl-C; else stop everything and delete the temporary directory.

Exit code 0 only when every step did what it printed; a failure names the step and the cause,
and everything is still stopped and deleted. Every wait is bounded.

moto is a development dependency (``pip install -e ./dev``), imported only here.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import io
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import yaml

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

    from server_hardening_dev.controlplane import ControlPlane

__all__ = ["run_demo"]

NAMESPACE = "circleci-server"
NAME = "circleci"
REGION = "us-east-1"
GROUP, VERSION, PLURAL = "hardening.circleci.com", "v1alpha1", "serverhardenings"
EXAMPLE = Path("examples") / "aws-v4.yaml"
DRIFT_CHECK_INTERVAL = "5s"
DRIFT_POLICY = "svh-default-deny"
DRIFT_ROW = "NOMAD-IN-1"  # the managed rule revoked in step 5: Nomad RPC from the cluster
ROLES = ("kubernetesNodes", "nomadClients", "externalVMs", "loadBalancers")
OWNER_TAG = "hardening.circleci.com/owner"
ROWS_ANNOTATION = "hardening.circleci.com/guide-rows"
EXPECTED_POLICIES = ("svh-default-deny", "svh-allow-namespace", "svh-allow-circleci-proxy")
METRIC_FAMILIES = (
    "server_hardening_drift_detected_total",
    "server_hardening_writes_total",
    "server_hardening_api_calls_total",
    "server_hardening_reconciles_total",
)
STEPS = 6

# Bounded waits (seconds).
OPERATOR_READY_TIMEOUT = 60.0
CONVERGE_TIMEOUT = 90.0
REPAIR_TIMEOUT = 60.0
AUDIT_CHECKS = 2  # in Audit, drift must survive this many further drift checks
AUDIT_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

T = TypeVar("T")


class StepError(Exception):
    """A step did not do what it said; the message names the cause."""


# ------------------------------------------------------------------------------------------
# Output: steps, a spinner on a terminal, plain lines otherwise


class Progress:
    """Step headers, indented lines, and (live only) a spinner with the current wait."""

    FRAMES = "|/-\\"

    def __init__(self, out: TextIO, *, live: bool) -> None:
        self.out = out
        self.live = live
        self._lock = threading.Lock()
        self._header = ""
        self._status = ""
        self._started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_plain_status = ""

    @contextlib.contextmanager
    def step(self, number: int, title: str) -> Iterator[None]:
        header = f"[{number}/{STEPS}] {title}"
        self._started = time.monotonic()
        if self.live:
            with self._lock:
                self._header, self._status = header, ""
            self._stop.clear()
            self._thread = threading.Thread(target=self._spin, name="demo-spinner", daemon=True)
            self._thread.start()
        else:
            self._write(f"{header}\n")
        try:
            yield
        except BaseException:
            self._end(header, ok=False)
            raise
        self._end(header, ok=True)

    def _end(self, header: str, *, ok: bool) -> None:
        took = time.monotonic() - self._started
        if self.live:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=2)
            mark = "\u2714" if ok else "\u2718"
            word = "" if ok else " FAILED"
            with self._lock:
                self._header = ""
                self.out.write(f"\r\x1b[2K{mark} {header}{word} ({took:.1f}s)\n\n")
                self.out.flush()
        else:
            self._write(f"    {'done' if ok else 'FAILED'} ({took:.1f}s)\n\n")

    def say(self, text: str = "") -> None:
        """A line of output (indented by the caller); never lost under the spinner."""
        if self.live:
            with self._lock:
                self.out.write(f"\r\x1b[2K{text}\n")
                self.out.flush()
        else:
            self._write(f"{text}\n")

    def status(self, text: str) -> None:
        """What is being waited for: the spinner's text, or one plain line when it changes."""
        if self.live:
            with self._lock:
                self._status = text
        elif text != self._last_plain_status:
            self._last_plain_status = text
            self._write(f"    ... {text}\n")

    def _write(self, text: str) -> None:
        with self._lock:
            self.out.write(text)
            self.out.flush()

    def _spin(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            with self._lock:
                if not self._header:
                    continue
                took = time.monotonic() - self._started
                line = f"{self.FRAMES[frame % 4]} {self._header}  {took:4.0f}s  {self._status}"
                width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
                self.out.write(f"\r\x1b[2K{line[:width]}")
                self.out.flush()
            frame += 1


class _BuildLines(io.StringIO):
    """A text stream for :func:`ensure_binaries`: each line of the build becomes output."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self._progress = progress
        self._pending = ""

    def write(self, s: str) -> int:
        self._pending += s
        while "\n" in self._pending:
            line, self._pending = self._pending.split("\n", 1)
            if line.strip():
                # Once: a plain (non-terminal) Progress prints status() as a line of its own,
                # so it is only the spinner's text, and only on a terminal.
                self._progress.say(f"    build: {line.strip()}")
                if self._progress.live:
                    self._progress.status(f"building: {line.strip()}")
        return len(s)


def table(progress: Progress, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    all_rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    for row in all_rows:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        progress.say(f"    {line}")


# ------------------------------------------------------------------------------------------
# Small helpers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _repo_root() -> Path:
    # dev/server_hardening_dev/demo.py -> the checkout is parents[2]
    return Path(__file__).resolve().parents[2]


def _package_parent() -> Path:
    # The product's source root, so the operator subprocess imports this checkout's package.
    return _repo_root() / "operator"


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    """Linux: SIGTERM the operator if the demo itself is killed without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _short(text: str, width: int = 150) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_metrics(text: str, families: Sequence[str] = METRIC_FAMILIES) -> dict[str, float]:
    """``'name{labels}' -> value`` for the samples of ``families`` (exposition format)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key.split("{", 1)[0] in families:
            samples[key] = float(value)
    return samples


def metric_diff(before: Mapping[str, float], after: Mapping[str, float]) -> list[list[str]]:
    rows = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, 0.0), after.get(key, 0.0)
        if old != new:
            rows.append([key, f"{old:g}", f"{new:g}", f"{new - old:+g}"])
    return rows


# ------------------------------------------------------------------------------------------
# moto: the EC2 endpoint


@dataclass
class Ec2Endpoint:
    """moto's server in a thread of this process, on a free loopback port."""

    server: Any = None
    url: str = ""
    port: int = 0
    undo: Callable[[], None] | None = None

    @staticmethod
    def check_installed() -> None:
        try:
            import moto.server  # noqa: F401
        except ImportError as exc:
            raise StepError(
                f"moto is not installed ({exc}); the demo's EC2 API is moto, a development "
                "dependency: pip install -e ./dev"
            ) from exc

    def start(self) -> None:
        self.check_installed()
        from moto import __version__ as moto_version
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        from server_hardening_dev.moto_ec2 import patched_moto

        patch = patched_moto()
        patch.__enter__()

        def undo() -> None:
            patch.__exit__(None, None, None)

        self.undo = undo
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.port = int(port)
        self.url = f"http://{host}:{port}"
        self.version = str(moto_version)

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop()
            self.server = None
        if self.undo is not None:
            self.undo()
            self.undo = None


# ------------------------------------------------------------------------------------------
# The demo


@dataclass
class Injected:
    """What step 5 broke, to look for it coming back (or not)."""

    policy: str
    rule_id: str
    rule_key: tuple[Any, ...]
    rule_text: str
    events_before: set[str] = field(default_factory=set)


class Demo:
    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        self.mode: str = args.mode
        self.keep: bool = bool(args.keep)
        live = not args.no_progress and out.isatty()
        self.p = Progress(out, live=live)
        self.tmp: Path | None = None
        self.cp: ControlPlane | None = None
        self.ec2_endpoint = Ec2Endpoint()
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_log: Path | None = None
        self.metrics_port = 0
        self.api: Any = None
        self._ec2: EC2Client | None = None
        self.groups: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.ports: dict[str, int] = {}
        self.blocker = ""  # what a probe last found in the way, for the timeout message

    # -- shared ----------------------------------------------------------------------------

    @property
    def ec2(self) -> EC2Client:
        if self._ec2 is None:
            import boto3

            from server_hardening.targets.aws import client_config

            self._ec2 = boto3.session.Session().client(
                "ec2",
                region_name=REGION,
                endpoint_url=self.ec2_endpoint.url,
                aws_access_key_id="demo",
                aws_secret_access_key="demo",  # noqa: S106 (moto accepts any credentials)
                config=client_config(),
            )
        return self._ec2

    def operator_alive(self) -> None:
        if self.operator is not None and self.operator.poll() is not None:
            raise StepError(f"the operator exited with code {self.operator.returncode}")

    def wait(
        self, what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.5
    ) -> T:
        self.p.status(f"waiting for {what} (up to {timeout:.0f}s)")
        self.blocker = ""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            self.operator_alive()
            try:
                value = probe()
            except Exception as exc:
                value, last = None, f"{type(exc).__name__}: {_short(str(exc), 200)}"
            else:
                last = value if value is not None else last
            if value:
                return value
            if time.monotonic() > deadline:
                seen = self.blocker or ("nothing yet" if last is None else repr(last))
                raise StepError(
                    f"timed out after {timeout:.0f}s waiting for {what}; last seen: {seen}"
                )
            time.sleep(every)

    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def resource(self) -> dict[str, Any]:
        body: dict[str, Any] = self.custom().get_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, NAME
        )
        return body

    def status(self) -> dict[str, Any]:
        return dict(self.resource().get("status") or {})

    def targets(self, status: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        status = self.status() if status is None else status
        return {str(t.get("name")): dict(t) for t in status.get("targets") or []}

    def policies(self) -> dict[str, Any]:
        from kubernetes import client

        items = client.NetworkingV1Api(self.api).list_namespaced_network_policy(NAMESPACE).items
        return {p.metadata.name: p for p in items}

    def rules(self) -> list[dict[str, Any]]:
        ids = list(self.groups.values())
        out = self.ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": ids}])
        return [dict(r) for r in out["SecurityGroupRules"]]

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return parse_metrics(resp.read().decode())

    def events(self) -> list[Any]:
        from kubernetes import client

        items = client.CoreV1Api(self.api).list_namespaced_event(NAMESPACE).items
        return sorted(
            (
                e
                for e in items
                if e.involved_object.kind == "ServerHardening" and e.involved_object.name == NAME
            ),
            key=lambda e: int(e.metadata.resource_version or 0),  # etcd order: as posted
        )

    def role_of(self, group_id: str) -> str:
        for role, gid in self.groups.items():
            if gid == group_id:
                return role
        return group_id

    # -- step 1 ----------------------------------------------------------------------------

    def start(self) -> None:
        from server_hardening_dev.controlplane import (
            CONTROL_PLANE_BINARIES,
            ControlPlane,
            ensure_binaries,
        )

        self.ec2_endpoint.check_installed()  # fail before minutes of building, not after
        self.p.status("checking the kube-apiserver and etcd binaries")
        self.p.say("    kube-apiserver and etcd: pinned builds (the first run builds them from")
        self.p.say("    source with scripts/testbin, which takes several minutes once)")
        binaries = ensure_binaries(progress=_BuildLines(self.p), names=CONTROL_PLANE_BINARIES)
        self.tmp = Path(tempfile.mkdtemp(prefix="server-hardening-demo-"))
        self.p.say(f"    temporary directory: {self.tmp}")
        self.p.status("starting etcd and kube-apiserver")
        self.cp = ControlPlane(binaries, root_dir=self.tmp / "controlplane")
        self.cp.start()
        self.pids.update(self.cp.pids)
        self.ports["kube-apiserver"] = int(self.cp.url.rsplit(":", 1)[1])
        self.p.say(f"    kube-apiserver {self.cp.version} at {self.cp.url} (with etcd)")
        self.p.status("starting the EC2 API (moto)")
        self.ec2_endpoint.start()
        self.ports["ec2"] = self.ec2_endpoint.port
        self.p.say(
            f"    EC2 API (moto {self.ec2_endpoint.version}) at {self.ec2_endpoint.url}, "
            f"region {REGION}"
        )
        self.api = self.cp.api_client()

    # -- step 2 ----------------------------------------------------------------------------

    def seed(self) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        core.create_namespaced_service(
            NAMESPACE,
            {
                "metadata": {"name": "circleci-proxy", "labels": {"app": "circleci-proxy"}},
                "spec": {
                    "selector": {"app": "circleci-proxy"},
                    "ports": [
                        {"name": "http", "port": 80, "targetPort": 8080},
                        {"name": "https", "port": 443, "targetPort": 8443},
                        {"name": "nomad-rpc", "port": 4647, "targetPort": 4647},
                    ],
                },
            },
        )
        self.p.say(
            f"    namespace {NAMESPACE}; Service circleci-proxy (selector app=circleci-proxy"
        )
        self.p.say("    ports 80->8080, 443->8443, 4647->4647): the v4 frontend and Nomad RPC")
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        for role in ROLES:
            created = self.ec2.create_security_group(
                GroupName=f"circleci-{role}", Description=f"CircleCI Server {role}", VpcId=vpc
            )
            self.groups[role] = created["GroupId"]
        self.ec2.authorize_security_group_ingress(
            GroupId=self.groups["nomadClients"],
            IpPermissions=[
                {
                    "IpProtocol": "tcp",
                    "FromPort": 22,
                    "ToPort": 22,
                    "IpRanges": [
                        {"CidrIp": "0.0.0.0/0", "Description": "ssh for debugging (temporary)"}
                    ],
                }
            ],
        )
        rules = self.rules()
        rows = []
        for role, gid in self.groups.items():
            mine = [r for r in rules if r["GroupId"] == gid]
            what = []
            if any(_is_default_egress(r) for r in mine):
                what.append("default allow-all egress")
            if any(_is_world_ssh(r) for r in mine):
                what.append("world-open SSH (tcp 22 from 0.0.0.0/0)")
            if role == "nomadClients" and not any(_is_world_ssh(r) for r in mine):
                raise StepError(f"the world-open SSH rule is not in {gid}")
            if not any(_is_default_egress(r) for r in mine):
                raise StepError(f"{gid} has no default egress rule")
            rows.append([role, gid, str(len(mine)), ", ".join(what)])
        self.p.say(f"    VPC {vpc} (10.0.0.0/16) with four security groups:")
        table(self.p, ["ROLE", "GROUP", "RULES", "WHAT IS IN IT"], rows)

    # -- step 3 ----------------------------------------------------------------------------

    def install(self) -> None:
        from kubernetes import client

        from server_hardening.crd import crd

        ext = client.ApiextensionsV1Api(self.api)
        body = crd()
        ext.create_custom_resource_definition(body)
        name = body["metadata"]["name"]

        def established() -> bool:
            got = ext.read_custom_resource_definition(name)
            return any(
                c.type == "Established" and c.status == "True" for c in got.status.conditions or []
            )

        self.wait("the CRD to be established", established, 30)
        self.p.say(f"    CRD {name} installed (hardening crd)")

        resource = self.example()
        self.custom().create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, resource)
        self.start_operator()
        self.wait("the resource to converge", self.converged, CONVERGE_TIMEOUT)
        if self.mode == "Audit":
            self.p.say(
                "    switching spec.mode to Audit (a paused enforcement: report, never write)"
            )
            self.custom().patch_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, NAME, {"spec": {"mode": "Audit"}}
            )
            self.wait("the Audit report", self.audited, CONVERGE_TIMEOUT)
        status = self.status()
        self.p.say(
            f"    status.phase: {status.get('phase')} "
            f"(reason {_condition(status, 'Ready').get('reason', '?')})"
        )

    def example(self) -> dict[str, Any]:
        path = _repo_root() / EXAMPLE
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except OSError as exc:
            raise StepError(
                f"cannot read {path} ({exc.strerror}); run the demo from a source checkout"
            ) from exc
        body = copy.deepcopy(next(d for d in docs if d.get("kind") == "ServerHardening"))
        spec = body["spec"]
        was = dict(spec["aws"]["securityGroups"])
        spec["aws"]["securityGroups"] = dict(self.groups)
        spec["aws"]["endpointUrl"] = self.ec2_endpoint.url
        spec["aws"]["region"] = REGION
        old_interval = spec.get("driftCheckInterval", "60s")
        spec["driftCheckInterval"] = DRIFT_CHECK_INTERVAL
        spec["unmanagedRules"] = "Report"
        # Audit needs something managed to drift from: the rules are laid down in Enforce
        # first (step 3), then the mode is switched.
        spec["mode"] = "Enforce"
        body["metadata"] = {"name": NAME, "namespace": NAMESPACE}
        self.p.say(f"    applied {EXAMPLE} as {NAMESPACE}/{NAME}, with:")
        for role in ROLES:
            self.p.say(
                f"      spec.aws.securityGroups.{role}: {was.get(role)} -> {self.groups[role]}"
            )
        self.p.say(f"      spec.aws.endpointUrl: {self.ec2_endpoint.url}")
        self.p.say(f"      spec.driftCheckInterval: {old_interval} -> {DRIFT_CHECK_INTERVAL}")
        self.p.say("      spec.unmanagedRules: Report")
        self.p.say(f"      spec.mode: Enforce{' (then Audit)' if self.mode == 'Audit' else ''}")
        return dict(body)

    def start_operator(self) -> None:
        assert self.cp is not None
        assert self.tmp is not None
        self.metrics_port = _free_port()
        self.operator_log = self.tmp / "operator.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            {
                "AWS_ACCESS_KEY_ID": "demo",
                "AWS_SECRET_ACCESS_KEY": "demo",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true",
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(_package_parent()), os.environ.get("PYTHONPATH", "")) if p
                ),
                "PYTHONUNBUFFERED": "1",
            }
        )
        argv = [sys.executable, "-m", "server_hardening", "run", "--namespace", NAMESPACE,
                "--kubeconfig", str(self.cp.admin_kubeconfig), "--metrics-host", "127.0.0.1",
                "--metrics-port", str(self.metrics_port)]  # fmt: skip
        with self.operator_log.open("wb") as log:
            self.operator = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops it in order
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
        self.pids["operator"] = self.operator.pid
        self.ports["metrics"] = self.metrics_port
        self.p.say(
            f"    operator: python -m server_hardening run --namespace {NAMESPACE} "
            f"(pid {self.operator.pid}, admin kubeconfig)"
        )

        def ready() -> bool:
            try:
                url = f"http://127.0.0.1:{self.metrics_port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return bool(resp.status == 200)
            except (OSError, urllib.error.URLError):
                return False

        self.wait("the operator to be ready (/readyz)", ready, OPERATOR_READY_TIMEOUT)
        self.p.say(f"    metrics: http://127.0.0.1:{self.metrics_port}/metrics")

    def converged(self) -> dict[str, Any] | None:
        """Every managed rule in place: the NetworkPolicies exist, every desired security-group
        rule is there and owned, nothing missing or erroring. With the unmanaged world-open SSH
        rule reported (not removed) the phase is Drifted/UnmanagedWidening, not Enforced."""
        status = self.status()
        targets = self.targets(status)
        ready = _condition(status, "Ready")
        reason = ready.get("reason")
        self.blocker = (
            f"phase {status.get('phase')} ({reason}: {ready.get('message')}); "
            + "; ".join(
                f"{n}: managedRules {t.get('managedRules')}, drift {t.get('drift')}, "
                f"lastError {t.get('lastError') or '-'}"
                for n, t in targets.items()
            )
        )
        settled = status.get("phase") == "Enforced" or (
            status.get("phase") == "Drifted" and reason == "UnmanagedWidening"
        )
        if not settled or set(targets) != {"kubernetes", "aws"}:
            return None
        if any(
            t.get("lastError") or (t.get("drift") or {}).get("missing") or not t.get("managedRules")
            for t in targets.values()
        ):
            return None
        policies = sorted(self.policies())
        if set(policies) != set(EXPECTED_POLICIES):
            self.blocker += f"; NetworkPolicies: {', '.join(policies) or 'none'}"
            return None
        owned = [r for r in self.rules() if _owner(r)]
        if len(owned) != int(targets["aws"]["managedRules"]):
            self.blocker += f"; {len(owned)} owned security-group rules in EC2"
            return None
        return status

    def audited(self) -> dict[str, Any] | None:
        status = self.status()
        if int(status.get("observedGeneration") or 0) < 2:
            return None
        if status.get("phase") not in ("Drifted", "Auditing"):
            return None
        return status

    # -- step 4 ----------------------------------------------------------------------------

    def show(self) -> None:
        status = self.status()
        ready = _condition(status, "Ready")
        self.p.say(f"    ServerHardening {NAMESPACE}/{NAME} (kubectl get serverhardening):")
        self.p.say(f"    phase: {status.get('phase')}  ({ready.get('message') or ''})")
        table(
            self.p,
            ["CONDITION", "STATUS", "REASON"],
            [
                [str(c.get("type")), str(c.get("status")), str(c.get("reason"))]
                for c in status.get("conditions") or []
            ],
        )
        self.p.say()
        rows = []
        for name, target in self.targets(status).items():
            drift = target.get("drift") or {}
            rows.append(
                [
                    name,
                    str(target.get("managedRules")),
                    "/".join(
                        str(drift.get(k, 0))
                        for k in ("missing", "modified", "unexpected", "unmanagedWidening")
                    ),
                    str(target.get("findingsTotal", len(target.get("findings") or []))),
                    target.get("lastError") or "-",
                ]
            )
        table(
            self.p,
            ["TARGET", "MANAGED RULES", "DRIFT missing/modified/unexpected/unmanaged",
             "FINDINGS", "LAST ERROR"],
            rows,
        )  # fmt: skip
        findings = [
            f
            for t in self.targets(status).values()
            for f in t.get("findings") or []
            if f.get("severity") in ("error", "warning")
        ]
        if findings:
            self.p.say()
            self.p.say("    findings (errors and warnings):")
            for f in findings:
                row = f" [{f.get('row')}]" if f.get("row") else ""
                self.p.say(
                    f"      {f.get('severity'):<7} {f.get('code')}{row}: "
                    f"{_short(str(f.get('message')), 170)}"
                )

        self.p.say()
        self.p.say(f"    NetworkPolicies in {NAMESPACE} (kubectl get networkpolicy):")
        table(self.p, ["NAME", "POD SELECTOR", "TYPES", "INGRESS", "GUIDE ROWS"], self.np_rows())

        self.p.say()
        self.p.say("    security-group rules (aws ec2 describe-security-group-rules):")
        table(
            self.p,
            ["GROUP", "RULE", "DIRECTION", "PROTO", "PORTS", "PEER", "GUIDE ROWS", "OWNER"],
            self.rule_rows(),
        )
        unmanaged = [r for r in self.rules() if not _owner(r)]
        if not any(_is_world_ssh(r) for r in unmanaged):
            raise StepError("the world-open SSH rule is not listed as unmanaged")
        if sum(1 for r in unmanaged if _is_default_egress(r)) != len(ROLES):
            raise StepError("the default egress rules are not all listed as unmanaged")
        self.p.say(
            f"    {len(unmanaged)} UNMANAGED rules: the world-open SSH rule and the default egress"
        )
        self.p.say("    rules are reported (unmanagedRules: Report), never touched; with")
        self.p.say("    unmanagedRules: Remove the operator would revoke them.")

    def np_rows(self) -> list[list[str]]:
        rows = []
        for name, policy in sorted(self.policies().items()):
            selector = policy.spec.pod_selector.match_labels or {}
            ingress = []
            for rule in policy.spec.ingress or []:
                ports = ",".join(str(p.port) for p in rule.ports or []) or "all ports"
                peers = []
                for peer in rule._from or []:
                    if peer.ip_block is not None:
                        peers.append(peer.ip_block.cidr)
                    elif peer.pod_selector is not None and peer.namespace_selector is None:
                        peers.append("this namespace")
                    else:
                        peers.append("selected namespaces")
                ingress.append(f"{ports} from {','.join(peers) or 'anywhere'}")
            annotations = policy.metadata.annotations or {}
            rows.append(
                [
                    name,
                    ",".join(f"{k}={v}" for k, v in selector.items()) or "(all pods)",
                    ",".join(policy.spec.policy_types or []),
                    "; ".join(ingress) or "deny all",
                    annotations.get(ROWS_ANNOTATION, "-"),
                ]
            )
        return rows

    def rule_rows(self) -> list[list[str]]:
        rows = []
        rules = sorted(
            self.rules(),
            key=lambda r: (
                ROLES.index(self.role_of(r["GroupId"])),
                bool(r.get("IsEgress")),
                _owner(r) != "",
                str(r.get("IpProtocol")),
                int(r.get("FromPort", -1)),
                _peer(r, self.role_of),
            ),
        )
        for r in rules:
            owner = _owner(r)
            rows.append(
                [
                    self.role_of(r["GroupId"]),
                    str(r["SecurityGroupRuleId"]),
                    "egress" if r.get("IsEgress") else "ingress",
                    "all" if r.get("IpProtocol") == "-1" else str(r.get("IpProtocol")),
                    _ports(r),
                    _peer(r, self.role_of),
                    _rows_of(r),
                    "managed" if owner else "UNMANAGED" + _why_unmanaged(r),
                ]
            )
        return rows

    # -- step 5 ----------------------------------------------------------------------------

    def drift(self) -> None:
        from kubernetes import client

        before = self.metrics()
        rule = self.pick_rule()
        injected = Injected(
            policy=DRIFT_POLICY,
            rule_id=str(rule["SecurityGroupRuleId"]),
            rule_key=_rule_key(rule),
            rule_text=(
                f"{rule['SecurityGroupRuleId']} in {self.role_of(rule['GroupId'])} "
                f"({'egress' if rule.get('IsEgress') else 'ingress'} {rule.get('IpProtocol')} "
                f"{_ports(rule)} from {_peer(rule, self.role_of)}, {_rows_of(rule)})"
            ),
            events_before={e.metadata.name for e in self.events()},
        )
        client.NetworkingV1Api(self.api).delete_namespaced_network_policy(DRIFT_POLICY, NAMESPACE)
        self.p.say(f"    deleted NetworkPolicy {DRIFT_POLICY} (kubectl delete networkpolicy)")
        self.ec2.revoke_security_group_ingress(
            GroupId=rule["GroupId"], SecurityGroupRuleIds=[injected.rule_id]
        )
        self.p.say(f"    revoked security-group rule {injected.rule_text}")
        if self.mode == "Enforce":
            self.repaired(injected)
        else:
            self.reported(injected)
        after = self.metrics()
        self.show_outcome(injected, before, after)

    def pick_rule(self) -> dict[str, Any]:
        mine = [
            r
            for r in self.rules()
            if _owner(r) and not r.get("IsEgress") and r["GroupId"] == self.groups["nomadClients"]
        ]
        for r in mine:
            if DRIFT_ROW in _rows_of(r):
                return r
        if not mine:
            raise StepError("no managed ingress rule in the nomadClients group to revoke")
        return mine[0]

    def restored_rule(self, injected: Injected) -> dict[str, Any] | None:
        for r in self.rules():
            if _rule_key(r) == injected.rule_key and _owner(r):
                return r
        return None

    def new_events(self, injected: Injected) -> list[Any]:
        return [e for e in self.events() if e.metadata.name not in injected.events_before]

    def _seen_drift(self, injected: Injected, target: str, text: str) -> bool:
        return any(
            e.reason == "DriftDetected" and e.message.startswith(f"{target}:") and text in e.message
            for e in self.new_events(injected)
        )

    def repaired(self, injected: Injected) -> None:
        captured: dict[str, dict[str, Any]] = {}

        def capture() -> None:
            for name, target in self.targets().items():
                last = target.get("lastDrift") or {}
                if name not in captured and last.get("missing"):
                    captured[name] = dict(last)

        def policy_back() -> Any:
            capture()
            return self.policies().get(DRIFT_POLICY)

        def rule_back() -> Any:
            capture()
            return self.restored_rule(injected)

        started = time.monotonic()
        policy = self.wait(
            f"NetworkPolicy {DRIFT_POLICY} to be restored", policy_back, REPAIR_TIMEOUT
        )
        self.p.say(
            f"    NetworkPolicy {DRIFT_POLICY}: restored after {time.monotonic() - started:.1f}s "
            f"(uid {policy.metadata.uid[:8]}..., a new object)"
        )
        rule = self.wait("the security-group rule to be restored", rule_back, REPAIR_TIMEOUT)
        self.p.say(
            f"    security-group rule: restored after {time.monotonic() - started:.1f}s as "
            f"{rule['SecurityGroupRuleId']} (was {injected.rule_id})"
        )
        self.wait(
            "DriftDetected and Applied events for both targets",
            lambda: (
                self._seen_drift(injected, "kubernetes", f"missing {DRIFT_POLICY}")
                and self._seen_drift(injected, "aws", "missing")
                and all(
                    any(
                        e.reason == "Applied" and e.message.startswith(f"{t}:")
                        for e in self.new_events(injected)
                    )
                    for t in ("kubernetes", "aws")
                )
            ),
            REPAIR_TIMEOUT,
        )
        capture()
        self.p.say()
        self.p.say("    status.targets[].lastDrift at the check that found it:")
        self.last_drift_rows(captured)

    def reported(self, injected: Injected) -> None:
        captured: dict[str, dict[str, Any]] = {}

        def both_reported() -> dict[str, Any] | None:
            status = self.status()
            for name, target in self.targets(status).items():
                last = target.get("lastDrift") or {}
                if last.get("missing"):
                    captured[name] = dict(last)
            if {"kubernetes", "aws"} <= set(captured) and status.get("phase") == "Drifted":
                return status
            return None

        status = self.wait("the drift to be reported", both_reported, AUDIT_TIMEOUT)
        self.wait(
            "DriftDetected events for both targets",
            lambda: (
                self._seen_drift(injected, "kubernetes", f"missing {DRIFT_POLICY}")
                and self._seen_drift(injected, "aws", "missing")
            ),
            AUDIT_TIMEOUT,
        )
        checked = str(status.get("lastDriftCheckTime"))
        for n in range(AUDIT_CHECKS):

            def later(since: str = checked) -> str | None:
                now = str(self.status().get("lastDriftCheckTime"))
                return now if now > since else None

            checked = self.wait(f"drift check {n + 1} of {AUDIT_CHECKS} after the report", later,
                                AUDIT_TIMEOUT)  # fmt: skip
        if DRIFT_POLICY in self.policies():
            raise StepError(f"Audit mode: the NetworkPolicy {DRIFT_POLICY} was restored")
        if self.restored_rule(injected) is not None:
            raise StepError("Audit mode: the revoked security-group rule was restored")
        applied = [e for e in self.new_events(injected) if e.reason == "Applied"]
        if applied:
            raise StepError(f"Audit mode: the operator wrote: {applied[0].message}")
        phase = self.status().get("phase")
        if phase != "Drifted":
            raise StepError(f"Audit mode: phase is {phase}, expected Drifted")
        self.p.say(
            f"    after {AUDIT_CHECKS} more drift checks: NetworkPolicy {DRIFT_POLICY} still "
            "deleted, the security-group rule still revoked (not repaired: Audit)"
        )
        self.p.say(f"    status.phase: {phase}")
        self.p.say()
        self.p.say("    status.targets[].lastDrift:")
        self.last_drift_rows(captured)

    def last_drift_rows(self, captured: Mapping[str, Mapping[str, Any]]) -> None:
        rows = []
        for name in ("kubernetes", "aws"):
            last = captured.get(name) or self.targets().get(name, {}).get("lastDrift") or {}
            rows.append(
                [
                    name,
                    str(last.get("time", "-")),
                    *(
                        str(last.get(k, 0))
                        for k in ("missing", "modified", "unexpected", "unmanagedWidening")
                    ),
                    str(last.get("repaired", "-")).lower(),
                ]
            )
        table(
            self.p,
            ["TARGET", "TIME", "MISSING", "MODIFIED", "UNEXPECTED", "UNMANAGED", "REPAIRED"],
            rows,
        )
        if self.mode == "Enforce":
            self.p.say(
                "    (repaired: the managed drift was put back; the unmanaged rules stay, as"
            )
            self.p.say("    unmanagedRules: Report only reports them)")

    def show_outcome(
        self, injected: Injected, before: Mapping[str, float], after: Mapping[str, float]
    ) -> None:
        self.p.say()
        self.p.say("    events since the drift (kubectl get events):")
        seen: dict[tuple[str, str, str], int] = {}
        for e in self.new_events(injected):
            if e.reason in ("DriftDetected", "Applied"):
                key = (str(e.type), str(e.reason), _short(str(e.message), 120))
                seen[key] = seen.get(key, 0) + int(e.count or 1)
        table(
            self.p,
            ["TYPE", "REASON", "COUNT", "MESSAGE"],
            [[t, r, str(c), m] for (t, r, m), c in seen.items()],
        )
        self.p.say()
        self.p.say("    /metrics lines that changed (before -> after the drift):")
        rows = metric_diff(before, after)
        table(self.p, ["SERIES", "BEFORE", "AFTER", "CHANGE"], rows)
        missing = [
            k
            for k in rows
            if k[0].startswith("server_hardening_drift_detected_total") and 'kind="missing"' in k[0]
        ]
        if not missing:
            raise StepError("server_hardening_drift_detected_total{kind=missing} did not change")
        writes = [k for k in rows if k[0].startswith("server_hardening_writes_total")]
        if self.mode == "Enforce" and not writes:
            raise StepError("server_hardening_writes_total did not change")
        if self.mode == "Audit" and writes:
            raise StepError("server_hardening_writes_total changed in Audit mode")

    # -- step 6 ----------------------------------------------------------------------------

    def hold(self) -> None:
        assert self.cp is not None
        kubeconfig = self.cp.admin_kubeconfig
        self.p.say(f"    kubeconfig: {kubeconfig}")
        self.p.say(f"      export KUBECONFIG={kubeconfig}")
        self.p.say(f"      kubectl -n {NAMESPACE} get serverhardening {NAME} -o yaml")
        self.p.say(f"      kubectl -n {NAMESPACE} get networkpolicies,events")
        self.p.say(f"      kubectl -n {NAMESPACE} delete networkpolicy svh-allow-namespace")
        self.p.say(f"    metrics: http://127.0.0.1:{self.metrics_port}/metrics")
        self.p.say(f"    EC2 API: AWS_ENDPOINT_URL_EC2={self.ec2_endpoint.url} (any credentials)")
        self.p.say(f"    operator log: {self.operator_log}")
        self.p.say("    running; press Ctrl-C to stop everything")
        self.p.status("running until Ctrl-C")
        while True:
            self.operator_alive()
            if not self.cp.running:
                raise StepError("the control plane exited")
            time.sleep(1)

    def shutdown(self) -> list[str]:
        """Stop the operator, moto and the control plane; delete the temporary directory.
        Returns what could not be cleaned up (empty: nothing left behind)."""
        problems: list[str] = []
        if self.operator is not None and self.operator.poll() is None:
            self.p.status(f"stopping the operator (up to {STOP_TIMEOUT:.0f}s, then SIGKILL)")
            self.operator.send_signal(signal.SIGINT)
            try:
                self.operator.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait(10)
        self.p.status("stopping the EC2 API (moto)")
        self.ec2_endpoint.stop()
        if self._ec2 is not None:
            self._ec2.close()
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.close()
        if self.cp is not None:
            self.p.status("stopping kube-apiserver and etcd")
            self.cp.stop()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.tmp.exists():
                problems.append(f"{self.tmp} still exists")
        for what, pid in self.pids.items():
            if _alive(pid):
                problems.append(f"{what} (pid {pid}) still runs")
        for what, port in self.ports.items():
            if _port_open(port):
                problems.append(f"{what} port {port} still open")
        return problems


# ------------------------------------------------------------------------------------------
# Rules as shown


def _owner(rule: Mapping[str, Any]) -> str:
    for tag in rule.get("Tags") or []:
        if tag.get("Key") == OWNER_TAG:
            return str(tag.get("Value", ""))
    return ""


def _is_world_ssh(rule: Mapping[str, Any]) -> bool:
    return (
        not rule.get("IsEgress")
        and rule.get("IpProtocol") == "tcp"
        and int(rule.get("FromPort", -1)) <= 22 <= int(rule.get("ToPort", -1))
        and rule.get("CidrIpv4") == "0.0.0.0/0"
    )


def _is_default_egress(rule: Mapping[str, Any]) -> bool:
    return (
        bool(rule.get("IsEgress"))
        and rule.get("IpProtocol") == "-1"
        and rule.get("CidrIpv4") == "0.0.0.0/0"
        and not _owner(rule)
    )


def _why_unmanaged(rule: Mapping[str, Any]) -> str:
    if _is_world_ssh(rule):
        return " (world-open SSH)"
    if _is_default_egress(rule):
        return " (default egress)"
    return ""


def _ports(rule: Mapping[str, Any]) -> str:
    low, high = int(rule.get("FromPort", -1)), int(rule.get("ToPort", -1))
    if rule.get("IpProtocol") == "-1" or low == -1:
        return "all"
    return str(low) if low == high else f"{low}-{high}"


def _peer(rule: Mapping[str, Any], role_of: Callable[[str], str]) -> str:
    if rule.get("CidrIpv4"):
        return str(rule["CidrIpv4"])
    if rule.get("CidrIpv6"):
        return str(rule["CidrIpv6"])
    ref = rule.get("ReferencedGroupInfo") or {}
    if ref.get("GroupId"):
        return f"sg:{role_of(str(ref['GroupId']))}"
    if rule.get("PrefixListId"):
        return str(rule["PrefixListId"])
    return "?"


def _rows_of(rule: Mapping[str, Any]) -> str:
    match = re.search(r"\[([^\]]+)\]", str(rule.get("Description") or ""))
    return match.group(1) if match else "-"


def _rule_key(rule: Mapping[str, Any]) -> tuple[Any, ...]:
    ref = rule.get("ReferencedGroupInfo") or {}
    return (
        rule.get("GroupId"),
        bool(rule.get("IsEgress")),
        rule.get("IpProtocol"),
        rule.get("FromPort"),
        rule.get("ToPort"),
        rule.get("CidrIpv4"),
        rule.get("CidrIpv6"),
        ref.get("GroupId"),
    )


def _condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    for c in status.get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return {}


# ------------------------------------------------------------------------------------------
# Entry point


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _run_steps(demo: Demo) -> tuple[int, str]:
    """Steps 1-5 in order; stop at the first failure. Returns (exit code, failure)."""
    steps: list[tuple[str, Callable[[], None]]] = [
        ("start the control plane and the EC2 API", demo.start),
        ("create the namespace, its Services and the security groups", demo.seed),
        ("install the CRD, apply the resource and run the operator", demo.install),
        ("show what the operator manages and what it found", demo.show),
        (
            "inject drift and watch it repaired"
            if demo.mode == "Enforce"
            else "inject drift and watch it reported, not repaired",
            demo.drift,
        ),
    ]
    try:
        for number, (title, action) in enumerate(steps, start=1):
            try:
                with demo.p.step(number, title):
                    action()
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                cause = str(exc) if isinstance(exc, StepError) else f"{type(exc).__name__}: {exc}"
                return 1, f"step {number} ({title}): {_short(cause, 2000)}"
    except KeyboardInterrupt:
        return 130, "interrupted"
    return 0, ""


def _finish(demo: Demo, code: int) -> int:
    """Step 6: hold until Ctrl-C (``--keep``, only after success), then stop and delete
    everything. Cleanup runs after a failure or Ctrl-C too."""
    p = demo.p
    holding = demo.keep and code == 0
    title = "keep running until Ctrl-C, then clean up" if holding else "shut down and clean up"
    try:
        with p.step(6, title):
            if holding:
                try:
                    demo.hold()
                except KeyboardInterrupt:
                    p.say("    Ctrl-C: stopping")
                except StepError as exc:
                    print(f"hardening demo: step 6 ({title}): {exc}", file=sys.stderr)
                    code = 1
            # Further Ctrl-Cs (or SIGTERMs) must not cut the cleanup short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            pids = ", ".join(f"{k} {v}" for k, v in demo.pids.items()) or "none"
            p.say(f"    processes started: {pids}; moto ran in this process")
            problems = demo.shutdown()
            if problems:
                raise StepError("; ".join(problems))
            p.say(
                "    left behind: nothing (every process stopped, every port closed, "
                f"{demo.tmp or 'no temporary directory'} deleted)"
            )
    except StepError as exc:
        print(f"hardening demo: step 6 ({title}): {exc}", file=sys.stderr, flush=True)
        code = code or 1
    return code


def run_demo(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``hardening demo``: 0 when every step did what it printed, 1 on a failure, 130 on Ctrl-C."""
    demo = Demo(args, out or sys.stdout)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        demo.p.say(
            f"hardening demo (--mode {demo.mode}): CircleCI Server hardening, locally, "
            "on 127.0.0.1 only"
        )
        demo.p.say()
        code, failure = _run_steps(demo)
        if failure and demo.operator_log is not None:
            failure += f"\noperator log tail ({demo.operator_log}):\n{_tail(demo.operator_log)}"
        if failure:
            print(f"hardening demo: {failure}", file=sys.stderr, flush=True)
        code = _finish(demo, code)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, previous)
    if code == 0:
        demo.p.say("demo complete: every step did what it printed")
    return code
