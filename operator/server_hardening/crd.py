"""The CustomResourceDefinition, generated from the model. Pure: no I/O here.

pydantic's JSON schema is turned into a *structural* OpenAPI v3 schema as the API server wants
it: references inlined, ``Optional`` as ``nullable``, ``int | str`` as
``x-kubernetes-int-or-string``, no ``additionalProperties: false`` beside ``properties`` (unknown
fields are refused by the server's strict field validation, which kubectl uses by default, and
by the model), object defaults left to the model (so stored objects stay what the user wrote),
scalar defaults kept. CEL rules declared on the model travel along.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from server_hardening.model import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    ServerHardeningSpec,
)
from server_hardening.status import ServerHardeningStatus

_DROP = {"title", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) != len(node["anyOf"])
        rest = {k: v for k, v in node.items() if k not in {"anyOf", "default"}}
        types = {o.get("type") for o in options}
        if types == {"integer", "string"}:
            return _structural({**rest, "x-kubernetes-int-or-string": True}, defs)
        if len(options) != 1:
            raise ValueError(f"cannot express anyOf {node['anyOf']} structurally")
        single: dict[str, Any] = _structural({**options[0], **rest}, defs)
        if nullable:
            single["nullable"] = True
        return single
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "additionalProperties" and isinstance(value, bool):
            # False: unknown fields are refused by strict field validation instead. True (an
            # open dict): left to x-kubernetes-preserve-unknown-fields, since the API server
            # prunes below an additionalProperties that has no schema.
            continue
        if key == "default" and (isinstance(value, dict | list) or value is None):
            continue
        if key == "properties":
            out[key] = {name: _structural(v, defs) for name, v in value.items()}
        else:
            out[key] = _structural(value, defs)
    return out


def spec_schema() -> dict[str, Any]:
    raw = ServerHardeningSpec.model_json_schema(by_alias=True, mode="validation")
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    return schema


def status_schema() -> dict[str, Any]:
    """The status's schema, from :mod:`server_hardening.status` (open only where it says).

    Without ``required`` and defaults: the operator writes status as a merge patch, and the API
    server must neither refuse a partial one nor invent values the operator did not write."""
    raw = ServerHardeningStatus.model_json_schema(by_alias=True, mode="serialization")
    schema: dict[str, Any] = _without(
        _structural(raw, raw.get("$defs", {})), {"required", "default"}
    )
    return schema


def _without(node: Any, keys: set[str]) -> Any:
    """``node`` without the schema keywords ``keys`` (a property of that name stays)."""
    if isinstance(node, list):
        return [_without(n, keys) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _without(child, keys) for name, child in value.items()}
        elif key not in keys:
            out[key] = _without(value, keys)
    return out


# The columns of ``kubectl get``; priority 1 ones show with ``-o wide``.
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
     "description": "What the last pass came to."},
    {"name": "Mode", "type": "string", "jsonPath": ".spec.mode",
     "description": "Enforce or Audit."},
    {"name": "Drift", "type": "integer", "jsonPath": ".status.driftTotal",
     "description": "Rules that differ from the desired state."},
    {"name": "Version", "type": "string", "jsonPath": ".spec.serverVersion",
     "description": "The CircleCI Server version the guide profile is chosen by."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Findings", "type": "integer", "jsonPath": ".status.findingsTotal", "priority": 1,
     "description": "All findings of the last pass."},
    {"name": "Last Check", "type": "date", "jsonPath": ".status.lastDriftCheckTime",
     "priority": 1, "description": "When the targets were last observed."},
    {"name": "Message", "type": "string", "priority": 1,
     "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
     "description": "Why the resource is or is not Ready."},
]  # fmt: skip


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "server-hardening"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["circleci"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "Keeps a CircleCI Server installation hardened as "
                            "CircleCI's hardening guide prescribes.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": f"{GROUP}/{VERSION}.",
                                },
                                "kind": {"type": "string", "description": f"{KIND}."},
                                # The API server describes metadata itself (ObjectMeta) and
                                # refuses a CRD that says anything but its type here.
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = "# Generated from server_hardening.model by `hardening crd`. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


def _rows(schema: dict[str, Any], path: str, required: bool) -> list[tuple[str, str, str, str]]:
    kind = schema.get("type", "int or string" if schema.get("x-kubernetes-int-or-string") else "")
    if kind == "array":
        item = schema.get("items", {})
        kind = f"[]{item.get('type', 'object')}"
    notes = []
    if "enum" in schema:
        notes.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if "pattern" in schema:
        notes.append(f"pattern `{schema['pattern']}`")
    for key, word in (("minimum", ">="), ("maximum", "<="), ("minItems", "items >="),
                      ("maxItems", "items <=")):  # fmt: skip
        if key in schema:
            notes.append(f"{word} {schema[key]}")
    for rule in schema.get("x-kubernetes-validations", []):
        notes.append(f"CEL: {rule['message']}")
    if schema.get("nullable"):
        notes.append("optional")
    default = schema.get("default")
    text = (schema.get("description") or "").replace("\n", " ").replace("|", "\\|")
    detail = "; ".join(notes).replace("|", "\\|")
    out = [
        (
            f"`{path}`" + (" (required)" if required else ""),
            kind,
            "" if default is None else f"`{json.dumps(default)}`",
            (text + (" " if text and detail else "") + detail).strip(),
        )
    ]
    children = schema.get("properties") or (schema.get("items") or {}).get("properties") or {}
    needed = set(schema.get("required") or (schema.get("items") or {}).get("required") or [])
    prefix = path + ("[]" if schema.get("type") == "array" else "")
    for name, child in children.items():
        out.extend(_rows(child, f"{prefix}.{name}", name in needed))
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):
        out.extend(_rows(additional, f"{prefix}.<key>", False))
    return out


def reference_markdown() -> str:
    """docs/resource.md: every field of the spec, from the same schema the CRD carries."""
    lines = [
        "# ServerHardening resource reference",
        "",
        "<!-- Generated from server_hardening.model by tests/unit/cli (UPDATE_DOCS=1). -->",
        "",
        f"`{GROUP}/{VERSION}`, kind `{KIND}`, namespaced (in the CircleCI Server namespace), "
        f"plural `{PLURAL}`, short name `{SHORT_NAMES[0]}`. What an older spec must change is "
        "in [upgrading.md](upgrading.md).",
        "",
        "Validated alike by `hardening plan`, the operator, the API server (through this schema "
        "and its CEL rules, with the strict field validation kubectl uses) and the Helm chart "
        "(`serverHardening.spec` against the same schema): unknown fields in any spelling, "
        "types, enums, patterns, ranges and CIDRs with host bits set (refused: write the network "
        "address). Cross-field rules are CEL rules, which the chart cannot check (the API server "
        "does at install). Overlapping role subnets, and one security group or tag for two "
        "isolated roles, are refused by `plan` and the operator only (phase `Invalid`). "
        "`metadata.name` is a DNS subdomain. The table in [the README]"
        "(../README.md#what-is-validated-where) says which check runs where.",
        "",
        "## Spec",
        "",
        "| field | type | default | meaning and constraints |",
        "|---|---|---|---|",
    ]
    for field, kind, default, text in _rows(spec_schema(), "spec", True):
        lines.append(f"| {field} | {kind} | {default} | {text} |")
    lines += [
        "",
        "## Status",
        "",
        "Written by the operator after every pass (`kubectl get svh -o wide` shows the findings, "
        "the last check and the Ready message).",
        "",
        "| field | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for field, kind, default, text in _rows(status_schema(), "status", False):
        lines.append(f"| {field} | {kind} | {default} | {text} |")
    return "\n".join(lines) + "\n"
