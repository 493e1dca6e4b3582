"""The machines of each role on AWS, read-only: interfaces, every group on them, subnets' ACLs.

What one read costs (each call paged by 1,000 and split per 200 filter values):

- per role with a configured group: ``DescribeNetworkInterfaces`` filtered by that group;
- per role with selectors (``spec.aws.machines.<role>``): ``DescribeAutoScalingGroups`` for the
  named groups and/or ``DescribeInstances`` by tag, then ``DescribeNetworkInterfaces`` by
  instance ID (machines that should be in the role, with or without its group);
- once: ``DescribeSecurityGroupRules`` for the groups on those interfaces that the resource does
  not manage (the managed ones' rules were read by ``observe``), ``DescribeSecurityGroups`` for
  their names, ``DescribeSubnets`` and ``DescribeNetworkAcls`` for the subnets they sit in.

Nothing here writes, and nothing here judges: ``policy.effective`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from server_hardening.machines import (
    AwsInterface,
    AwsMachines,
    AwsRoleMachines,
    NaclEntry,
    NetworkAcl,
)
from server_hardening.model import AwsMachineSelector, AwsSpec
from server_hardening.renderers.aws import AtomicRule, parse_rule
from server_hardening.rules import Finding, FindingCode, Role

PAGE_SIZE = 1000
FILTER_VALUES = 200

# The machine provisioner tags every VM it starts (4.3+), and the VM service before it.
PROVISIONER_TAG = "ManagedBy"
PROVISIONER_VALUES = ("circleci-machine-provisioner", "circleci-vm-service")

Paged = Callable[[str, str, Callable[..., Any], dict[str, Any]], Iterable[dict[str, Any]]]


def _chunks(values: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(values), FILTER_VALUES):
        yield list(values[start : start + FILTER_VALUES])


def _interface(raw: Mapping[str, Any]) -> AwsInterface:
    attachment = raw.get("Attachment") or {}
    ips = [str(a["PrivateIpAddress"]) for a in raw.get("PrivateIpAddresses") or []]
    ips += [str(a["Ipv6Address"]) for a in raw.get("Ipv6Addresses") or []]
    return AwsInterface(
        interface_id=str(raw.get("NetworkInterfaceId", "")),
        instance_id=str(attachment.get("InstanceId") or ""),
        subnet_id=str(raw.get("SubnetId", "")),
        private_ips=tuple(ips or [str(raw.get("PrivateIpAddress", ""))]),
        group_ids=tuple(str(g["GroupId"]) for g in raw.get("Groups") or []),
        description=str(raw.get("Description") or ""),
        requester=str(raw.get("RequesterId") or raw.get("InterfaceType") or ""),
    )


def _nacl_entry(raw: Mapping[str, Any]) -> NaclEntry:
    ports = raw.get("PortRange") or {}
    protocol = str(raw.get("Protocol", "-1"))
    return NaclEntry(
        rule_number=int(raw.get("RuleNumber", 32767)),
        egress=bool(raw.get("Egress")),
        protocol=protocol,
        from_port=int(ports["From"]) if "From" in ports else None,
        to_port=int(ports["To"]) if "To" in ports else None,
        cidr=str(raw.get("CidrBlock") or raw.get("Ipv6CidrBlock") or ""),
        allow=str(raw.get("RuleAction", "deny")).lower() == "allow",
    )


class MachineReader:
    """Reads :class:`~server_hardening.machines.AwsMachines` through the adapter's paged calls
    (its retry policy and error translation)."""

    def __init__(
        self,
        aws: AwsSpec,
        paged: Paged,
        ec2: Any,
        autoscaling: Callable[[], Any],
        group_of_role: Mapping[Role, str],
    ) -> None:
        self.aws = aws
        self.paged = paged
        self.ec2 = ec2
        self.autoscaling = autoscaling
        self.group_of_role = group_of_role

    def _interfaces(self, name: str, values: Sequence[str]) -> list[AwsInterface]:
        out: list[AwsInterface] = []
        for chunk in _chunks(values):
            for page in self.paged(
                "DescribeNetworkInterfaces",
                ",".join(chunk[:3]),
                self.ec2.describe_network_interfaces,
                {"Filters": [{"Name": name, "Values": chunk}], "MaxResults": PAGE_SIZE},
            ):
                out += [_interface(i) for i in page.get("NetworkInterfaces", [])]
        return out

    def _asg_instances(self, names: Sequence[str], field: str) -> tuple[list[str], list[Finding]]:
        instances: list[str] = []
        found: set[str] = set()
        client = self.autoscaling()
        for chunk in _chunks(names):
            for page in self.paged(
                "DescribeAutoScalingGroups",
                ",".join(chunk),
                client.describe_auto_scaling_groups,
                {"AutoScalingGroupNames": chunk, "MaxRecords": 100},
            ):
                for group in page.get("AutoScalingGroups", []):
                    found.add(str(group["AutoScalingGroupName"]))
                    instances += [str(i["InstanceId"]) for i in group.get("Instances") or []]
        findings = [
            Finding.of(
                FindingCode.MACHINE_SELECTOR_UNMATCHED,
                f"{field}: Auto Scaling group {name!r} does not exist in {self.aws.region}",
                target="aws",
            )
            for name in names
            if name not in found
        ]
        return instances, findings

    def _tagged_instances(self, tags: Mapping[str, Sequence[str]]) -> list[str]:
        filters = [{"Name": f"tag:{key}", "Values": list(values)} for key, values in tags.items()]
        filters.append(
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping"]}
        )
        out: list[str] = []
        for page in self.paged(
            "DescribeInstances",
            ",".join(tags),
            self.ec2.describe_instances,
            {"Filters": filters, "MaxResults": PAGE_SIZE},
        ):
            for reservation in page.get("Reservations", []):
                out += [str(i["InstanceId"]) for i in reservation.get("Instances") or []]
        return out

    def _selected(
        self, role: Role, selector: AwsMachineSelector | None
    ) -> tuple[list[str], list[Finding]]:
        field = f"spec.aws.machines.{role.value}"
        instances: list[str] = []
        findings: list[Finding] = []
        if selector is not None and selector.auto_scaling_groups:
            found, missing = self._asg_instances(
                selector.auto_scaling_groups, f"{field}.autoScalingGroups"
            )
            instances += found
            findings += missing
        if selector is not None and selector.instance_tags:
            tagged = self._tagged_instances({k: [v] for k, v in selector.instance_tags.items()})
            if not tagged:
                findings.append(
                    Finding.of(
                        FindingCode.MACHINE_SELECTOR_UNMATCHED,
                        f"{field}.instanceTags: no running instance carries "
                        + ", ".join(f"{k}={v}" for k, v in selector.instance_tags.items()),
                        target="aws",
                    )
                )
            instances += tagged
        if role is Role.EXTERNAL_VMS and (selector is None or not selector.instance_tags):
            # The machine provisioner's own tag finds its VMs without any selector.
            instances += self._tagged_instances({PROVISIONER_TAG: list(PROVISIONER_VALUES)})
        return sorted(set(instances)), findings

    def read(
        self, managed_rules: Mapping[str, Sequence[AtomicRule]], roles: Sequence[Role]
    ) -> AwsMachines:
        selectors = self.aws.machines
        findings: list[Finding] = []
        per_role: list[AwsRoleMachines] = []
        for role in roles:
            group = self.group_of_role.get(role)
            interfaces = (
                {i.interface_id: i for i in self._interfaces("group-id", [group])}
                if (group)
                else {}
            )
            selected, problems = self._selected(
                role, getattr(selectors, role_attribute(role)) if selectors is not None else None
            )
            findings += problems
            if selected:
                for interface in self._interfaces("attachment.instance-id", selected):
                    interfaces.setdefault(interface.interface_id, interface)
            per_role.append(
                AwsRoleMachines(
                    role=role,
                    interfaces=tuple(sorted(interfaces.values(), key=lambda i: i.interface_id)),
                    configured_group=group,
                    selected_instances=tuple(selected),
                )
            )
        groups = sorted({g for r in per_role for i in r.interfaces for g in i.group_ids})
        rules: dict[str, list[AtomicRule]] = {g: list(managed_rules.get(g, ())) for g in groups}
        unread = [g for g in groups if g not in managed_rules]
        for chunk in _chunks(unread):
            for page in self.paged(
                "DescribeSecurityGroupRules",
                ",".join(chunk[:3]),
                self.ec2.describe_security_group_rules,
                {"Filters": [{"Name": "group-id", "Values": chunk}], "MaxResults": PAGE_SIZE},
            ):
                for raw in page.get("SecurityGroupRules", []):
                    rules.setdefault(str(raw["GroupId"]), []).append(parse_rule(raw))
        names: dict[str, str] = {}
        for chunk in _chunks(groups):
            for page in self.paged(
                "DescribeSecurityGroups",
                ",".join(chunk[:3]),
                self.ec2.describe_security_groups,
                {"Filters": [{"Name": "group-id", "Values": chunk}], "MaxResults": PAGE_SIZE},
            ):
                for group_raw in page.get("SecurityGroups", []):
                    names[str(group_raw["GroupId"])] = str(group_raw.get("GroupName", ""))
        subnets = sorted({i.subnet_id for r in per_role for i in r.interfaces if i.subnet_id})
        cidrs: dict[str, tuple[str, ...]] = {}
        acls: dict[str, NetworkAcl] = {}
        for chunk in _chunks(subnets):
            for page in self.paged(
                "DescribeSubnets",
                ",".join(chunk[:3]),
                self.ec2.describe_subnets,
                {"Filters": [{"Name": "subnet-id", "Values": chunk}]},
            ):
                for subnet in page.get("Subnets", []):
                    v6 = [
                        str(a["Ipv6CidrBlock"])
                        for a in subnet.get("Ipv6CidrBlockAssociationSet") or []
                    ]
                    cidrs[str(subnet["SubnetId"])] = (str(subnet.get("CidrBlock", "")), *v6)
            for page in self.paged(
                "DescribeNetworkAcls",
                ",".join(chunk[:3]),
                self.ec2.describe_network_acls,
                {"Filters": [{"Name": "association.subnet-id", "Values": chunk}]},
            ):
                for raw_acl in page.get("NetworkAcls", []):
                    associated = tuple(
                        str(a["SubnetId"]) for a in raw_acl.get("Associations") or []
                    )
                    acl = NetworkAcl(
                        acl_id=str(raw_acl["NetworkAclId"]),
                        subnet_ids=associated,
                        entries=tuple(_nacl_entry(e) for e in raw_acl.get("Entries") or []),
                    )
                    for subnet_id in associated:
                        acls[subnet_id] = acl
        return AwsMachines(
            roles=tuple(per_role),
            group_rules={g: tuple(r) for g, r in rules.items()},
            group_names=names,
            subnet_acls=acls,
            subnet_cidrs=cidrs,
            findings=tuple(findings),
        )


MACHINE_ROLES = (Role.KUBERNETES_NODES, Role.NOMAD_CLIENTS, Role.EXTERNAL_VMS, Role.NOMAD_SERVERS)


def role_attribute(role: Role) -> str:
    """The ``spec.aws.machines`` attribute of a role."""
    return {
        Role.KUBERNETES_NODES: "kubernetes_nodes",
        Role.NOMAD_CLIENTS: "nomad_clients",
        Role.EXTERNAL_VMS: "external_vms",
        Role.NOMAD_SERVERS: "nomad_servers",
        Role.LOAD_BALANCERS: "load_balancers",
    }[role]
