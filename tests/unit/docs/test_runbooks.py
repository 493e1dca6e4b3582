"""The runbooks are true: every alert, metric, Event reason, condition, command, spec field and
chart value that docs/operations.md names exists in the code, and every alert has a runbook.

The names are read from the sources of truth, not listed here, so what other changes add (an
alert, an Event, a metric) is checked too: the alerts from deploy/prometheus/alerts.yaml, the
metrics from metrics.py's registry, the Event reasons from every call in the product that posts
one (a ``"Warning"``/``"Normal"`` type followed by the reason), the condition types from the
status the pipeline writes, the commands from the CLI's parser, the spec fields from the CRD
and the chart values from values.yaml."""

from __future__ import annotations

import ast
import itertools
import json
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from server_hardening import metrics
from server_hardening.cli import build_parser

REPO = Path(__file__).resolve().parents[3]
RUNBOOKS = REPO / "docs" / "operations.md"
PRODUCT = REPO / "operator" / "server_hardening"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yaml"
CRD = REPO / "crds" / "serverhardening.yaml"
VALUES = REPO / "helm" / "server-hardening" / "values.yaml"

CODE_SPAN = re.compile(r"`([^`\n]+)`")
CODE_BLOCK = re.compile(r"```[a-z]*\n(.*?)```", re.DOTALL)
# Kinds and words of other systems a runbook may name in code spans.
OTHER_NAMES = {
    "ServerHardening", "ServerHardenings", "NetworkPolicy", "NetworkPolicies", "Service",
    "Report", "PrometheusRule", "ServiceMonitor", "ConfigMap", "Deployment", "ReplicaSet",
    "Pod", "CrashLoopBackOff", "ImagePullBackOff", "Pending", "CustomResourceDefinition",
    "Recreate",
}  # fmt: skip


def text() -> str:
    return RUNBOOKS.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------
# The sources of truth.


@cache
def alert_rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


@cache
def metric_names() -> frozenset[str]:
    """Every series name the operator exposes, as PromQL names it (counters with _total,
    histograms with _bucket/_sum/_count)."""
    names = set()
    for family in metrics.REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return frozenset(names)


def _product_trees() -> Iterator[ast.AST]:
    for path in PRODUCT.rglob("*.py"):
        yield ast.parse(path.read_text(encoding="utf-8"))


@cache
def event_reasons() -> frozenset[str]:
    """Every reason the product posts an Event with: the string after a ``"Warning"`` or
    ``"Normal"`` argument of any call (``Event(...)``, ``post_event(...)``, ...)."""
    reasons = set()
    for tree in _product_trees():
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            args = call.args
            for first, second in itertools.pairwise(args):
                if (
                    isinstance(first, ast.Constant)
                    and first.value in ("Warning", "Normal")
                    and isinstance(second, ast.Constant)
                    and isinstance(second.value, str)
                ):
                    reasons.add(second.value)
    return frozenset(reasons)


@cache
def product_strings() -> frozenset[str]:
    """Every string constant of the product: finding codes, phases, condition types and their
    reasons, modes, enum values."""
    return frozenset(
        node.value
        for tree in _product_trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    )


@cache
def condition_types() -> frozenset[str]:
    """The conditions the status carries, as a reconcile's report writes them."""
    import datetime as dt

    from builders import OWNER
    from server_hardening.reconcile import Phase, Report

    report = Report(OWNER, 1, "Enforce", Phase.ENFORCED, "Enforced", "", dt.datetime.now(dt.UTC))
    always = {c["type"] for c in report.status()["conditions"]}
    # Conditions a feature adds only when it is used name themselves in a CONDITION constant.
    optional = {
        node.value.value
        for tree in _product_trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(
            isinstance(t, ast.Name) and re.search(r"(^|_)CONDITION$", t.id) for t in node.targets
        )
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }
    return frozenset(always | optional)


