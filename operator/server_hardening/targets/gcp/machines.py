"""The machines of each role on GCP, found read-only, in :mod:`server_hardening.machines` types.

What a packet to or from a Compute Engine instance meets is every VPC rule of its network that
targets it (no target: every instance; one of its network tags; one of its service accounts),
under the firewall policies Google evaluates around them. This module reads the instances of each
role and converts the effective-firewalls answer's policy rules; the adapter supplies the calls
(retried, recorded, translated once) and the VPC rules it already listed.

Cost of one discovery: one paged ``instances.aggregatedList`` per distinct role tag (filtered
server-side by ``tags.items``), one ``networks.get`` (where the network's own policy is evaluated
relative to the VPC rules); the firewalls and the effective policies come from the same pass's
``observe`` when it ran, else one list and one ``networks.getEffectiveFirewalls``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from google.cloud import compute_v1

from server_hardening.machines import GcpInstance, GcpPolicyRule, GcpRoleMachines
from server_hardening.model import GcpSpec
from server_hardening.rules import Finding, FindingCode, Role
from server_hardening.targets.gcp.client import CALL_TIMEOUT, PAGE_SIZE

# (operation, resource, fn) -> the answer: the adapter's retried, recorded, translated call.
Caller = Callable[[str, str, Callable[[], Any]], Any]

# The field of each role's tag in the resource (what a finding names).
_TAG_FIELDS = {
    Role.KUBERNETES_NODES: "kubernetesNodes",
    Role.NOMAD_CLIENTS: "nomadClients",
    Role.EXTERNAL_VMS: "externalVMs",
    Role.NOMAD_SERVERS: "nomadServers",
}
# Where a firewall policy is evaluated: hierarchical policies (organisation, then folders) come
# first; a network's own policy after or before its VPC rules, as the network says.
_POLICY_STAGE = {"HIERARCHY": 0, "NETWORK": 1, "NETWORK_REGIONAL": 1}
NETWORK_POLICY_AFTER_VPC = "AFTER_CLASSIC_FIREWALL"


def network_suffix(gcp: GcpSpec) -> str:
    return f"/projects/{gcp.project}/global/networks/{gcp.network}"


def on_network(url: str, gcp: GcpSpec) -> bool:
    """Whether a network reference (full or partial URL) is this spec's network."""
    return f"/{url.lstrip('/')}".endswith(network_suffix(gcp)) or url == gcp.network


def instance_of(instance: compute_v1.Instance, zone_scope: str, gcp: GcpSpec) -> GcpInstance | None:
    """The project's view of one instance, or None when no interface is on the network (an
    instance tagged alike in another VPC of the project is not this installation's machine)."""
    addresses: list[str] = []
    aliases: list[str] = []
    for nic in instance.network_interfaces:
        if not on_network(nic.network, gcp):
            continue
        if nic.network_i_p:
            addresses.append(nic.network_i_p)
        aliases.extend(r.ip_cidr_range for r in nic.alias_ip_ranges if r.ip_cidr_range)
    if not addresses and not aliases:
        return None
    zone = (instance.zone or zone_scope).rsplit("/", 1)[-1]
    return GcpInstance(
        name=instance.name,
        zone=zone,
        network_tags=tuple(instance.tags.items),
        service_accounts=tuple(sa.email for sa in instance.service_accounts),
        network_ips=(*addresses, *aliases),
    )


def role_machines(
    clients: Any, gcp: GcpSpec, tags: Mapping[Role, str], call: Caller
) -> tuple[tuple[GcpRoleMachines, ...], tuple[Finding, ...]]:
    """The instances on the network carrying each role's tag; a tag that matches none is a
    finding naming its field, never a silent empty answer."""
    by_tag: dict[str, list[GcpInstance]] = {}
    roles: list[GcpRoleMachines] = []
    findings: list[Finding] = []
    for role, tag in tags.items():
        if tag not in by_tag:
            by_tag[tag] = _instances_with_tag(clients, gcp, tag, call)
        found = tuple(by_tag[tag])
        roles.append(GcpRoleMachines(role=role, target_tag=tag, instances=found))
        if not found:
            field = f"spec.gcp.targetTags.{_TAG_FIELDS.get(role, role.value)}"
            findings.append(
                Finding.of(
                    FindingCode.MACHINE_SELECTOR_UNMATCHED,
                    f"{field}: no instance on network {gcp.network} of project {gcp.project} "
                    f"carries the tag {tag!r}; the {role.value} machines cannot be checked (is "
                    "the tag right, or are they on another network?)",
                    target="gcp",
                )
            )
    return tuple(roles), tuple(findings)


