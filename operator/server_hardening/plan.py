"""The offline plan: one resource -> every manifest and rule it would write. Pure: no I/O here.

``hardening plan`` prints this document; the operator writes the same things (it resolves the
components from live Services instead of assuming them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server_hardening import components
from server_hardening.compiler import CompiledIntent, compile_intent
from server_hardening.guide import Component
from server_hardening.model import ResourceRef, ServerHardeningSpec
from server_hardening.renderers.aws import render_security_groups
from server_hardening.renderers.gcp import render_firewalls
from server_hardening.renderers.networkpolicy import EntryRows, render_network_policies_with_rows
from server_hardening.rules import Finding, most_important_first


@dataclass
class PlanDocument:
    profile: str
    intent: CompiledIntent
    network_policies: list[dict[str, Any]] | None = None
    security_groups: list[dict[str, Any]] | None = None
    firewalls: list[dict[str, Any]] | None = None
    findings: list[Finding] = field(default_factory=list)
    network_policy_rows: EntryRows = field(default_factory=dict)
    """The guide rows of each NetworkPolicy rule (the table cites them per line)."""

    def as_json(self) -> dict[str, Any]:
        """The shape tools consume (see README: ``hardening plan -o json``)."""
        doc: dict[str, Any] = {"profile": self.profile}
        if self.network_policies is not None:
            doc["kubernetes"] = {"networkPolicies": self.network_policies}
        if self.security_groups is not None:
            doc["aws"] = {"securityGroups": self.security_groups}
        if self.firewalls is not None:
            doc["gcp"] = {"firewalls": self.firewalls}
        doc["findings"] = [f.as_dict() for f in self.findings]
        return doc


def offline_components(
    intent: CompiledIntent,
) -> tuple[dict[Component, components.ResolvedComponent], list[Finding]]:
    """Components as the spec pins them, else as the profile assumes them (no cluster)."""
    pinned, pending = components.lookups(intent)
    resolved = {c.component: c for c in pinned}
    notes: list[Finding] = []
    for lookup in pending:
        component, note = components.assumed(lookup)
        resolved[lookup.component] = component
        notes.append(note)
    return resolved, notes


def build_plan(
    spec: ServerHardeningSpec,
    ref: ResourceRef,
    resolved: Mapping[Component, components.ResolvedComponent] | None = None,
) -> PlanDocument:
    intent = compile_intent(spec)
    findings = list(intent.findings)
    doc = PlanDocument(profile=intent.profile.name, intent=intent)
    if spec.kubernetes.network_policies.enabled:
        if resolved is None:
            resolved, notes = offline_components(intent)
            findings.extend(notes)
        doc.network_policies, doc.network_policy_rows = render_network_policies_with_rows(
            intent, ref.namespace, ref, resolved
        )
    if spec.aws is not None:
        rendered_aws = render_security_groups(intent.cloud_rules("aws"), spec.aws, ref)
        doc.security_groups = [dict(g) for g in rendered_aws.groups]
        findings.extend(rendered_aws.findings)
    if spec.gcp is not None:
        rendered_gcp = render_firewalls(intent.cloud_rules("gcp"), spec.gcp, ref)
        doc.firewalls = list(rendered_gcp.firewalls)
        findings.extend(rendered_gcp.findings)
    doc.findings = most_important_first(findings)
    return doc