@cache
def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@cache
def crd_names() -> frozenset[str]:
    crd = yaml.safe_load(CRD.read_text())["spec"]
    names = crd["names"]
    plural = names["plural"]
    return frozenset(
        [plural, names["singular"], *names.get("shortNames", []), f"{plural}.{crd['group']}"]
    )


@cache
def chart_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(VALUES.read_text())
    return values


def _schema_has(path: list[str]) -> bool:
    node: dict[str, Any] = crd_schema()
    for part in path:
        if node.get("type") == "array":
            node = node.get("items") or {}
        props = node.get("properties")
        if props is None:
            # Free-form (additionalProperties, preserve-unknown-fields): anything below.
            return bool(
                node.get("additionalProperties") or node.get("x-kubernetes-preserve-unknown-fields")
            )
        if part not in props:
            return False
        node = props[part]
    return True


def _values_have(path: list[str]) -> bool:
    if path[:2] == ["serverHardening", "spec"]:
        return _schema_has(path[1:])  # the chart's resource: the CRD's spec
    node: Any = chart_values()
    for part in path:
        if part == "*":
            return isinstance(node, dict)
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


# ------------------------------------------------------------------------------------------
# What the runbooks name.


def code_spans() -> list[str]:
    return CODE_SPAN.findall(CODE_BLOCK.sub("", text()))


def command_lines() -> list[str]:
    """Commands in code blocks (comments dropped, continuations joined) and in code spans."""
    lines = []
    for block in CODE_BLOCK.findall(text()):
        joined = block.replace("\\\n", " ")
        for raw in joined.splitlines():
            line = re.sub(r"^\$ ", "", raw.strip())
            lines.append(re.split(r"\s+#\s", line)[0].strip())
    lines += code_spans()
    # The command itself, not what its output is piped to (a jq program may span lines).
    lines = [line.split(" | ", 1)[0].strip() for line in lines]
    return [line for line in lines if re.match(r"^(hardening|kubectl|helm) ", line)]


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


# ------------------------------------------------------------------------------------------


def test_every_alert_has_a_runbook_and_a_row_and_its_runbook_url_points_at_it() -> None:
    headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", text(), re.MULTILINE)}
    rows = set(re.findall(r"^\| (ServerHardening\w+) \|", text(), re.MULTILINE))
    assert alert_rules(), "no alerts read"
    for name, rule in alert_rules().items():
        assert f"### {name}" in text(), f"{name} has no runbook section"
        assert name in rows, f"{name} is missing from the alerts table"
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in headings, f"{name}'s runbook_url #{anchor} is no heading"


def test_every_alert_the_runbooks_name_exists() -> None:
    named = set(re.findall(r"\b(ServerHardening[A-Z]\w+)\b", text())) - OTHER_NAMES
    assert named <= set(alert_rules()), named - set(alert_rules())


def test_every_metric_the_runbooks_name_is_exposed() -> None:
    # A name the text marks as former ("formerly `x`") is history, not a series to look for.
    current = re.sub(r"formerly `server_hardening_\w+`", "", text())
    named = set(re.findall(r"\bserver_hardening_[a-z_]+\b", current))
    assert named, "no metric named"
    assert named <= metric_names(), sorted(named - metric_names())


def test_every_event_the_runbooks_name_is_posted_by_the_code() -> None:
    # "the `A` event", "`A`, `B` and `C` events", "an event `A`".
    named = set()
    for spans in re.findall(r"((?:`\w+`(?:,? and |,? or |, ))*`\w+`) events?\b", text()):
        named |= set(re.findall(r"`(\w+)`", spans))
    named |= set(re.findall(r"\bevents? `(\w+)`", text()))
    assert named, "no Event reason named"
    assert event_reasons(), "no Event reason found in the code"
    assert named <= event_reasons(), sorted(named - event_reasons())


def test_every_condition_the_runbooks_name_is_written_in_the_status() -> None:
    named = set(re.findall(r"`(\w+)` condition", text()))
    named |= set(
        re.findall(r"conditions? ((?:`\w+`(?:, | and | or )?)+)", text())[0].split("`")[1::2]
    )
    assert named, "no condition named"
    assert named <= condition_types(), sorted(named - condition_types())