def _instances_with_tag(clients: Any, gcp: GcpSpec, tag: str, call: Caller) -> list[GcpInstance]:
    out: list[GcpInstance] = []
    token = ""
    while True:
        request = compute_v1.AggregatedListInstancesRequest(
            project=gcp.project,
            filter=f'tags.items = "{tag}"',
            max_results=PAGE_SIZE,
            page_token=token,
        )
        pager = call(
            "instances.aggregatedList",
            f"tag {tag}",
            functools.partial(
                clients.instances.aggregated_list, request=request, retry=None, timeout=CALL_TIMEOUT
            ),
        )
        # The pager's attributes are its first page's: later pages are asked for here, so each
        # page is one retried, recorded call.
        for scope, scoped in pager.items.items():
            for instance in scoped.instances:
                if tag not in instance.tags.items:
                    continue  # the server-side filter is an optimisation, not the judge
                found = instance_of(instance, scope, gcp)
                if found is not None:
                    out.append(found)
        token = pager.next_page_token
        if not token:
            return sorted(out, key=lambda i: (i.zone, i.name))


def policy_rules_of(
    policies: Iterable[Mapping[str, Any]], *, network_order: str = NETWORK_POLICY_AFTER_VPC
) -> tuple[GcpPolicyRule, ...]:
    """The rules of the effective firewall policies (REST JSON) in evaluation order: hierarchical
    policies in the order the API answers them (organisation first), each by priority; then the
    network's own. ``network_order`` is recorded on each network-policy rule so the evaluation
    can place it after (the API's default) or before the VPC rules."""
    ordered = sorted(
        enumerate(policies), key=lambda p: (_POLICY_STAGE.get(str(p[1].get("type")), 2), p[0])
    )
    out: list[GcpPolicyRule] = []
    for _, policy in ordered:
        kind = str(policy.get("type") or "HIERARCHY")
        name = str(policy.get("shortName") or policy.get("displayName") or policy.get("name"))
        for rule in sorted(policy.get("rules") or [], key=lambda r: int(r.get("priority", 0))):
            out.append(_policy_rule(name, kind, rule, network_order))
    return tuple(out)


def _policy_rule(
    policy: str, kind: str, rule: Mapping[str, Any], network_order: str
) -> GcpPolicyRule:
    match = rule.get("match") or {}
    egress = rule.get("direction") == "EGRESS"
    layer4: Sequence[Mapping[str, Any]] = match.get("layer4Configs") or []
    return GcpPolicyRule(
        policy=policy,
        priority=int(rule.get("priority", 0)),
        direction=str(rule.get("direction") or "INGRESS"),
        action=str(rule.get("action") or ""),
        ranges=tuple(match.get("destIpRanges" if egress else "srcIpRanges") or ()),
        layer4=tuple(
            (str(c.get("ipProtocol", "all")), tuple(str(p) for p in c.get("ports") or ()))
            for c in layer4
        ),
        target_service_accounts=tuple(rule.get("targetServiceAccounts") or ()),
        target_secure_tags=tuple(str(t.get("name")) for t in rule.get("targetSecureTags") or ()),
        source_secure_tags=tuple(str(t.get("name")) for t in match.get("srcSecureTags") or ()),
        disabled=bool(rule.get("disabled", False)),
        policy_type=kind,
        after_vpc_rules=kind != "HIERARCHY" and network_order == NETWORK_POLICY_AFTER_VPC,
    )
