"""Every shipped alert, end to end: a real Prometheus (built from the same pinned module as
promtool) scrapes the real operator on loopback, evaluates the shipped rules, and each alert
fires on real injected trouble and resolves after the repair.

The rules are deploy/prometheus/alerts.yaml with every ``for:`` shortened to a few seconds (the
expressions are the shipped ones, byte for byte: a test checks it); the promtool unit tests in
deploy/prometheus/alerts_test.yaml keep covering the real durations and the edges.

Prometheus scrapes as the Prometheus Operator does with the chart's ServiceMonitor: the job is
the Service's name, the target carries the operator's own ``namespace`` (``server-hardening``)
and the other target labels the Prometheus Operator adds, and ``honor_labels`` is what the
rendered ServiceMonitor says. So the alerts below also prove that they keep the resource's
namespace under that relabelling.

A world-open sensitive port pages on every target (AWS, GCP, a NetworkPolicy: one policy layer
judges all three), and an invalid edit keeps the last valid spec enforced while it pages.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e import test_operator_clouds
from e2e.harness import (
    GROUP,
    PLURAL,
    REPO,
    VERSION,
    OperatorProcess,
    cloud_env,
    create,
    custom,
    free_port,
    operator_identity,
    status_of,
    target_status,
    wait_for,
)
from e2e.harness import resource as harness_resource
from server_hardening_dev.controlplane import TestBinaries

# moto for EC2, the GCP fake and a local token endpoint: the cloud e2e tests' module fixture
# (bound here, so this module gets its own instance).
clouds = test_operator_clouds.clouds

pytestmark = pytest.mark.e2e

SHIPPED_RULES = REPO / "deploy" / "prometheus" / "alerts.yaml"
SHORT_FOR = "3s"
OPERATOR_NAMESPACE = "server-hardening"  # the chart's release namespace: the target's label
POOL = [f"svh-alerts-{uuid.uuid4().hex[:6]}-{i}" for i in range(8)]
NAME = "circleci"
ALERT_TIMEOUT = 120.0


def shortened_rules(text: str) -> dict[str, Any]:
    rules = yaml.safe_load(text)
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = SHORT_FOR
    return dict(rules)


def service_monitor_endpoint() -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests" / "packaging"))
    from hardening_chart import one, render_chart

    monitor = one(
        render_chart(
            {"metrics": {"serviceMonitor": {"enabled": True}}}, namespace=OPERATOR_NAMESPACE
        ),
        "ServiceMonitor",
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    return dict(endpoint)


class PrometheusProcess:
    """``prometheus`` on loopback with a throw-away TSDB, scraping one operator."""

    def __init__(self, binary: Path, workdir: Path, operator_port: int) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "prometheus.log"
        endpoint = service_monitor_endpoint()
        (workdir / "alerts.yaml").write_text(
            yaml.safe_dump(shortened_rules(SHIPPED_RULES.read_text()), sort_keys=False)
        )
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "alerts.yaml")],
            "scrape_configs": [
                {
                    # The Prometheus Operator's job for a ServiceMonitor is the Service's name.
                    "job_name": "server-hardening",
                    "metrics_path": endpoint["path"],
                    "scheme": endpoint["scheme"],
                    "honor_labels": bool(endpoint.get("honorLabels", False)),
                    "static_configs": [
                        {
                            "targets": [f"127.0.0.1:{operator_port}"],
                            # What its relabelling puts on every target of the ServiceMonitor.
                            "labels": {
                                "namespace": OPERATOR_NAMESPACE,
                                "service": "server-hardening",
                                "pod": "server-hardening-0",
                                "container": "operator",
                                "endpoint": endpoint["port"],
                            },
                        }
                    ],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusProcess:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for("Prometheus to be ready", lambda: self._ready() or self._died(), 60)
        return self

    def _died(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log_tail()}")
        return False

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def alerts(self, alertname: str, state: str = "firing") -> list[dict[str, str]]:
        return [
            a["labels"]
            for a in self.api("/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == alertname and a["state"] == state
        ]

    def wait_firing(self, alertname: str, /, **labels: str) -> dict[str, str]:
        def matching() -> dict[str, str] | None:
            for alert in self.alerts(alertname):
                if all(alert.get(k) == v for k, v in labels.items()):
                    return alert
            return None

        return wait_for(f"{alertname} {labels} to fire", matching, ALERT_TIMEOUT, every=1.0)

    def wait_resolved(self, alertname: str, /, **labels: str) -> None:
        def gone() -> bool:
            return not any(
                all(a.get(k) == v for k, v in labels.items())
                for state in ("firing", "pending")
                for a in self.alerts(alertname, state)
            )

        wait_for(f"{alertname} {labels} to resolve", gone, timeout=ALERT_TIMEOUT, every=1.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator(control_plane: Any, admin_api: Any, clouds: Any) -> Iterator[OperatorProcess]:
    _, _, adc = clouds
    kubeconfig, _ = operator_identity(control_plane, admin_api, POOL)
    env = cloud_env(adc)
    proc = OperatorProcess(kubeconfig, POOL, env=env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def prometheus(
    operator: OperatorProcess, test_binaries: TestBinaries, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusProcess]:
    prom = PrometheusProcess(
        test_binaries.prometheus, tmp_path_factory.mktemp("prometheus"), operator.port
    ).start()
    try:
        wait_for(
            "the first scrape",
            lambda: prom.api('/api/v1/query?query=up{job="server-hardening"}')["result"],
        )
        yield prom
    finally:
        prom.stop()


@pytest.fixture
def ns(admin_api: Any) -> str:
    name = POOL.pop()
    client.CoreV1Api(admin_api).create_namespaced_service(
        name,
        {
            "metadata": {"name": "circleci-proxy", "labels": {"app": "circleci-proxy"}},
            "spec": {
                "selector": {"app": "circleci-proxy"},
                "ports": [{"name": "https", "port": 443, "targetPort": 8443}],
            },
        },
    )
    return name


TOPOLOGY = {
    "kubernetesNodes": {"cidrs": ["10.0.0.0/20"]},
    "nomadClients": {"cidrs": ["10.0.16.0/20"]},
    "externalVMs": {"cidrs": ["10.0.32.0/20"]},
}


def resource(namespace: str, **spec: Any) -> dict[str, Any]:
    return harness_resource(namespace, NAME, topology=TOPOLOGY, **spec)


def patch_spec(api: Any, namespace: str, spec: dict[str, Any]) -> None:
    custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": spec}
    )


def phase(api: Any, namespace: str, *wanted: str) -> Any:
    return lambda: status_of(api, namespace, NAME).get("phase") in wanted


# -- the tests -----------------------------------------------------------------------------


def test_the_rules_prometheus_loads_are_the_shipped_expressions(tmp_path: Path) -> None:
    shipped = yaml.safe_load(SHIPPED_RULES.read_text())
    loaded = shortened_rules(SHIPPED_RULES.read_text())
    pairs = zip(
        (r for g in shipped["groups"] for r in g["rules"]),
        (r for g in loaded["groups"] for r in g["rules"]),
        strict=True,
    )
    for original, short in pairs:
        assert {k: v for k, v in short.items() if k != "for"} == {
            k: v for k, v in original.items() if k != "for"
        }


def test_drift_that_persists_fires_per_resource_namespace_and_resolves_when_repaired(
    prometheus: PrometheusProcess, admin_api: Any, ns: str
) -> None:
    # Two resources with the same name in two namespaces, both in Audit: what is missing
    # stays missing, so the drift persists; one alert each, keyed by the resource's namespace.
    other = POOL.pop()
    client.CoreV1Api(admin_api).create_namespaced_service(
        other, {"metadata": {"name": "circleci-proxy"},
                "spec": {"selector": {"app": "circleci-proxy"}, "ports": [{"port": 443}]}},
    )  # fmt: skip
    for namespace in (ns, other):
        create(admin_api, resource(namespace, mode="Audit"))
    for namespace in (ns, other):
        alert = prometheus.wait_firing(
            "ServerHardeningDriftPersists", namespace=namespace, name=NAME, target="kubernetes"
        )
        assert "exported_namespace" not in alert
        assert alert["severity"] == "warning"
    patch_spec(admin_api, ns, {"mode": "Enforce"})  # the repair: enforce what is missing
    prometheus.wait_resolved("ServerHardeningDriftPersists", namespace=ns)
    assert prometheus.alerts("ServerHardeningDriftPersists", "firing")  # the other one stays


def test_an_invalid_spec_fires_and_resolves_when_fixed(
    prometheus: PrometheusProcess, admin_api: Any, ns: str
) -> None:
    create(admin_api, resource(ns))
    wait_for("Enforced", phase(admin_api, ns, "Enforced"), timeout=60)
    # Admitted by the API server (CEL cannot add up address sets), refused by the operator.
    world_in_pieces = ["::/1", "8000::/2", "c000::/2"]
    patch_spec(
        admin_api, ns, {"access": {"adminSSH": {"enabled": True, "sources": world_in_pieces}}}
    )
    alert = prometheus.wait_firing("ServerHardeningSpecInvalid", namespace=ns, name=NAME)
    assert alert["severity"] == "warning"
    patch_spec(
        admin_api, ns, {"access": {"adminSSH": {"enabled": True, "sources": ["192.0.2.0/24"]}}}
    )
    prometheus.wait_resolved("ServerHardeningSpecInvalid", namespace=ns)


def test_an_invalid_edit_keeps_the_last_valid_spec_enforced(
    prometheus: PrometheusProcess, admin_api: Any, ns: str
) -> None:
    create(admin_api, resource(ns))
    wait_for("Enforced", phase(admin_api, ns, "Enforced"), timeout=60)
    world_in_pieces = ["0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/1"]
    patch_spec(
        admin_api, ns, {"access": {"adminSSH": {"enabled": True, "sources": world_in_pieces}}}
    )
    prometheus.wait_firing("ServerHardeningSpecInvalid", namespace=ns, name=NAME)
    policies = client.NetworkingV1Api(admin_api)
    policies.delete_namespaced_network_policy("svh-default-deny", ns)
    # Six drift-check intervals: a check against the last valid spec puts it back.
    wait_for(
        "the deleted default-deny to be put back",
        lambda: (
            "svh-default-deny"
            in {p.metadata.name for p in policies.list_namespaced_network_policy(ns).items}
        ),
        timeout=30,
    )


def _aws_resource(ns: str, world: Any, endpoint: str | None = None) -> dict[str, Any]:
    aws = world.aws_spec().model_dump(by_alias=True, exclude_none=True)
    if endpoint:
        aws["endpointUrl"] = endpoint
    return resource(ns, serverVersion="3", aws=aws,
                    kubernetes={"networkPolicies": {"enabled": False}})  # fmt: skip


def test_aws_world_open_ssh_then_an_unreachable_endpoint_fire_and_resolve(
    prometheus: PrometheusProcess, admin_api: Any, ns: str, clouds: Any
) -> None:
    from adapters.aws.world import make_world
    from server_hardening.rules import Role

    double, _, _ = clouds
    world = make_world(double)
    create(admin_api, _aws_resource(ns, world))
    wait_for("aws converged", phase(admin_api, ns, "Enforced", "Drifted"), timeout=90)

    # Someone opens SSH to the world on the Nomad clients' group, outside the operator.
    group = world.groups[Role.NOMAD_CLIENTS]
    world_ssh = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                  "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]  # fmt: skip
    world.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=world_ssh)
    alert = prometheus.wait_firing(
        "ServerHardeningWorldOpenSensitivePort", namespace=ns, name=NAME, target="aws"
    )
    assert alert["severity"] == "critical" and "exported_namespace" not in alert
    world.ec2.revoke_security_group_ingress(GroupId=group, IpPermissions=world_ssh)
    prometheus.wait_resolved("ServerHardeningWorldOpenSensitivePort", namespace=ns)

    # The EC2 endpoint becomes unreachable (nothing listens there): every pass fails, and
    # the last successful check ages.
    dead = f"http://127.0.0.1:{free_port()}"
    patch_spec(admin_api, ns, {"aws": {"endpointUrl": dead}})
    prometheus.wait_firing("ServerHardeningReconcileErrors", namespace=ns, name=NAME, target="aws")
    prometheus.wait_firing("ServerHardeningDriftCheckStale", namespace=ns, name=NAME, target="aws")
    patch_spec(admin_api, ns, {"aws": {"endpointUrl": double.url}})
    prometheus.wait_resolved("ServerHardeningReconcileErrors", namespace=ns)
    prometheus.wait_resolved("ServerHardeningDriftCheckStale", namespace=ns)


def seen_and_judged(api: Any, namespace: str, target: str, rule: str) -> None:
    """The operator found the injected rule and judged it; fail at once (not after the alert
    timeout) when it judged it anything but world-open on a sensitive port."""
    findings = wait_for(
        f"a finding about {rule} on {target}",
        lambda: [f for f in target_status(api, namespace, NAME, target).get("findings") or []
                 if rule in f.get("message", "")],
        timeout=90,
    )  # fmt: skip
    codes = {f["code"] for f in findings}
    assert "WorldOpenSensitivePort" in codes, codes


def test_gcp_world_open_ssh_fires(
    prometheus: PrometheusProcess, admin_api: Any, ns: str, clouds: Any
) -> None:
    _, fake, _ = clouds
    fake.seed_default_network("circleci-e2e", "alerts")
    gcp = {"project": "circleci-e2e", "network": "alerts", "endpoint": fake.url,
           "targetTags": {"kubernetesNodes": "alerts-k8s", "nomadClients": "alerts-nomad",
                          "externalVMs": "alerts-vm"}}  # fmt: skip
    topology = {**TOPOLOGY, "kubernetesPods": {"cidrs": ["10.4.0.0/14"]}}  # GKE's pods
    create(admin_api, harness_resource(ns, NAME, topology=topology, serverVersion="3", gcp=gcp,
                                       kubernetes={"networkPolicies": {"enabled": False}}))  # fmt: skip
    wait_for("gcp converged", phase(admin_api, ns, "Enforced", "Drifted"), timeout=90)
    fake.seed("circleci-e2e", {
        "name": "someone-opens-ssh", "network": "global/networks/alerts", "priority": 100,
        "direction": "INGRESS", "sourceRanges": ["0.0.0.0/0"], "targetTags": ["alerts-nomad"],
        "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
    })  # fmt: skip
    seen_and_judged(admin_api, ns, "gcp", "someone-opens-ssh")
    prometheus.wait_firing(
        "ServerHardeningWorldOpenSensitivePort", namespace=ns, name=NAME, target="gcp"
    )


def test_network_policy_world_open_ssh_fires(
    prometheus: PrometheusProcess, admin_api: Any, ns: str
) -> None:
    create(admin_api, resource(ns))
    wait_for("Enforced", phase(admin_api, ns, "Enforced"), timeout=60)
    client.NetworkingV1Api(admin_api).create_namespaced_network_policy(ns, {
        "metadata": {"name": "someone-opens-ssh"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                              "ports": [{"protocol": "TCP", "port": 22}]}]},
    })  # fmt: skip
    seen_and_judged(admin_api, ns, "kubernetes", "someone-opens-ssh")
    prometheus.wait_firing(
        "ServerHardeningWorldOpenSensitivePort", namespace=ns, name=NAME, target="kubernetes"
    )


def test_the_operator_down_fires_and_resolves_when_it_is_back(
    prometheus: PrometheusProcess, operator: OperatorProcess
) -> None:
    assert not prometheus.alerts("ServerHardeningOperatorDown")
    operator.kill()
    alert = prometheus.wait_firing("ServerHardeningOperatorDown")
    assert alert["severity"] == "critical"
    operator.start()  # same port: the same scrape target
    prometheus.wait_resolved("ServerHardeningOperatorDown")
