"""Builders for the AWS adapter tests and the request benchmark: a VPC with one security group
per role in moto, specs pointing at them, bulk rule sets, and a one-pass reconcile."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from builders import make_spec
from server_hardening.compiler import compile_intent
from server_hardening.drift import Plan
from server_hardening.model import (
    Adoption,
    AwsSpec,
    Mode,
    ResourceRef,
    ServerHardeningSpec,
    UnmanagedRules,
    parse_spec,
)
from server_hardening.ownership import describe, owner_key
from server_hardening.policy.aws import AwsPolicy
from server_hardening.reconcile import Event, TargetReport, run_target
from server_hardening.renderers.aws import (
    AtomicRule,
    RenderedSecurityGroups,
    render_security_groups,
)
from server_hardening.rules import (
    Action,
    Direction,
    Peer,
    PeerKind,
    PortRange,
    Protocol,
    Role,
    Rule,
)
from server_hardening.targets.aws import AwsTarget, RetryPolicy
from server_hardening.targets.base import ApplyResult

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

    from adapters.aws.double import MotoDouble

OWNER = ResourceRef("circleci", "server", "uid-1")
ROLE_KEYS = {
    Role.KUBERNETES_NODES: "kubernetesNodes",
    Role.NOMAD_CLIENTS: "nomadClients",
    Role.EXTERNAL_VMS: "externalVMs",
    Role.LOAD_BALANCERS: "loadBalancers",
}


@dataclass
class World:
    double: MotoDouble
    ec2: EC2Client
    vpc: str
    groups: dict[Role, str]
    owner: ResourceRef = OWNER
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)

    def aws_spec(self, **extra: Any) -> AwsSpec:
        return AwsSpec.model_validate(
            {
                "region": "us-east-1",
                "securityGroups": {ROLE_KEYS[r]: g for r, g in self.groups.items()},
                "endpointUrl": self.double.url,
                **extra,
            }
        )

    def spec(self, **extra: Any) -> ServerHardeningSpec:
        body: dict[str, Any] = {
            "serverVersion": "3",
            "topology": {
                "kubernetesNodes": {"cidrs": ["10.0.0.0/20"]},
                "nomadClients": {"cidrs": ["10.0.16.0/20"]},
                "externalVMs": {"cidrs": ["10.0.32.0/20"]},
                "dns": {"cidrs": ["10.0.0.2/32"]},
            },
            "aws": {
                "region": "us-east-1",
                "securityGroups": {ROLE_KEYS[r]: g for r, g in self.groups.items()},
                "endpointUrl": self.double.url,
            },
        }
        body.update(extra)
        return parse_spec(body)

    def guide_rendering(self, **extra: Any) -> RenderedSecurityGroups:
        spec = self.spec(**extra)
        assert spec.aws is not None
        return render_security_groups(compile_intent(spec).cloud_rules("aws"), spec.aws, OWNER)

    def double_autoscaling(self) -> Any:
        """An Auto Scaling client on the same moto (machine discovery reads Auto Scaling groups)."""
        return self.double.client_for("autoscaling")

    def record(self, operation: str, outcome: str) -> None:
        self.calls[(operation, outcome)] += 1

    def target(
        self,
        rendered: RenderedSecurityGroups,
        *,
        aws: AwsSpec | None = None,
        client: EC2Client | None = None,
        owner: ResourceRef | None = None,
        retry: RetryPolicy | None = None,
    ) -> AwsTarget:
        return AwsTarget(
            rendered,
            aws or self.aws_spec(),
            owner or self.owner,
            client=client or self.ec2,
            record_call=self.record,
            retry=retry,
            sleep=lambda _s: None,
        )

    def rules(self, group: str | None = None) -> list[dict[str, Any]]:
        ids = [group] if group else list(self.groups.values())
        out = self.ec2.describe_security_group_rules(Filters=[{"Name": "group-id", "Values": ids}])
        return [dict(r) for r in out["SecurityGroupRules"]]


def make_world(double: MotoDouble, *, keep_default_egress: bool = True) -> World:
    double.reset()
    ec2 = double.client()
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    groups: dict[Role, str] = {}
    for role in ROLE_KEYS:
        sg = ec2.create_security_group(GroupName=role.value, Description=role.value, VpcId=vpc)
        groups[role] = sg["GroupId"]
        if not keep_default_egress:
            ec2.revoke_security_group_egress(
                GroupId=sg["GroupId"],
                IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
            )
    double.proxy.reset()
    return World(double=double, ec2=ec2, vpc=vpc, groups=groups)


def bulk_rules(per_group: int, roles: Sequence[Role] = tuple(ROLE_KEYS)) -> list[Rule]:
    """``per_group`` distinct TCP rules per role, half inbound and half outbound, each from or
    to its own /24: the shape of a big installation without any merging."""
    rules: list[Rule] = []
    for r, role in enumerate(roles):
        for i in range(per_group):
            direction = Direction.INGRESS if i % 2 == 0 else Direction.EGRESS
            net = ipaddress.ip_network(f"10.{100 + r}.{i}.0/24")
            rules.append(
                Rule(
                    subject=role,
                    direction=direction,
                    action=Action.ALLOW,
                    peer=Peer(PeerKind.CIDRS, (str(net),)),
                    protocol=Protocol.TCP,
                    ports=PortRange.single(10000 + i),
                    rows=frozenset({"BENCH-1"}),
                )
            )
    return rules


def many_groups(
    ec2: EC2Client, vpc: str, count: int, rules_per_group: int, owner: ResourceRef = OWNER
) -> RenderedSecurityGroups:
    """``count`` new groups (default egress revoked) and a rendering with ``rules_per_group``
    rules in each, built directly: one target does not care which roles the groups serve."""
    atoms: list[AtomicRule] = []
    group_roles: list[tuple[str, tuple[Role, ...]]] = []
    for g in range(count):
        sg = ec2.create_security_group(GroupName=f"bench-{g}", Description="bench", VpcId=vpc)
        group = sg["GroupId"]
        ec2.revoke_security_group_egress(
            GroupId=group,
            IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}],
        )
        group_roles.append((group, (Role.NOMAD_CLIENTS,)))
        for i in range(rules_per_group):
            direction = Direction.INGRESS if i % 2 == 0 else Direction.EGRESS
            atoms.append(
                AtomicRule(
                    group,
                    direction,
                    "tcp",
                    10000 + i,
                    10000 + i,
                    "cidr4",
                    f"10.{g // 200 + 100}.{g % 200}.{i}/32",
                    description=describe(["BENCH-1"], owner),
                    rows=("BENCH-1",),
                )
            )
    return RenderedSecurityGroups(
        atoms=tuple(sorted(atoms)), group_roles=tuple(group_roles), owner=owner_key(owner)
    )


def run_pass(
    target: AwsTarget,
    *,
    apply: bool = True,
    remove_unmanaged: bool = False,
    previously_managed: int = 0,
    adoption: Adoption = Adoption.ADOPT,
) -> TargetReport:
    """One pass of the production per-target pipeline (``reconcile.run_target``): observe,
    ownership conflicts, plan, and in Enforce apply."""
    # Only mode and unmanagedRules matter to run_target: the target comes already rendered.
    spec = make_spec().model_copy(
        update={
            "mode": Mode.ENFORCE if apply else Mode.AUDIT,
            "unmanaged_rules": UnmanagedRules.REMOVE if remove_unmanaged else UnmanagedRules.REPORT,
            "adoption": adoption,
        }
    )
    events: list[Event] = []
    # As the factory does for each pass: the policy is built from the pass's spec.
    target.policy = AwsPolicy(
        target.rendered, remove_unmanaged=remove_unmanaged, node_ports=target.policy.node_ports
    )
    return run_target("aws", lambda: target, spec, previously_managed, events)


def reconcile(
    target: AwsTarget, *, apply: bool = True, remove_unmanaged: bool = False
) -> tuple[Plan[AtomicRule], ApplyResult | None]:
    """:func:`run_pass`, as (the plan it acted on, what the apply did); an error that stopped
    the pass is raised, as the pipeline recorded it."""
    report = run_pass(target, apply=apply, remove_unmanaged=remove_unmanaged)
    if report.error is not None:
        raise report.error
    assert report.plan is not None, f"no plan: {report.conflict_with or report.last_error}"
    return report.plan, report.applied


def capture_calls(ec2: EC2Client) -> list[tuple[str, dict[str, Any]]]:
    """Record (operation, parameters) of every call the client makes, in order."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def hook(params: dict[str, Any], model: Any, **_: Any) -> None:
        seen.append((str(model.name), dict(params)))

    ec2.meta.events.register("before-parameter-build.ec2", hook)
    return seen