def test_every_name_in_a_code_span_exists_in_the_code() -> None:
    """Finding codes, phases, modes, reasons: a CamelCase word in a code span is a string of
    the product, an alert, or a kind of Kubernetes or of the monitoring stack."""
    words = {s for s in code_spans() if re.fullmatch(r"[A-Z][a-z][A-Za-z0-9]*", s)}
    known = product_strings() | set(alert_rules()) | OTHER_NAMES
    assert words - known == set()


def test_every_spec_field_and_chart_value_the_runbooks_name_exists() -> None:
    unknown = []
    for span in code_spans():
        for token in re.findall(r"\b(?:spec|status)(?:\.[A-Za-z<>*]+(?:\[\d*\])?)+", span):
            parts = [re.sub(r"\[\d*\]$", "", p) for p in token.split(".")]
            if any(p.startswith("<") or p == "*" for p in parts):
                parts = parts[
                    : next(i for i, p in enumerate(parts) if p.startswith("<") or p == "*")
                ]
            if parts[0] == "status" and "properties" not in crd_schema()["properties"].get(
                "status", {}
            ):
                continue  # a status without a schema: nothing to check against
            if not _schema_has(parts):
                unknown.append(token)
        if re.fullmatch(r"[a-z][A-Za-z]+(\.[A-Za-z*]+)+", span):
            parts = span.split(".")
            if parts[0] in chart_values() and not _values_have(parts):
                unknown.append(span)
    assert unknown == []


@pytest.mark.parametrize("line", [c for c in command_lines() if c.startswith("hardening ")])
def test_every_hardening_command_the_runbooks_name_parses(line: str) -> None:
    parser = build_parser()
    words = shlex.split(re.sub(r"<\([^)]*\)", "FILE", line))[1:]
    sub = next(a for a in parser._actions if a.dest == "command")
    assert words[0] in sub.choices, f"no subcommand {words[0]!r}"  # type: ignore[operator]
    options = sub.choices[words[0]]._option_string_actions  # type: ignore[index]
    for word in words[1:]:
        if word.startswith("-"):
            assert word.split("=")[0] in options, f"{line}: no option {word}"


@pytest.mark.parametrize("line", [c for c in command_lines() if c.startswith("kubectl ")])
def test_every_kubectl_command_names_the_resource_and_fields_as_the_crd_does(line: str) -> None:
    words = shlex.split(line.replace("NS", "ns").replace("NAME", "name"))
    ours = [w for w in words if re.match(r"^(serverhardening|svh)", w.split("/")[0])]
    for word in ours:
        assert word.split("/")[0].split(",")[0] in crd_names(), f"{line}: {word}"
    if "patch" in words and ours and "-p" in words:
        patch = json.loads(words[words.index("-p") + 1])
        for path, value in _leaves(patch):
            assert _schema_has(path), f"{line}: no field {'.'.join(path)}"
            node = _schema_node(path)
            if "enum" in node:
                assert value in node["enum"], f"{line}: {value!r} not in {node['enum']}"


@pytest.mark.parametrize("line", [c for c in command_lines() if c.startswith("helm ")])
def test_every_helm_value_the_runbooks_set_exists(line: str) -> None:
    words = shlex.split(line)
    for i, word in enumerate(words):
        if word in ("--set", "--set-string") and i + 1 < len(words):
            for assignment in words[i + 1].split(","):
                key = assignment.split("=")[0]
                assert _values_have(key.split(".")), f"{line}: no value {key}"


def _leaves(node: Any, path: list[str] | None = None) -> Iterator[tuple[list[str], Any]]:
    path = path or []
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, [*path, key])
    else:
        yield path, node


def _schema_node(path: list[str]) -> dict[str, Any]:
    node: dict[str, Any] = crd_schema()
    for part in path:
        node = node["properties"][part]
    return node
