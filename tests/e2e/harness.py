"""Running the operator against the real local control plane, as the chart's ServiceAccount.

Bounded waits (``wait_for``) poll for a state and fail with what was last seen; no test asserts
on how long anything took.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, utils
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "serverhardening.yaml"
GROUP, VERSION, PLURAL = "hardening.circleci.com", "v1alpha1", "serverhardenings"
RELEASE_NAMESPACE = "server-hardening"

T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 60.0, every: float = 0.3
) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except ApiException as exc:
            last = f"ApiException {exc.status}"
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def install_crd(api: Any) -> None:
    ext = client.ApiextensionsV1Api(api)
    body = yaml.safe_load(CRD.read_text())
    try:
        ext.create_custom_resource_definition(body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        current = ext.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(body["metadata"]["name"], body)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_for("the CRD to be established", established)


def ensure_namespace(api: Any, name: str) -> None:
    try:
        client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    except ApiException as exc:
        if exc.status != 409:
            raise


def apply_objects(api: Any, objects: Iterable[Mapping[str, Any]]) -> None:
    """Create, or replace when present (RBAC objects re-rendered for another test)."""
    for obj in objects:
        try:
            utils.create_from_dict(api, dict(obj))
        except utils.FailToCreateError as exc:
            if not all(e.status == 409 for e in exc.api_exceptions):
                raise
            _replace_rbac(client.RbacAuthorizationV1Api(api), obj)


def _replace_rbac(rbac: Any, obj: Mapping[str, Any]) -> None:
    name, namespace = obj["metadata"]["name"], obj["metadata"].get("namespace")
    kind = obj["kind"]
    if kind == "ClusterRole":
        rbac.replace_cluster_role(name, obj)
    elif kind == "ClusterRoleBinding":
        rbac.replace_cluster_role_binding(name, obj)
    elif kind == "Role":
        rbac.replace_namespaced_role(name, namespace, obj)
    elif kind == "RoleBinding":
        rbac.replace_namespaced_role_binding(name, namespace, obj)


def chart_rbac(namespaces: list[str]) -> tuple[list[dict[str, Any]], str]:
    """The chart's RBAC for these watched namespaces, and its ServiceAccount name."""
    sys.path.insert(0, str(REPO / "tests" / "packaging"))
    from hardening_chart import rbac_objects, render_chart, service_account

    rendered = render_chart({"watchNamespaces": namespaces}, namespace=RELEASE_NAMESPACE)
    _, name = service_account(rendered)
    return rbac_objects(rendered), name


def operator_identity(control_plane: Any, api: Any, namespaces: list[str]) -> tuple[Path, str]:
    """Everything the operator needs before it starts, as the chart installs it: the CRD, the
    release and watched namespaces, the chart's RBAC for them, and a token kubeconfig for the
    chart's ServiceAccount. Returns that kubeconfig and the ServiceAccount's name."""
    install_crd(api)
    ensure_namespace(api, RELEASE_NAMESPACE)
    for ns in namespaces:
        ensure_namespace(api, ns)
    rbac, service_account = chart_rbac(namespaces)
    apply_objects(api, rbac)
    kubeconfig: Path = control_plane.service_account_kubeconfig(RELEASE_NAMESPACE, service_account)
    return kubeconfig, service_account


