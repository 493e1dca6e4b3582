"""Render the Helm chart with the real ``helm`` and keep its generated copies in sync.

Importable by other test tiers (the end-to-end test runs the operator as the chart's
ServiceAccount)::

    from hardening_chart import render_chart, rbac_objects, service_account
    objs = render_chart({"watchNamespaces": ["circleci-server"]}, namespace="server-hardening")
    for obj in rbac_objects(objs): ...

As a script, it regenerates what the chart and the plain files share (tests fail when they
drift apart)::

    python tests/packaging/hardening_chart.py sync     # write
    python tests/packaging/hardening_chart.py check    # exit 1 and show what is stale

Shared pieces: the CRD (repo ``crds/`` -> chart ``crds/``), the Grafana dashboard
(``deploy/grafana`` -> chart ``files/``), the alerts (chart PrometheusRule with default values
-> ``deploy/prometheus/alerts.yaml``), the values table in the chart's README (from the
``# --`` comments in values.yaml) and the chart's values.schema.json.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException

from server_hardening.model import CIDR_PATTERN

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "server-hardening"
RELEASE = "server-hardening"
NAMESPACE = "server-hardening"

CRD_SOURCE = REPO / "crds" / "serverhardening.yaml"
CRD_CHART = CHART / "crds" / "serverhardening.yaml"
DASHBOARD_SOURCE = REPO / "deploy" / "grafana" / "server-hardening.json"
DASHBOARD_CHART = CHART / "files" / "server-hardening.json"
ALERTS_PLAIN = REPO / "deploy" / "prometheus" / "alerts.yaml"
README = CHART / "README.md"

VALUES_DIR = Path(__file__).resolve().parent / "values"

# Test variants: name -> values (None: the chart's defaults); every values/*.yaml is one.
VARIANTS: dict[str, dict[str, Any] | None] = {"default": None} | {
    path.stem: yaml.safe_load(path.read_text()) for path in sorted(VALUES_DIR.glob("*.yaml"))
}

RBAC_KINDS = frozenset(
    {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"}
)

ALERTS_HEADER = """\
# Generated from helm/server-hardening/templates/prometheusrule.yaml with the chart's default
# values by `python tests/packaging/hardening_chart.py sync`. Do not edit: change the chart.
# Thresholds are the defaults (values.yaml `alerts`); the chart's PrometheusRule renders yours.
"""


class ChartError(RuntimeError):
    """helm failed; the message carries its stderr."""


@functools.cache
def helm_binary() -> Path:
    """The pinned ``helm`` built by scripts/testbin (built on first use)."""
    from server_hardening_dev.controlplane import ensure_binaries

    return ensure_binaries(names=("helm",)).helm  # not waiting for promtool and prometheus


def _helm(*args: str, values: Mapping[str, Any] | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="hardening-chart-") as tmp:
        argv = [str(helm_binary()), *args]
        if values:
            path = Path(tmp) / "values.yaml"
            path.write_text(yaml.safe_dump(dict(values), sort_keys=False))
            argv += ["--values", str(path)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ChartError(f"{' '.join(argv[:3])} ... failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def render_chart_text(
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
    include_crds: bool = False,
) -> str:
    """``helm template`` output as text."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    if include_crds:
        args.append("--include-crds")
    return _helm(*args, values=values)


