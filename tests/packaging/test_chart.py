"""The Helm chart, rendered by the real (pinned) helm: lint, schemas, security, RBAC, docs.

Checks against the real API server (dry run, Pod Security admission, access reviews) are in
test_chart_apiserver.py.
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hardening_chart import (
    ALERTS_PLAIN,
    CHART,
    CRD_CHART,
    CRD_SOURCE,
    DASHBOARD_CHART,
    DASHBOARD_SOURCE,
    README,
    VALUES_SCHEMA,
    VARIANTS,
    ChartError,
    by_kind,
    contract_series,
    documented_values,
    lint_chart,
    one,
    package_chart,
    rbac_objects,
    readme_with_table,
    render_chart,
    service_account,
    stale_files,
    value_leaves,
    values_table,
)

from server_hardening.election import LeaseTimings
from server_hardening_dev.controlplane import TestBinaries

# Kinds whose schema is a CRD, not a Kubernetes built-in: kubernetes_validate has no schema
# for them, so they are skipped in the offline schema check only (the API server checks them
# against their CRDs in test_chart_apiserver.py).
CRD_TYPED_KINDS = frozenset({"ServiceMonitor", "PrometheusRule", "ServerHardening"})
FORBIDDEN_VERBS = frozenset({"*", "escalate", "bind", "impersonate"})


def kubernetes_minor(binaries: TestBinaries) -> str:
    """The Kubernetes version the pinned binaries are built at, e.g. '1.34.0'."""
    match = re.search(r"k8s-v(\d+)\.(\d+)\.", binaries.directory.name)
    assert match, binaries.directory
    return f"{match.group(1)}.{match.group(2)}.0"


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any] | None]:
    return request.param, VARIANTS[request.param]


@pytest.fixture(scope="module")
def rendered(
    variant: tuple[str, dict[str, Any] | None], test_binaries: TestBinaries
) -> list[dict[str, Any]]:
    return render_chart(variant[1], include_crds=True)


def workload(rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in rendered if o["kind"] != "CustomResourceDefinition"]


def pod_spec(rendered: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(rendered, "Deployment")["spec"]["template"]["spec"]
    return spec


# --------------------------------------------------------------------------------------------
# helm lint / helm template


def test_helm_lint_passes_for_every_variant(variant: tuple[str, dict[str, Any] | None]) -> None:
    output = lint_chart(variant[1])
    assert "1 chart(s) linted, 0 chart(s) failed" in output


def test_every_variant_renders_the_core_objects(rendered: list[dict[str, Any]]) -> None:
    kinds = [o["kind"] for o in rendered]
    for kind in ("Deployment", "ServiceAccount", "Service", "ClusterRole", "NetworkPolicy"):
        assert kind in kinds
    assert kinds.count("CustomResourceDefinition") == 1
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in rendered]
    assert len(names) == len(set(names)), "two objects with the same kind/namespace/name"


def test_every_object_carries_the_chart_labels(rendered: list[dict[str, Any]]) -> None:
    for obj in workload(rendered):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "server-hardening", obj["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_manifests_validate_against_the_kubernetes_schemas_offline(
    rendered: list[dict[str, Any]], test_binaries: TestBinaries
) -> None:
    version = kubernetes_minor(test_binaries)
    checked = 0
    for obj in rendered:
        if obj["kind"] in CRD_TYPED_KINDS:
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 8


def test_the_chart_crd_is_the_repository_crd() -> None:
    assert CRD_SOURCE.exists(), "crds/serverhardening.yaml is missing (hardening crd > it)"
    assert CRD_CHART.read_text() == CRD_SOURCE.read_text(), (
        "helm/server-hardening/crds/serverhardening.yaml differs from crds/serverhardening.yaml:"
        " run python tests/packaging/hardening_chart.py sync"
    )


def test_generated_copies_are_in_sync(test_binaries: TestBinaries) -> None:
    stale = stale_files()
    assert not stale, (
        f"stale generated files {[str(p) for p in stale]}: "
        "run python tests/packaging/hardening_chart.py sync"
    )


# --------------------------------------------------------------------------------------------
# The Deployment


def test_cluster_wide_by_default() -> None:
    rendered = render_chart(None)
    args = one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["--all-namespaces", "--metrics-port=8080", "--log-format=json"]
    assert one(rendered, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert not by_kind(rendered, "PodDisruptionBudget")


def test_namespaced_watches_exactly_its_namespaces() -> None:
    rendered = render_chart(VARIANTS["namespaced"])
    container = pod_spec(rendered)["containers"][0]
    assert container["args"][:2] == [
        "--namespace=circleci-server",
        "--namespace=circleci-server-staging",
    ]
    assert "--all-namespaces" not in container["args"]
    assert "--log-format=text" in container["args"]


@pytest.mark.parametrize("name", ["ha", "namespaced-ha"])
def test_ha_elects_one_leader_on_a_lease_in_the_release_namespace(name: str) -> None:
    values = VARIANTS[name]
    assert values is not None
    rendered = render_chart(values, namespace="ops")
    deployment = one(rendered, "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container  # the image's entrypoint, as without HA
    ha = values["ha"]
    lease = ha.get("leaseName") or "server-hardening"
    args = container["args"]
    assert "--leader-elect" in args
    assert f"--lease-name={lease}" in args
    assert "--lease-namespace=ops" in args
    defaults = LeaseTimings()
    assert f"--lease-duration={ha.get('leaseDurationSeconds', defaults.lease_duration):g}" in args
    assert f"--renew-deadline={ha.get('renewDeadlineSeconds', defaults.renew_deadline):g}" in args
    assert f"--retry-period={ha.get('retryPeriodSeconds', defaults.retry_period):g}" in args
    assert not [a for a in args if a.startswith(("--peering", "--priority"))]
    assert deployment["spec"]["replicas"] == values["replicaCount"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pdb = one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    election = [
        r for r in by_kind(rendered, "Role") if r["metadata"]["name"].endswith("-leader-election")
    ]
    assert [r["metadata"]["namespace"] for r in election] == ["ops"]
    assert election[0]["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": [lease], "verbs": ["get", "update"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    ]  # fmt: skip
    (binding,) = [
        b
        for b in by_kind(rendered, "RoleBinding")
        if b["roleRef"]["name"] == election[0]["metadata"]["name"]
    ]
    assert binding["metadata"]["namespace"] == "ops"
    assert not [o for o in rendered if "kopf.dev" in str(o.get("apiVersion", ""))]


def test_the_charts_lease_timings_are_the_operators_defaults() -> None:
    """One set of defaults: the chart passes the operator's own (``hardening run``'s)."""
    ha = yaml.safe_load((CHART / "values.yaml").read_text())["ha"]
    defaults = LeaseTimings()
    assert (
        ha["leaseDurationSeconds"],
        ha["renewDeadlineSeconds"],
        ha["retryPeriodSeconds"],
    ) == (defaults.lease_duration, defaults.renew_deadline, defaults.retry_period)


def test_without_ha_there_is_no_lease_nor_its_rbac() -> None:
    rendered = render_chart({})
    args = pod_spec(rendered)["containers"][0]["args"]
    assert not [a for a in args if a.startswith(("--leader-elect", "--lease"))]
    rules = [rule for role in by_kind(rendered, "Role") + by_kind(rendered, "ClusterRole")
             for rule in role["rules"]]  # fmt: skip
    assert not [r for r in rules if "coordination.k8s.io" in r["apiGroups"]]
    assert one(rendered, "Deployment")["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize(
    ("ha", "message"),
    [
        (
            {"leaseDurationSeconds": 10, "renewDeadlineSeconds": 10},
            "must be below ha.leaseDurationSeconds",
        ),
        ({"renewDeadlineSeconds": 2, "retryPeriodSeconds": 2}, "above 1.2 x ha.retryPeriodSeconds"),
    ],
)
def test_lease_timings_that_cannot_keep_one_leader_are_refused(
    ha: dict[str, int], message: str
) -> None:
    with pytest.raises(ChartError, match=re.escape(message)):
        render_chart({"replicaCount": 2, "ha": {"enabled": True, **ha}})


def test_more_than_one_replica_without_ha_is_refused() -> None:
    with pytest.raises(ChartError, match=r"replicaCount > 1 needs ha\.enabled"):
        render_chart({"replicaCount": 2})


def test_a_resource_outside_the_watched_namespaces_is_refused() -> None:
    aws = VARIANTS["aws"]
    assert aws is not None
    spec = aws["serverHardening"]["spec"]  # a valid spec: values.schema.json checks it
    values = {
        "watchNamespaces": ["circleci-server"],
        "serverHardening": {"enabled": True, "namespace": "elsewhere", "spec": spec},
    }
    with pytest.raises(ChartError, match="is not in watchNamespaces"):
        render_chart(values)


def test_pod_meets_the_restricted_pod_security_standard(rendered: list[dict[str, Any]]) -> None:
    spec = pod_spec(rendered)
    pod_ctx = spec["securityContext"]
    for key in ("hostNetwork", "hostPID", "hostIPC", "hostUsers"):
        assert key not in spec
    assert pod_ctx["runAsNonRoot"] is True
    assert pod_ctx["runAsUser"] == 65532
    assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    allowed_volume_types = {
        "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
        "persistentVolumeClaim", "projected", "secret",
    }  # fmt: skip
    for volume in spec.get("volumes", []):
        assert set(volume) - {"name"} <= allowed_volume_types, volume
    for container in spec["containers"] + spec.get("initContainers", []):
        ctx = container["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx.get("privileged", False) is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert "add" not in ctx["capabilities"]
        assert ctx["runAsNonRoot"] is True
        assert isinstance(ctx["runAsUser"], int)
        assert ctx["runAsUser"] == 65532
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
        for port in container.get("ports", []):
            assert "hostPort" not in port
        assert {"mountPath": "/tmp", "name": "tmp"} in container["volumeMounts"]
        assert {"requests", "limits"} <= set(container["resources"])
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp


def test_probes_hit_healthz_and_readyz_on_the_metrics_port(rendered: list[dict[str, Any]]) -> None:
    container = pod_spec(rendered)["containers"][0]
    assert container["ports"] == [
        {"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"}
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    service = one(rendered, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http-metrics"


def test_no_secret_is_mounted_or_read_unless_existing_secret_is_set(
    variant: tuple[str, dict[str, Any] | None], rendered: list[dict[str, Any]]
) -> None:
    spec = pod_spec(rendered)
    container = spec["containers"][0]
    secret_volumes = [v for v in spec["volumes"] if "secret" in v]
    secret_env = [e for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
    if variant[0] != "static-keys":
        assert not secret_volumes
        assert not secret_env
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in {e["name"] for e in container["env"]}
        return
    assert [v["secret"]["secretName"] for v in secret_volumes] == ["server-hardening-cloud"]
    env = {e["name"]: e for e in container["env"]}
    assert env["GOOGLE_APPLICATION_CREDENTIALS"]["value"].endswith("/key.json")
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "server-hardening-cloud",
        "key": "AWS_ACCESS_KEY_ID",
    }
    mount = next(m for m in container["volumeMounts"] if m["name"] == "gcp-credentials")
    assert mount["readOnly"] is True


def test_cloud_identity_comes_from_service_account_annotations() -> None:
    aws = render_chart(VARIANTS["aws"])
    assert one(aws, "ServiceAccount")["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/server-hardening"
    }
    env = {e["name"]: e.get("value") for e in pod_spec(aws)["containers"][0]["env"]}
    assert env["AWS_REGION"] == "us-east-1"
    assert env["AWS_ENDPOINT_URL_EC2"].startswith("https://vpce-")
    gcp = render_chart(VARIANTS["gcp"])
    assert one(gcp, "ServiceAccount")["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": (
            "server-hardening@circleci-prod-1234.iam.gserviceaccount.com"
        )
    }


def test_server_hardening_resource_comes_from_values() -> None:
    values = VARIANTS["aws"]
    assert values is not None
    resource = one(render_chart(values), "ServerHardening")
    assert resource["apiVersion"] == "hardening.circleci.com/v1alpha1"
    assert resource["metadata"]["namespace"] == "circleci-server"
    assert resource["spec"] == values["serverHardening"]["spec"]
    assert not by_kind(render_chart(None), "ServerHardening")


# --------------------------------------------------------------------------------------------
# NetworkPolicy of the operator pod


def _ports(rule: dict[str, Any]) -> set[tuple[str, Any]]:
    return {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}


def test_operator_network_policy_allows_only_metrics_in_and_dns_api_cloud_out() -> None:
    rendered = render_chart(None)
    policy = one(rendered, "NetworkPolicy")["spec"]
    assert (
        policy["podSelector"]["matchLabels"]
        == one(rendered, "Deployment")["spec"]["selector"]["matchLabels"]
    )
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert _ports(ingress) == {("TCP", "http-metrics")}
    (peer,) = ingress["from"]
    assert peer["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
    }
    egress = {frozenset(_ports(rule)) for rule in policy["egress"]}
    assert egress == {
        frozenset({("UDP", 53), ("TCP", 53)}),
        frozenset({("TCP", 443), ("TCP", 6443)}),
        frozenset({("TCP", 443)}),
        frozenset({("TCP", 80), ("TCP", 988)}),
    }
    for rule in policy["egress"]:
        assert rule["to"], "an egress rule without peers would allow every destination"


def test_network_policy_narrows_to_the_configured_api_server() -> None:
    policy = one(render_chart(VARIANTS["gcp"]), "NetworkPolicy")["spec"]
    api_rules = [r for r in policy["egress"] if {"ipBlock": {"cidr": "172.16.0.2/32"}} in r["to"]]
    assert len(api_rules) == 1
    assert api_rules[0]["to"] == [{"ipBlock": {"cidr": "172.16.0.2/32"}}]
    assert _ports(api_rules[0]) == {("TCP", 443)}


# --------------------------------------------------------------------------------------------
# RBAC


def _rules(rendered: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{o['kind']} {o['metadata'].get('namespace', '')}/{o['metadata']['name']}", rule)
        for o in rbac_objects(rendered)
        if o["kind"] in ("ClusterRole", "Role")
        for rule in o["rules"]
    ]


def test_rbac_grants_no_secrets_and_no_wildcards(rendered: list[dict[str, Any]]) -> None:
    rules = _rules(rendered)
    assert rules
    for where, rule in rules:
        assert "secrets" not in rule["resources"], where
        assert "*" not in rule["resources"], where
        assert "*" not in rule["apiGroups"], where
        assert not FORBIDDEN_VERBS & set(rule["verbs"]), where
        assert "nonResourceURLs" not in rule, where
    bindings = [o for o in rendered if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    sa_namespace, sa_name = service_account(rendered)
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}
        ]


def test_cluster_wide_rbac_is_one_cluster_role_plus_the_framework_role() -> None:
    rendered = render_chart(None)
    roles = {o["metadata"]["name"]: o for o in by_kind(rendered, "ClusterRole")}
    assert set(roles) == {"server-hardening", "server-hardening-framework"}
    assert not by_kind(rendered, "Role")
    assert not by_kind(rendered, "RoleBinding")
    framework = roles["server-hardening-framework"]["rules"]
    assert {r["resources"][0] for r in framework} == {"customresourcedefinitions", "namespaces"}


def test_namespaced_rbac_is_a_role_per_namespace_and_only_crd_watch_cluster_wide() -> None:
    values = VARIANTS["namespaced-ha"]
    assert values is not None
    rendered = render_chart(values)
    (framework,) = by_kind(rendered, "ClusterRole")
    assert framework["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        }
    ]
    election = "server-hardening-leader-election"  # the Lease's Role, in the release namespace
    roles = [r for r in by_kind(rendered, "Role") if r["metadata"]["name"] != election]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(values["watchNamespaces"])
    bindings = [b for b in by_kind(rendered, "RoleBinding") if b["metadata"]["name"] != election]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(values["watchNamespaces"])
    for role in roles:  # the watched namespaces grant nothing about Leases
        assert not [r for r in role["rules"] if "coordination.k8s.io" in r["apiGroups"]]


# --------------------------------------------------------------------------------------------
# Monitoring objects


def test_service_monitor_and_prometheus_rule_carry_the_selector_labels() -> None:
    rendered = render_chart(VARIANTS["aws"])
    monitor = one(rendered, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "http-metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"] == one(rendered, "Service")["spec"]["selector"]
    )
    rule = one(rendered, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    plain = yaml.safe_load(ALERTS_PLAIN.read_text())
    assert rule["spec"] == plain


def test_grafana_dashboard_config_map_is_the_dashboard_file() -> None:
    config_map = one(render_chart(VARIANTS["aws"]), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"]["server-hardening.json"] == DASHBOARD_SOURCE.read_text().rstrip("\n")
    assert DASHBOARD_CHART.read_text() == DASHBOARD_SOURCE.read_text()
    assert not by_kind(render_chart(None), "ConfigMap")


def test_dashboard_queries_only_contract_series() -> None:
    dashboard = json.loads(DASHBOARD_SOURCE.read_text())
    assert dashboard["uid"] == "server-hardening"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bserver_hardening_\w+", e)}
    assert used, "the dashboard queries no server_hardening series"
    assert used <= contract_series(), used - contract_series()
    for wanted in (
        "server_hardening_drift",
        "server_hardening_reconciles_total",
        "server_hardening_api_calls_total",
        "server_hardening_last_drift_check_timestamp_seconds",
        "server_hardening_managed_rules",
    ):
        assert wanted in used
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------------------------
# values.yaml documentation


def test_every_value_is_documented_in_the_readme_table() -> None:
    documented = {d.key for d in documented_values()}
    readme = README.read_text()
    table_keys = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    assert documented == table_keys
    for key, _ in value_leaves():
        parts = key.split(".")
        covering = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
        assert any(c in table_keys for c in covering), f"values.yaml key {key} is not documented"


def test_readme_table_matches_values_yaml() -> None:
    readme = README.read_text()
    assert readme == readme_with_table(readme, values_table()), (
        "run python tests/packaging/hardening_chart.py sync"
    )


def test_values_documentation_parser_sees_nested_and_multiline_comments() -> None:
    text = "# -- top\na: 1\nb:\n  # -- first line\n  # second line\n  c: {}\n  d: [1]\n"
    docs = {d.key: d for d in documented_values(text)}
    assert docs["a"].description == "top"
    assert docs["b.c"].description == "first line second line"
    assert "b.d" not in docs
    assert dict(value_leaves(text)) == {"a": 1, "b.c": {}, "b.d": [1]}


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"
    assert Path(CHART / "values.yaml").exists()


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"watchNamespace": ["circleci-server"]}, "additional properties 'watchNamespace'"),
        ({"operator": {"logFormat": "xml"}}, "value must be one of"),
        ({"replicaCount": 0}, "minimum"),
        ({"alerts": {"driftPersists": {"for": "15 minutes"}}}, "does not match pattern"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "does not match pattern"),
        ({"metrics": {"port": 70000}}, "maximum"),
    ],
)
def test_values_schema_refuses_typos_and_bad_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ChartError, match=re.escape(complaint)):
        render_chart(values)


def test_values_schema_leaves_kubernetes_structures_free_form() -> None:
    schema = json.loads(VALUES_SCHEMA.read_text())
    props = schema["properties"]
    for key in ("resources", "podSecurityContext", "securityContext", "affinity"):
        assert props[key] == {"type": "object"}, key
    assert schema["additionalProperties"] is False


def test_helm_package_builds_an_archive_with_crds_and_files(tmp_path: Path) -> None:
    output = package_chart(tmp_path)
    with tarfile.open(output) as archive:
        names = set(archive.getnames())
    for member in (
        "server-hardening/Chart.yaml",
        "server-hardening/values.schema.json",
        "server-hardening/crds/serverhardening.yaml",
        "server-hardening/files/server-hardening.json",
        "server-hardening/templates/deployment.yaml",
        "server-hardening/README.md",
    ):
        assert member in names