def cloud_env(adc: Path) -> dict[str, str]:
    """The environment of an operator that talks to the local AWS and GCP doubles: fixed test
    credentials, no shared config, no metadata server, and the service-account key file whose
    token_uri is the local token endpoint."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_EC2_METADATA_DISABLED": "true",
        "GOOGLE_APPLICATION_CREDENTIALS": str(adc),
        "GOOGLE_CLOUD_PROJECT": "circleci-e2e",
    }


class OperatorProcess:
    """``hardening run`` as a subprocess, with its metrics endpoint."""

    def __init__(
        self,
        kubeconfig: Path,
        namespaces: list[str],
        env: Mapping[str, str] | None = None,
        extra_args: list[str] | None = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.extra_args = extra_args or []
        # Runs the operator under this command (e.g. one that hides the uid's passwd entry).
        self.command_prefix = list(command_prefix)
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"operator-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        args = [sys.executable, "-m", "server_hardening", "run", "--kubeconfig", str(self.kubeconfig),
                "--metrics-host", "127.0.0.1", "--metrics-port", str(self.port), "--verbose"]  # fmt: skip
        for ns in self.namespaces:
            args += ["--namespace", ns]
        args += self.extra_args
        self.env["PYTHONPATH"] = (
            str(REPO / "operator") + os.pathsep + self.env.get("PYTHONPATH", "")
        )
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*self.command_prefix, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env
        )
        wait_for(
            "the operator to be ready", lambda: self.http("/readyz")[0] == 200 or self._died(), 60
        )
        return self

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the operator exited {self.proc.returncode}:\n{self.log_tail()}")
        return False

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def metrics(self) -> dict[str, float]:
        """Every sample as ``'name{labels}' -> value`` (labels sorted as exposed)."""
        code, text = self.http("/metrics")
        assert code == 200, text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples

    def metric(self, series: str, /, **labels: str) -> float:
        total = 0.0
        for key, value in self.metrics().items():
            match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?", key)
            if not match or match.group(1) != series:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += value
        return total

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


KUBERNETES_ONLY = {
    "kubernetesNodes": {"cidrs": ["10.0.0.0/16"]},
    "nomadClients": {"cidrs": ["10.1.0.0/16"]},
    "externalVMs": {"enabled": False},
}


def resource(
    namespace: str,
    name: str = "circleci",
    *,
    topology: Mapping[str, Any] = KUBERNETES_ONLY,
    **spec: Any,
) -> dict[str, Any]:
    """A ServerHardening for the e2e tests: v4.3, checked every 5 s, ``spec`` on top."""
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServerHardening",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "serverVersion": "4.3",
            "driftCheckInterval": "5s",
            "topology": copy.deepcopy(dict(topology)),
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


def create(api: Any, body: dict[str, Any]) -> None:
    custom(api).create_namespaced_custom_object(
        GROUP, VERSION, body["metadata"]["namespace"], PLURAL, body
    )


def custom(api: Any) -> Any:
    return client.CustomObjectsApi(api)


def get_resource(api: Any, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = custom(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return body


def status_of(api: Any, namespace: str, name: str) -> dict[str, Any]:
    return get_resource(api, namespace, name).get("status") or {}


def target_status(api: Any, namespace: str, name: str, target: str) -> dict[str, Any]:
    for entry in status_of(api, namespace, name).get("targets") or []:
        if entry.get("name") == target:
            return dict(entry)
    return {}


def events_for(api: Any, namespace: str, name: str) -> list[Any]:
    events = client.CoreV1Api(api).list_namespaced_event(namespace).items
    return [
        e
        for e in events
        if e.involved_object.name == name and e.involved_object.kind == "ServerHardening"
    ]


def wait_for_event(
    api: Any, namespace: str, name: str, what: str, matches: Callable[[Any], bool]
) -> Any:
    """The first Event of the resource that ``matches``, waited for: the operator posts its
    events after it writes the status, so a test that saw the status must not race them."""
    return wait_for(
        what, lambda: next((e for e in events_for(api, namespace, name) if matches(e)), None)
    )


def network_policies(api: Any, namespace: str) -> dict[str, Any]:
    items = client.NetworkingV1Api(api).list_namespaced_network_policy(namespace).items
    return {p.metadata.name: p for p in items}


# -- leader election: several operator processes on one Lease ----------------------------------


def ha_rbac(namespace: str, lease: str) -> tuple[list[dict[str, Any]], str]:
    """The chart's RBAC with ha.enabled for one watched namespace, and its ServiceAccount."""
    sys.path.insert(0, str(REPO / "tests" / "packaging"))
    from hardening_chart import rbac_objects, render_chart, service_account

    rendered = render_chart(
        {"watchNamespaces": [namespace], "replicaCount": 2,
         "ha": {"enabled": True, "leaseName": lease}},
        namespace=RELEASE_NAMESPACE,
    )  # fmt: skip
    _, name = service_account(rendered)
    return rbac_objects(rendered), name


def bound_to(objects: list[dict[str, Any]], accounts: Iterable[str]) -> list[dict[str, Any]]:
    """The same RBAC with every binding granted to each of ``accounts``."""
    out = copy.deepcopy(objects)
    for obj in out:
        if obj["kind"] in {"RoleBinding", "ClusterRoleBinding"}:
            obj["subjects"] = [
                {"kind": "ServiceAccount", "name": account, "namespace": RELEASE_NAMESPACE}
                for account in accounts
            ]
    return out


class LeaderReplicas:
    """Operator processes with ``--leader-elect`` on one Lease (``leader-<namespace>`` in the
    release namespace), watching ``namespace``, each replica as a ServiceAccount of its own
    (so the audit log tells them apart by user) with the chart's HA RBAC. A replica's Lease
    identity is its name (``POD_NAME``) and a suffix: :meth:`leader` strips the suffix.
    ``election_args`` go to every replica's command line (e.g. other Lease timings)."""

    def __init__(
        self,
        control_plane: Any,
        api: Any,
        namespace: str,
        names: Sequence[str],
        election_args: Sequence[str] = (),
        **env: str,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.lease = f"leader-{namespace}"
        self.env = env
        self.election_args = list(election_args)
        install_crd(api)
        ensure_namespace(api, RELEASE_NAMESPACE)
        ensure_namespace(api, namespace)
        rbac, account = ha_rbac(namespace, self.lease)
        accounts = {name: f"{account}-{name}" for name in names}
        apply_objects(api, bound_to(rbac, accounts.values()))
        self.kubeconfigs: dict[str, Path] = {
            name: control_plane.service_account_kubeconfig(RELEASE_NAMESPACE, account)
            for name, account in accounts.items()
        }
        #: ``{username: replica}`` for reading the audit log.
        self.users = {
            f"system:serviceaccount:{RELEASE_NAMESPACE}:{account}": name
            for name, account in accounts.items()
        }
        self.processes: dict[str, OperatorProcess] = {}

    def process(self, name: str, kubeconfig_of: str | None = None) -> OperatorProcess:
        """A replica's process, not started (``kubeconfig_of``: another replica's account)."""
        process = OperatorProcess(
            self.kubeconfigs[kubeconfig_of or name],
            [self.namespace],
            env={"POD_NAME": name, **self.env},
            extra_args=["--leader-elect", "--lease-namespace", RELEASE_NAMESPACE,
                        "--lease-name", self.lease, *self.election_args],
        )  # fmt: skip
        self.processes[name] = process
        return process

    def start(self, name: str, kubeconfig_of: str | None = None) -> OperatorProcess:
        """Start a replica; returns once its /readyz answers 200 (a standby is ready)."""
        return self.process(name, kubeconfig_of).start()

    def holder(self) -> str:
        try:
            lease = client.CoordinationV1Api(self.api).read_namespaced_lease(
                self.lease, RELEASE_NAMESPACE
            )
        except ApiException as exc:
            if exc.status == 404:
                return ""
            raise
        return str(lease.spec.holder_identity or "")

    def leader(self) -> str:
        """The replica holding the Lease ("" for none)."""
        return self.holder().split("_")[0]

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.kill()
