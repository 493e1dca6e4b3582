"""The machines of each role as the clouds hold them, in the project's own types. Pure: no I/O.

The operator's rules protect machines, and a machine's real access is not one security group or
one firewall rule: on AWS it is the union of every security group on each of its network
interfaces, then its subnet's network ACL (stateless, ordered, both directions); on GCP it is
every VPC rule that targets the instance by any means (no target: every instance; target tags;
target service accounts), in priority order, under the firewall policies evaluated before them.

Adapters fill these types read-only (``observe_machines``); ``policy.effective`` evaluates them.
Nothing here talks to an API or knows a provider SDK's types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server_hardening.renderers.aws import AtomicRule
from server_hardening.rules import Finding, Role

# ------------------------------------------------------------------------------------------------
# AWS


@dataclass(frozen=True)
class NaclEntry:
    """One network ACL entry. ``protocol`` is normalised as security-group rules are (``-1`` for
    all, ``6`` tcp, ``17`` udp, else the IANA number as text); ports None means every port."""

    rule_number: int
    egress: bool
    protocol: str
    from_port: int | None
    to_port: int | None
    cidr: str
    allow: bool


@dataclass(frozen=True)
class NetworkAcl:
    acl_id: str
    subnet_ids: tuple[str, ...]
    entries: tuple[NaclEntry, ...]


@dataclass(frozen=True)
class AwsInterface:
    """One elastic network interface: what a packet to or from the machine really meets."""

    interface_id: str
    instance_id: str  # "" for an interface no instance holds (a load balancer's, an endpoint's)
    subnet_id: str
    private_ips: tuple[str, ...]
    group_ids: tuple[str, ...]
    description: str = ""
    requester: str = ""  # RequesterId / InterfaceType: who made it (elb, an EKS control plane...)


@dataclass(frozen=True)
class AwsRoleMachines:
    """The interfaces of one role: found by its configured group, or by a selector
    (``aws.machines.<role>``: Auto Scaling groups, instance tags) for machines that should be in
    the role, with or without the group."""

    role: Role
    interfaces: tuple[AwsInterface, ...]
    configured_group: str | None
    selected_instances: tuple[str, ...] = ()  # instances a selector named (may lack the group)


@dataclass(frozen=True)
class AwsMachines:
    roles: tuple[AwsRoleMachines, ...]
    # Every rule of every group on any of those interfaces, managed or not, by group ID.
    group_rules: dict[str, tuple[AtomicRule, ...]] = field(default_factory=dict)
    group_names: dict[str, str] = field(default_factory=dict)
    # The ACL of each subnet the interfaces sit in, by subnet ID.
    subnet_acls: dict[str, NetworkAcl] = field(default_factory=dict)
    subnet_cidrs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    findings: tuple[Finding, ...] = ()  # selectors that matched nothing, unreadable layers


# ------------------------------------------------------------------------------------------------
# GCP


@dataclass(frozen=True)
class GcpInstance:
    name: str
    zone: str
    network_tags: tuple[str, ...]
    service_accounts: tuple[str, ...]
    network_ips: tuple[str, ...]  # primary internal IPs on the network, then alias ranges


@dataclass(frozen=True)
class GcpPolicyRule:
    """One rule of a firewall policy (hierarchical or network), evaluated before VPC rules."""

    policy: str
    priority: int
    direction: str  # "INGRESS" | "EGRESS"
    action: str  # "allow" | "deny" | "goto_next"
    ranges: tuple[str, ...]  # source ranges (ingress) or destination ranges (egress)
    layer4: tuple[tuple[str, tuple[str, ...]], ...]  # (protocol, ports) pairs; () means all
    target_service_accounts: tuple[str, ...] = ()
    target_secure_tags: tuple[str, ...] = ()
    source_secure_tags: tuple[str, ...] = ()
    disabled: bool = False
    policy_type: str = "HIERARCHY"  # "HIERARCHY" | "NETWORK" | "NETWORK_REGIONAL"
    # A network's own policy is evaluated after the VPC rules unless the network says
    # BEFORE_CLASSIC_FIREWALL (its networkFirewallPolicyEnforcementOrder); hierarchy: before.
    after_vpc_rules: bool = False


@dataclass(frozen=True)
class GcpRoleMachines:
    role: Role
    target_tag: str | None
    instances: tuple[GcpInstance, ...]


@dataclass(frozen=True)
class GcpMachines:
    roles: tuple[GcpRoleMachines, ...]
    # Every VPC firewall of the network (the Compute API's JSON, as the adapter observes it).
    firewalls: tuple[Mapping[str, Any], ...] = ()
    # Every firewall-policy rule of the network, in evaluation order (hierarchy first, each
    # policy by priority); ``after_vpc_rules`` marks those evaluated after the VPC rules.
    policy_rules: tuple[GcpPolicyRule, ...] = ()
    findings: tuple[Finding, ...] = ()


# ------------------------------------------------------------------------------------------------
# Kubernetes


@dataclass(frozen=True)
class DeclaredPort:
    """A container port a pod declares (``spec.containers[].ports[]``)."""

    port: int
    protocol: str = "TCP"
    name: str = ""


@dataclass(frozen=True)
class ClusterPod:
    """A pod of the server's namespace as NetworkPolicies see it. Pods on the host's network
    are left out when read: no NetworkPolicy applies to them."""

    name: str
    labels: Mapping[str, str]
    ip: str
    ports: tuple[DeclaredPort, ...] = ()


@dataclass(frozen=True)
class NamespaceMachines:
    """The server's namespace: its pods and every NetworkPolicy in it, managed or not (the
    API's JSON, camelCase)."""

    namespace: str
    pods: tuple[ClusterPod, ...]
    policies: tuple[Mapping[str, Any], ...]
    findings: tuple[Finding, ...] = ()
