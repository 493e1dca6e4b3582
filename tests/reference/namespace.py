"""The CircleCI Server 4.x namespace as an install runs it, and CircleCI's monitoring reference
beside it, as Kubernetes objects (Services, pods) plus the flows through the NetworkPolicies.

Sources: the frontend is ``circleci-proxy`` (nginx in front of Kong; Services 80, 443 and, with
in-cluster Nomad, 4647: circleci-docs server-admin-4.x hardening and installation pages); the
Nomad server runs in the namespace unless externalised (4.8+); telegraf collects the services'
statsd metrics and, with the monitoring reference's values (``telegraf.config.outputs``:
``prometheus_client`` listening on ``:9273``), serves them to Prometheus on its Service port
``prometheus-client`` (circleci-server-monitoring-reference ``values.yaml``: the ServiceMonitor
selects ``app.kubernetes.io/instance: circleci-server``, ``app.kubernetes.io/name: telegraf``,
endpoint port ``prometheus-client``); its Prometheus, run by the Prometheus Operator, is in its
own namespace (``monitoring`` here) and its pods carry ``app.kubernetes.io/name: prometheus``
(the operator's label). Nomad agents serve Prometheus metrics on their HTTP port 4646
(server-terraform's startup template sets ``telemetry { prometheus_metrics = true }``); Kong's
status listener is 8100 (the Kong chart's default). The pods' container ports behind
circleci-proxy (8080, 8443, 4647) are inferred: the chart is not public.
"""

from __future__ import annotations

from typing import Any

from reference import flows as src
from reference.flows import Flow
from truth.np_eval import Outside, Pod

NAMESPACE = "circleci-server"
MONITORING = "monitoring"
INSTANCE = {"app.kubernetes.io/instance": "circleci-server"}


def _service(
    name: str, selector: dict[str, str], *ports: tuple[str, int, int | str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": dict(selector)},
        "spec": {
            "selector": dict(selector),
            "ports": [
                {"name": n, "port": port, "targetPort": target, "protocol": "TCP"}
                for n, port, target in ports
            ],
        },
    }


def services(in_cluster_nomad: bool = True) -> list[dict[str, Any]]:
    """The Services the operator resolves (and a few it does not need to)."""
    proxy_ports: list[tuple[str, int, int | str]] = [("http", 80, 8080), ("https", 443, 8443)]
    if in_cluster_nomad:
        proxy_ports.append(("nomad-rpc", 4647, 4647))
    out = [
        _service("circleci-proxy", {"app": "circleci-proxy"}, *proxy_ports),
        _service("kong", {"app": "kong"}, ("proxy", 80, 8000), ("status", 8100, 8100)),
        _service(
            "telegraf",
            {**INSTANCE, "app.kubernetes.io/name": "telegraf"},
            ("statsd", 8125, 8125),
            ("prometheus-client", 9273, 9273),
        ),
        _service("frontend", {"app": "frontend"}, ("http", 80, 3000)),
        _service("api-service", {"app": "api-service"}, ("http", 80, 3000)),
    ]
    if in_cluster_nomad:
        out.append(
            _service(
                "nomad-server",
                {"app": "nomad-server"},
                ("http", 4646, 4646),
                ("rpc", 4647, 4647),
                ("serf", 4648, 4648),
            )
        )
    return out


def pods(in_cluster_nomad: bool = True) -> dict[str, Pod]:
    """Pods of the server's namespace and of the monitoring reference (np_eval parties)."""
    out = {
        "proxy": Pod(NAMESPACE, {"app": "circleci-proxy"}, "10.8.1.10",
                     {"http": 8080, "https": 8443}),
        "kong": Pod(NAMESPACE, {"app": "kong"}, "10.8.1.11", {"proxy": 8000, "status": 8100}),
        # "prometheus-client" names the Service port; a container port name has at most 15
        # characters, so the pod's 9273 is reached by number.
        "telegraf": Pod(NAMESPACE, {**INSTANCE, "app.kubernetes.io/name": "telegraf"},
                        "10.8.1.12", {"statsd": 8125}),
        "frontend": Pod(NAMESPACE, {"app": "frontend"}, "10.8.1.13", {"http": 3000}),
        "api-service": Pod(NAMESPACE, {"app": "api-service"}, "10.8.2.14", {"http": 3000}),
        "prometheus": Pod(MONITORING, {"app.kubernetes.io/name": "prometheus",
                                       "prometheus": "prometheus"}, "10.8.3.20", {"web": 9090}),
        "grafana": Pod(MONITORING, {"app": "grafana"}, "10.8.3.21", {"http": 3000}),
        "stranger": Pod("team-x", {"app": "tool"}, "10.8.4.30"),
    }  # fmt: skip
    if in_cluster_nomad:
        out["nomad-server"] = Pod(NAMESPACE, {"app": "nomad-server"}, "10.8.2.15",
                                  {"http": 4646, "rpc": 4647, "serf": 4648})  # fmt: skip
    return out


OUTSIDE = {
    "user": Outside("198.51.100.7"),
    "node": Outside("10.10.0.10"),  # a NodePort hop arrives from a node address
    "nomad-client": Outside("10.20.0.10"),
}

# The ServerHardening's kubernetes section for CircleCI's monitoring reference.
MONITORING_SPEC = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": MONITORING}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    "ports": [9273, 4646, 8100],
}


def flows(in_cluster_nomad: bool = True) -> list[Flow]:
    """What must pass the NetworkPolicies (destination ports are pod ports)."""
    out = [
        Flow("users reach the proxy (client address kept)", "user", "proxy", "tcp", 8443,
             "LB-IN-2, CHOICE-NP-PORTS"),
        Flow("users reach the proxy through a NodePort hop", "node", "proxy", "tcp", 8443,
             "LB-IN-2, CHOICE-NP-SNAT"),
        Flow("the proxy reaches Kong", "proxy", "kong", "tcp", 8000, "CHOICE-NP-NAMESPACE"),
        Flow("services send statsd to telegraf", "api-service", "telegraf", "udp", 8125,
             "CHOICE-NP-NAMESPACE"),
        Flow("Prometheus scrapes telegraf", "prometheus", "telegraf", "tcp", 9273,
             f"CHOICE-NP-MONITORING; {src.DOCS_MONITORING}"),
        Flow("Prometheus scrapes Kong's status listener", "prometheus", "kong", "tcp", 8100,
             "CHOICE-NP-MONITORING (ports: 8100)"),
    ]  # fmt: skip
    if in_cluster_nomad:
        out += [
            Flow("Nomad clients reach the in-cluster server through the proxy", "nomad-client",
                 "proxy", "tcp", 4647, "LB-IN-4"),
            Flow("Prometheus scrapes the Nomad server's metrics", "prometheus", "nomad-server",
                 "tcp", 4646, "CHOICE-NP-MONITORING (ports: 4646)"),
        ]  # fmt: skip
    return out


# What must stay closed: the monitoring field opens the listed ports to the scraper only.
CLOSED = [
    Flow("another namespace's pod scrapes telegraf", "stranger", "telegraf", "tcp", 9273,
         "CHOICE-NP-DEFAULT-DENY"),
    Flow("Grafana (not the scraper) reaches telegraf", "grafana", "telegraf", "tcp", 9273,
         "CHOICE-NP-MONITORING podSelector"),
    Flow("Prometheus reaches an unlisted port", "prometheus", "api-service", "tcp", 3000,
         "CHOICE-NP-MONITORING ports"),
    Flow("the world reaches telegraf", "user", "telegraf", "tcp", 9273, "CHOICE-NP-DEFAULT-DENY"),
]  # fmt: skip