def render_chart(
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """The chart's manifests for ``values`` (merged over values.yaml), as parsed objects."""
    text = render_chart_text(
        values, namespace=namespace, release=release, include_crds=include_crds
    )
    return [doc for doc in yaml.safe_load_all(text) if doc]


def lint_chart(values: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE) -> str:
    """``helm lint --strict``; returns its output, raises ChartError on failure."""
    return _helm("lint", "--strict", str(CHART), "--namespace", namespace, values=values)


def package_chart(destination: Path) -> Path:
    """``helm package`` into ``destination``; returns the archive's path."""
    _helm("package", str(CHART), "--destination", str(destination))
    (archive,) = destination.glob("server-hardening-*.tgz")
    return archive


def rbac_objects(rendered: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ServiceAccount, (Cluster)Roles and (Cluster)RoleBindings, in apply order."""
    order = {"ServiceAccount": 0, "ClusterRole": 1, "Role": 2, "ClusterRoleBinding": 3}
    picked = [dict(o) for o in rendered if o.get("kind") in RBAC_KINDS]
    return sorted(picked, key=lambda o: order.get(o["kind"], 4))


def service_account(rendered: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """``(namespace, name)`` of the ServiceAccount the Deployment runs as."""
    for obj in rendered:
        if obj.get("kind") == "Deployment":
            spec = obj["spec"]["template"]["spec"]
            return obj["metadata"]["namespace"], spec["serviceAccountName"]
    raise LookupError("no Deployment in the rendered chart")


def by_kind(rendered: Iterable[Mapping[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [dict(o) for o in rendered if o.get("kind") == kind]


def one(rendered: Iterable[Mapping[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(rendered, kind)
    if len(found) != 1:
        raise LookupError(f"expected one {kind}, found {len(found)}")
    return found[0]


def contract_series() -> set[str]:
    """Series names documented at the top of metrics.py (histograms with _bucket/_sum/_count)."""
    from server_hardening import metrics  # lazy: a script run needs operator/ on the path first

    names: set[str] = set()
    for match in re.finditer(
        r"``(server_hardening_\w+)(?:\{[^}]*\})?``\s+(\w+)", metrics.__doc__ or ""
    ):
        name, kind = match.groups()
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


# --------------------------------------------------------------------------------------------
# Applying rendered objects to an API server (real or server-side dry run)

# kind -> (API path prefix, plural, namespaced) for every kind the chart renders.
API_PATHS: dict[str, tuple[str, str, bool]] = {
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Service": ("/api/v1", "services", True),
    "ConfigMap": ("/api/v1", "configmaps", True),
    "Pod": ("/api/v1", "pods", True),
    "Namespace": ("/api/v1", "namespaces", False),
    "Deployment": ("/apis/apps/v1", "deployments", True),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets", True),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies", True),
    "ClusterRole": ("/apis/rbac.authorization.k8s.io/v1", "clusterroles", False),
    "ClusterRoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings", False),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles", True),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings", True),
    "CustomResourceDefinition": (
        "/apis/apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        False,
    ),
    "ServerHardening": ("/apis/hardening.circleci.com/v1alpha1", "serverhardenings", True),
    "ServiceMonitor": ("/apis/monitoring.coreos.com/v1", "servicemonitors", True),
    "PrometheusRule": ("/apis/monitoring.coreos.com/v1", "prometheusrules", True),
}


def create_object(api: Any, obj: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
    """POST ``obj`` with strict field validation (``dryRun=All`` when ``dry_run``).

    ``api`` is a ``kubernetes.client.ApiClient``; raises its ``ApiException`` on refusal.
    """
    prefix, plural, namespaced = API_PATHS[obj["kind"]]
    path = prefix
    if namespaced:
        path += f"/namespaces/{obj['metadata']['namespace']}"
    path += f"/{plural}"
    query = [("fieldValidation", "Strict")]
    if dry_run:
        query.append(("dryRun", "All"))
    result: dict[str, Any] = api.call_api(
        path,
        "POST",
        query_params=query,
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        body=dict(obj),
        response_type="object",
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
    )
    return result


def ensure_namespace(api: Any, name: str) -> None:
    try:
        create_object(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    except ApiException as exc:
        if exc.status != 409:
            raise


def install_rbac(api: Any, rendered: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """Create the chart's ServiceAccount and RBAC for real; return the SA's (namespace, name).

    The namespaces they live in are created when missing.
    """
    objects = rbac_objects(rendered)
    for obj in objects:
        if "namespace" in obj["metadata"]:
            ensure_namespace(api, obj["metadata"]["namespace"])
    for obj in objects:
        create_object(api, obj)
    return service_account(rendered)


# --------------------------------------------------------------------------------------------
# values.yaml documentation (helm-docs style `# --` comments)


@dataclass(frozen=True)
class ValueDoc:
    key: str  # dotted path
    default: Any
    description: str


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted leaf keys: scalars, lists and empty maps are leaves; maps are walked."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def value_leaves(values_text: str | None = None) -> list[tuple[str, Any]]:
    text = values_text if values_text is not None else (CHART / "values.yaml").read_text()
    return list(_leaves(yaml.safe_load(text)))


def documented_values(values_text: str | None = None) -> list[ValueDoc]:
    """Each ``# -- text`` comment (continued by following ``#`` lines) and the key under it.

    A comment documents the key right below it; when that key holds a non-empty map (e.g.
    ``resources``), the whole map is documented as one entry.
    """
    text = values_text if values_text is not None else (CHART / "values.yaml").read_text()
    data = yaml.safe_load(text)
    docs: list[ValueDoc] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = re.match(r"^( *)([A-Za-z0-9_.-]+):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        if pending is not None:
            default: Any = data
            for part in path.split("."):
                default = default[part]
            docs.append(ValueDoc(path, default, " ".join(pending)))
            pending = None
    return docs


def _default_cell(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return f"`{text}`".replace("|", "\\|")


def values_table(values_text: str | None = None) -> str:
    rows = ["| Key | Default | Description |", "|---|---|---|"]
    for doc in documented_values(values_text):
        description = doc.description.replace("|", "\\|")
        rows.append(f"| `{doc.key}` | {_default_cell(doc.default)} | {description} |")
    return "\n".join(rows) + "\n"


TABLE_BEGIN = "<!-- values-table:begin (generated from values.yaml; do not edit) -->\n"
TABLE_END = "<!-- values-table:end -->\n"


def readme_with_table(readme: str, table: str) -> str:
    start = readme.index(TABLE_BEGIN) + len(TABLE_BEGIN)
    end = readme.index(TABLE_END)
    return readme[:start] + table + readme[end:]


# --------------------------------------------------------------------------------------------
# values.schema.json (generated: types from values.yaml, constraints below)

VALUES_SCHEMA = CHART / "values.schema.json"
DURATION = {"type": "string", "pattern": "^[0-9]+(ms|s|m|h|d|w|y)$"}
DNS_LABEL = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
# A Lease's name: a DNS subdomain, or empty for the default (the full name).
DNS_SUBDOMAIN_OR_EMPTY = {
    "type": "string",
    "pattern": r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$",
    "maxLength": 253,
}
SEVERITY = {"type": "string", "minLength": 1}
# Extra alert labels: label names as Prometheus takes them, string values, never `severity`
# (each alert sets it).
# (patternProperties rather than propertyNames: helm's validator then names the label's path).
ALERT_LABELS = {
    "type": "object",
    "properties": {"severity": {"not": {}}},
    "patternProperties": {"^[a-zA-Z_][a-zA-Z0-9_]*$": {"type": "string"}},
    "additionalProperties": False,
}

# Constraints beyond the type of the default, by dotted key.
SCHEMA_OVERRIDES: dict[str, dict[str, Any]] = {
    "watchNamespaces": {"type": "array", "items": DNS_LABEL, "uniqueItems": True},
    "replicaCount": {"type": "integer", "minimum": 1},
    "operator.logFormat": {"type": "string", "enum": ["text", "json"]},
    "operator.extraArgs": {"type": "array", "items": {"type": "string"}},
    "image.pullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]},
    "image.digest": {"type": "string", "pattern": "^(sha256:[0-9a-f]{64})?$"},
    "ha.leaseName": DNS_SUBDOMAIN_OR_EMPTY,
    "ha.leaseDurationSeconds": {"type": "integer", "minimum": 1},
    "ha.renewDeadlineSeconds": {"type": "integer", "minimum": 1},
    "ha.retryPeriodSeconds": {"type": "integer", "minimum": 1},
    "podDisruptionBudget.minAvailable": {"type": ["integer", "string"]},
    "metrics.port": PORT,
    "metrics.service.port": PORT,
    "metrics.service.type": {"type": "string", "enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
    "metrics.serviceMonitor.interval": DURATION,
    "metrics.serviceMonitor.scrapeTimeout": DURATION,
    "alerts.runbookBaseUrl": {"type": "string", "pattern": "^https?://"},
    "alerts.driftPersists.for": DURATION,
    "alerts.reconcileErrors.window": DURATION,
    "alerts.reconcileErrors.for": DURATION,
    "alerts.driftCheckStale.intervalMultiplier": {"type": "number", "exclusiveMinimum": 0},
    "alerts.driftCheckStale.for": DURATION,
    "alerts.worldOpenSensitivePort.for": DURATION,
    "alerts.operatorDown.for": DURATION,
    "alerts.driftPersists.severity": SEVERITY,
    "alerts.reconcileErrors.severity": SEVERITY,
    "alerts.driftCheckStale.severity": SEVERITY,
    "alerts.worldOpenSensitivePort.severity": SEVERITY,
    "alerts.operatorDown.severity": SEVERITY,
    "networkPolicy.apiServer.ports": {"type": "array", "items": PORT, "minItems": 1},
    "networkPolicy.metadataServer.ports": {"type": "array", "items": PORT},
    "networkPolicy.apiServer.cidrs": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "networkPolicy.cloudApis.cidrs": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    "networkPolicy.metadataServer.cidrs": {"type": "array", "items": {"type": "string"}},
    "serverHardening.name": DNS_LABEL,
    "serverHardening.namespace": {"anyOf": [{"const": ""}, DNS_LABEL]},
    # A Prometheus (RE2) regular expression: JSON schema's "regex" format checks it compiles.
    "alerts.jobRegex": {"type": "string", "minLength": 1, "format": "regex"},
    "alerts.labels": ALERT_LABELS,
}
ALERT_NAMES = (
    "driftPersists", "reconcileErrors", "driftCheckStale", "worldOpenSensitivePort",
    "specInvalid", "componentServiceMissing", "guideRowViolated", "eventSourceDown",
    "operatorDown",
)  # fmt: skip
SCHEMA_OVERRIDES |= {f"alerts.{name}.labels": ALERT_LABELS for name in ALERT_NAMES}
SCHEMA_OVERRIDES |= {f"alerts.{name}.enabled": {"type": "boolean"} for name in ALERT_NAMES}

# The CIDR pattern of the values schema: stricter than the CRD's (whose CEL rule isCIDR() does
# the rest at admission), so `helm template` refuses 10.0.0.300/24 and 10.0.0.0/33 too.
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_CIDR = rf"{_OCTET}(\.{_OCTET}){{3}}/(3[0-2]|[12]?[0-9])"
_IPV6_CIDR = r"[0-9a-fA-F]{0,4}(:[0-9a-fA-F]{0,4}){2,7}/(12[0-8]|1[01][0-9]|[1-9]?[0-9])"
VALUES_CIDR_PATTERN = f"^({_IPV4_CIDR}|{_IPV6_CIDR})$"


def spec_values_schema() -> dict[str, Any]:
    """serverHardening.spec's schema: the CRD's spec schema (its structural OpenAPI turned into
    JSON schema: unknown fields refused as the API server's strict validation refuses them,
    ``nullable`` as a null type, int-or-string as both), checked by ``helm template``. CEL
    rules have no JSON-schema form: the API server still checks them at install."""
    crd = yaml.safe_load(CRD_SOURCE.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return _json_schema(spec)


def _json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: _json_schema(child) for name, child in value.items()}
        elif key == "pattern" and value == CIDR_PATTERN:
            out[key] = VALUES_CIDR_PATTERN
        else:
            out[key] = _json_schema(value)
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}


def _schema_for(key: str, value: Any, whole: set[str]) -> dict[str, Any]:
    if key in SCHEMA_OVERRIDES:
        return dict(SCHEMA_OVERRIDES[key])
    if isinstance(value, dict):
        if not value or key in whole:
            return {"type": "object"}  # free-form (labels, a Kubernetes struct, the CR spec)
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                k: _schema_for(f"{key}.{k}" if key else k, v, whole) for k, v in value.items()
            },
        }
    return {"type": _JSON_TYPES[type(value)]}


def values_schema() -> dict[str, Any]:
    """A JSON schema for values.yaml: unknown keys refused (a typo like `watchNamespace` would
    otherwise silently mean cluster-wide), types from the defaults, constraints above."""
    data = yaml.safe_load((CHART / "values.yaml").read_text())
    whole = {d.key for d in documented_values() if isinstance(d.default, dict) and d.default}
    schema = _schema_for("", data, whole)
    spec = spec_values_schema()
    required = spec.pop("required", [])
    resource = schema["properties"]["serverHardening"]
    resource["properties"]["spec"] = spec
    # The spec's structure is checked always; what it requires only when the resource is made.
    resource["if"] = {"properties": {"enabled": {"const": True}}, "required": ["enabled"]}
    resource["then"] = {"properties": {"spec": {"required": required}}}
    return {
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "server-hardening chart values",
        **schema,
    }


# --------------------------------------------------------------------------------------------
# Generated copies


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as ``|-`` blocks, long lines left alone (readable rule files)."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, width=1000, allow_unicode=True)


def plain_alerts_text() -> str:
    """deploy/prometheus/alerts.yaml as the chart renders it with default values."""
    rendered = render_chart({"prometheusRule": {"enabled": True}})
    rule = one(rendered, "PrometheusRule")
    return ALERTS_HEADER + dump_yaml(rule["spec"])


def generated_files() -> dict[Path, str]:
    """Every generated file and the content it should have."""
    out: dict[Path, str] = {}
    if CRD_SOURCE.exists():
        out[CRD_CHART] = CRD_SOURCE.read_text()
    out[DASHBOARD_CHART] = DASHBOARD_SOURCE.read_text()
    out[ALERTS_PLAIN] = plain_alerts_text()
    out[README] = readme_with_table(README.read_text(), values_table())
    out[VALUES_SCHEMA] = json.dumps(values_schema(), indent=2) + "\n"
    return out


def stale_files() -> list[Path]:
    return [p for p, text in generated_files().items() if not p.exists() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in (["sync"], ["check"]):
        print("usage: hardening_chart.py sync|check", file=sys.stderr)
        return 2
    if args == ["check"]:
        stale = stale_files()
        for path in stale:
            print(f"stale: {path.relative_to(REPO)}")
        return 1 if stale else 0
    for path, text in generated_files().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "operator"))
    sys.exit(main())
