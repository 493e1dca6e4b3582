"""An EKS installation of CircleCI Server 4.8-4.10 as CircleCI's own material builds it, on moto.

What is created, and from where (the versions are those in :mod:`reference.flows`):

- VPC 10.0.0.0/16 (the install docs read it with ``aws ec2 describe-vpcs``), node subnets
  10.0.0.0/20 (the EKS VPC CNI gives pods addresses there too), Nomad clients 10.0.16.0/20, VMs
  10.0.32.0/20, external Nomad servers 10.0.48.0/24 (their internal NLB lives there too).
- The EKS cluster security group, as EKS makes it: all traffic from itself, all egress. It is
  the nodes' group (managed node groups attach it); the Kubernetes cloud provider's NLB rules
  land on it.
- server-terraform's Nomad client groups. 4.8.x (``nomad-aws/security_groups.tf``): three
  groups on every client, ``<base>-nomad_sg`` (64535-65535 from ``allowed_ips_retry_ssh``,
  egress all), ``<base>-nomad_traffic_sg`` (4646-4648 from the VPC CIDR, egress all) and
  ``<base>-circleci-nomad_ssh`` (22 from ``allowed_ips_circleci_server_nomad_access``, egress
  all). 4.9.x: one group ``<base>-circleci-nomad-clients-sg`` with four rules (egress all,
  retry SSH, 4646-4648 from the VPC CIDR, 22). main with ``use_podman``: retry SSH 32768-65535.
  The defaults of both source variables are 0.0.0.0/0.
- server-terraform's external Nomad servers (``modules/nomad-server-aws``, 4.8.0+): the servers'
  group (4.8.x: 4646-4648 from the VPC CIDR, egress all; 4.9.x: 4646-4648 from the clients'
  group and from the VPC CIDR, egress all), shared by the internal NLB (listeners 4646-4648,
  health check HTTPS :4646).
- The install docs' hand-made group for machine provisioner's VMs,
  ``circleci-machine-provisioner-sg``: 54782 from 0.0.0.0/0 (and a new group's egress all).
- nginx (``circleci-proxy``) as an NLB: with instance targets, the Kubernetes cloud provider's
  rules on the nodes' group (client: the NodePorts from 0.0.0.0/0; health: the health-check
  NodePort from the VPC CIDR; mtu: ICMP 3/4 from 0.0.0.0/0), each with its documented
  description; with IP targets, the AWS Load Balancer Controller's backend group on the NLB and
  its rule on the nodes' group (the pod ports from that group, ``elbv2.k8s.aws/
  targetGroupBinding=shared``).

:func:`build_eks` creates it through boto3 on a moto endpoint and returns the IDs, the hosts (for
``tests/truth/aws_eval.py``), the flows the installation needs with their sources, and the
ServerHardening spec a platform engineer would write for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from reference import flows as src
from reference.flows import Flow
from truth.aws_eval import Host

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

Version = Literal["4.8", "4.9", "4.10"]
LoadBalancer = Literal["instance", "ip"]

VPC_CIDR = "10.0.0.0/16"
NODES = "10.0.0.0/20"
CLIENTS = "10.0.16.0/20"
VMS = "10.0.32.0/20"
SERVERS = "10.0.48.0/24"
WORLD = "0.0.0.0/0"
BASENAME = "circleci"
NLB_NAME = "a953ad6f802b345fe85f29d793a4e104"  # the in-tree provider names NLBs by the Service UID

# circleci-proxy's NodePorts (Service ports 80, 443, 4647 -> pod ports 8080, 8443, 4647) and the
# health-check NodePort of an externalTrafficPolicy: Local Service.
NODE_PORTS = {80: 30080, 443: 30443, 4647: 30647}
HEALTH_NODE_PORT = 32100
POD_PORTS = {80: 8080, 443: 8443, 4647: 4647}


@dataclass
class AwsReference:
    """One reference installation in a moto account."""

    version: Version
    podman: bool
    external_servers: bool
    load_balancer: LoadBalancer
    vpc: str
    groups: dict[str, str]  # a name for each group -> its ID
    hosts: dict[str, Host]
    flows: tuple[Flow, ...]
    spec: dict[str, Any]
    seeded: dict[str, list[str]] = field(default_factory=dict)  # group name -> rule IDs

    @property
    def group_ids(self) -> list[str]:
        return list(self.groups.values())


def ref_version_48(version: Version) -> bool:
    return version == "4.8"


def _rule_ids(out: Any) -> list[str]:
    return [str(r["SecurityGroupRuleId"]) for r in out.get("SecurityGroupRules", [])]


class _Account:
    def __init__(self, ec2: EC2Client, vpc: str) -> None:
        self.ec2 = ec2
        self.vpc = vpc
        self.groups: dict[str, str] = {}
        self.seeded: dict[str, list[str]] = {}

    def group(self, key: str, name: str, description: str, *, egress_all: bool = True) -> str:
        """A security group as terraform or the CLI makes one: AWS adds the allow-all egress
        rule to every new group; terraform's own egress rule is that rule."""
        group = self.ec2.create_security_group(
            GroupName=name, Description=description, VpcId=self.vpc
        )["GroupId"]
        if not egress_all:
            self.ec2.revoke_security_group_egress(
                GroupId=group,
                IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": WORLD}]}],
            )
        self.groups[key] = group
        self.seeded.setdefault(key, [])
        return group

    def ingress(
        self,
        key: str,
        protocol: str,
        ports: tuple[int, int],
        description: str,
        *,
        cidrs: tuple[str, ...] = (),
        group: str | None = None,
    ) -> None:
        perm: dict[str, Any] = {"IpProtocol": protocol}
        if protocol != "-1":
            perm.update(FromPort=ports[0], ToPort=ports[1])
        if cidrs:
            perm["IpRanges"] = [{"CidrIp": c, "Description": description} for c in cidrs]
        if group:
            perm["UserIdGroupPairs"] = [{"GroupId": group, "Description": description}]
        out = self.ec2.authorize_security_group_ingress(
            GroupId=self.groups[key], IpPermissions=[perm]
        )
        self.seeded[key] += _rule_ids(out)


def build_eks(
    ec2: EC2Client,
    *,
    version: Version = "4.10",
    podman: bool = False,
    external_servers: bool = True,
    load_balancer: LoadBalancer = "instance",
    endpoint_url: str,
) -> AwsReference:
    """Create the installation in the moto account ``ec2`` talks to (see the module's
    docstring for what and from where)."""
    vpc = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
    account = _Account(ec2, vpc)
    tf_clients = src.TF_AWS_48 if version == "4.8" else src.TF_AWS_49
    if podman:
        tf_clients = src.TF_AWS_PODMAN

    # EKS: the cluster security group, all traffic from itself (EKS creates it so).
    nodes = account.group(
        "eks-cluster", "eks-cluster-sg-circleci-1234", "EKS created security group"
    )
    account.ingress("eks-cluster", "-1", (-1, -1), "", group=nodes)

    # server-terraform's Nomad clients.
    retry = (32768, 65535) if podman else (64535, 65535)
    client_groups: list[str]
    if version == "4.8":
        account.group("nomad", f"{BASENAME}-nomad_sg", "SG for CircleCI Server nomad server/client")
        account.ingress(
            "nomad", "tcp", retry, "Allow CircleCI Retry with SSH Access", cidrs=(WORLD,)
        )
        account.group(
            "nomad-traffic",
            f"{BASENAME}-nomad_traffic_sg",
            "Security group that restrict Nomad Client Server communication within VPC CIDR",
        )
        account.ingress(
            "nomad-traffic", "tcp", (4646, 4648), "Allow CircleCI Nomad traffic within VPC",
            cidrs=(VPC_CIDR,),
        )  # fmt: skip
        account.group("nomad-ssh", f"{BASENAME}-circleci-nomad_ssh", "SSH into nomad instances")
        account.ingress("nomad-ssh", "tcp", (22, 22), "SSH", cidrs=(WORLD,))
        client_groups = ["nomad", "nomad-traffic", "nomad-ssh"]
    else:
        account.group(
            "nomad", f"{BASENAME}-circleci-nomad-clients-sg", "CircleCI Nomad Clients Security"
        )
        account.ingress(
            "nomad", "tcp", retry, "Allow CircleCI to run a nomad job with Retry with SSH Access",
            cidrs=(WORLD,),
        )  # fmt: skip
        account.ingress(
            "nomad", "tcp", (4646, 4648), "Allow CircleCI Nomad traffic from/to within VPC",
            cidrs=(VPC_CIDR,),
        )  # fmt: skip
        account.ingress(
            "nomad", "tcp", (22, 22), "Allow CircleCI Server to SSH into nomad instances",
            cidrs=(WORLD,),
        )  # fmt: skip
        client_groups = ["nomad"]

    # server-terraform's external Nomad servers (4.8.0+), their NLB shares their group.
    if external_servers:
        account.group(
            "nomad-servers", f"{BASENAME}-circleci-nomad-server-sg", "CircleCI Nomad Servers"
        )
        if version != "4.8":
            account.ingress(
                "nomad-servers", "tcp", (4646, 4648), "allow-nomad-server-communication-ipv4",
                group=account.groups["nomad"],
            )  # fmt: skip
        account.ingress(
            "nomad-servers", "tcp", (4646, 4648), "allow-nomad-server-communication-vpc",
            cidrs=(VPC_CIDR,),
        )  # fmt: skip

    # The install docs' machine provisioner group (phase 3, "Set up security group").
    account.group(
        "vms", "circleci-machine-provisioner-sg", "CircleCI machine provisioner security group"
    )
    account.ingress("vms", "tcp", (54782, 54782), "", cidrs=(WORLD,))

    # circleci-proxy as an NLB.
    nlb_groups: tuple[str, ...] = ()
    if load_balancer == "instance":
        for service_port in (80, 443, 4647):
            port = NODE_PORTS[service_port]
            account.ingress(
                "eks-cluster", "tcp", (port, port), f"kubernetes.io/rule/nlb/client={NLB_NAME}",
                cidrs=(WORLD,),
            )  # fmt: skip
        account.ingress(
            "eks-cluster", "tcp", (HEALTH_NODE_PORT, HEALTH_NODE_PORT),
            f"kubernetes.io/rule/nlb/health={NLB_NAME}", cidrs=(VPC_CIDR,),
        )  # fmt: skip
        account.ingress(
            "eks-cluster", "icmp", (3, 4), f"kubernetes.io/rule/nlb/mtu={NLB_NAME}", cidrs=(WORLD,)
        )
    else:
        frontend = account.group(
            "nlb-frontend", "k8s-circleci-circleci-0a1b2c3d4e", "[k8s] frontend"
        )
        for port in (80, 443, 4647):
            account.ingress("nlb-frontend", "tcp", (port, port), "", cidrs=(WORLD,))
        backend = account.group(
            "nlb-backend", "k8s-traffic-circleci-0a1b2c3d4e", "[k8s] Shared Backend SecurityGroup"
        )
        for port in sorted(POD_PORTS.values()):
            account.ingress(
                "eks-cluster", "tcp", (port, port), "elbv2.k8s.aws/targetGroupBinding=shared",
                group=backend,
            )  # fmt: skip
        nlb_groups = (frontend, backend)

    g = account.groups
    hosts = {
        "node": Host("node", "10.0.1.10", (g["eks-cluster"],)),
        "pod": Host("pod", "10.0.2.21", (g["eks-cluster"],)),  # VPC CNI: the node's groups
        "nomad-client": Host("nomad-client", "10.0.17.10", tuple(g[k] for k in client_groups)),
        "vm": Host("vm", "10.0.33.10", (g["vms"],)),
        "proxy-nlb": Host("proxy-nlb", "10.0.3.200", nlb_groups),
        # A load balancer that keeps the client's address: the forwarded leg leaves the load
        # balancer, not the client, so only the target's inbound side filters it.
        "nomad-client via an NLB": Host("nomad-client via an NLB", "10.0.17.10"),
        "user": Host("user", "198.51.100.7"),
        "github": Host("github", "140.82.112.3"),
        "internet": Host("internet", "93.184.215.14"),
    }
    if external_servers:
        hosts["nomad-server"] = Host("nomad-server", "10.0.48.10", (g["nomad-servers"],))
        hosts["nomad-server-2"] = Host("nomad-server-2", "10.0.48.11", (g["nomad-servers"],))
        # 4.8's nlb.tf gives the NLB no security group; 4.9+ gives it the servers' group.
        nlb = () if ref_version_48(version) else (g["nomad-servers"],)
        hosts["server-nlb"] = Host("server-nlb", "10.0.48.200", nlb)
        hosts["pod via an NLB"] = Host("pod via an NLB", "10.0.2.21")

    reference = AwsReference(
        version=version,
        podman=podman,
        external_servers=external_servers,
        load_balancer=load_balancer,
        vpc=vpc,
        groups=dict(account.groups),
        hosts=hosts,
        flows=(),
        spec={},
        seeded=account.seeded,
    )
    reference.flows = tuple(_flows(reference, tf_clients))
    reference.spec = _spec(reference, endpoint_url)
    return reference


def _flows(ref: AwsReference, tf_clients: str) -> list[Flow]:
    """The flows this installation needs, each with where CircleCI says so."""
    rerun = 40000 if ref.podman else 64600  # a port podman (or docker) hands a rerun job
    out = [
        Flow("retry with SSH into a Docker job", "user", "nomad-client", "tcp", rerun,
             f"NOMAD-IN-2; {tf_clients} retry SSH"),
        Flow("retry with SSH into a machine job", "user", "vm", "tcp", 54782,
             f"VM-IN-5; {src.DOCS_VM_SG}"),
        Flow("Nomad clients pull code over SSH", "nomad-client", "github", "tcp", 22, "ALL-OUT-4"),
        Flow("Nomad clients fetch images", "nomad-client", "internet", "tcp", 443, "ALL-OUT-3"),
        Flow("VMs pull code over SSH", "vm", "github", "tcp", 22, "VM-OUT-1"),
        Flow("the cluster reaches the internet", "pod", "internet", "tcp", 443, "ALL-OUT-3"),
        Flow("the cluster pulls code over SSH", "pod", "github", "tcp", 22, "ALL-OUT-4"),
        Flow("pods on different nodes", "pod", "node", "tcp", 8080, "K8S-IN-2 / K8S-OUT-3"),
    ]  # fmt: skip
    if ref.external_servers:
        out += [
            Flow("Nomad clients reach the servers' NLB", "nomad-client", "server-nlb", "tcp",
                 4647, f"NOMAD-OUT-3, V48-SRV-IN-2; {src.TF_AWS_SERVER_NLB}"),
            Flow("the NLB forwards the clients' RPC (client IPs kept)",
                 "nomad-client via an NLB", "nomad-server", "tcp", 4647, f"V48-SRV-IN-2; {src.TF_AWS_SERVER_NLB}"),
            Flow("the NLB health-checks the servers", "server-nlb", "nomad-server", "tcp", 4646,
                 f"CHOICE-NOMAD-HEALTH-CHECKS; {src.TF_AWS_SERVER_NLB}"),
            Flow("the servers reach their clients", "nomad-server", "nomad-client", "tcp", 4647,
                 "NOMAD-IN-1 / V48-SRV-OUT-1"),
            Flow("the server's services drive Nomad's API", "pod", "server-nlb", "tcp", 4646,
                 f"V48-K8S-OUT-1, V48-SRV-IN-1; {src.TF_AWS_SERVER_NLB}"),
            Flow("the NLB forwards the API calls (client IPs kept)", "pod via an NLB",
                 "nomad-server", "tcp", 4646, f"V48-SRV-IN-1; {src.TF_AWS_SERVER_NLB}"),
            Flow("the servers among themselves (RPC)", "nomad-server", "nomad-server-2", "tcp",
                 4647, f"V48-SRV-PEER-1; {src.TF_AWS_SERVERS_49}"),
            # server-terraform opens 4646-4648 over TCP only (no UDP Serf gossip) on AWS.
            Flow("the servers among themselves (Serf)", "nomad-server", "nomad-server-2", "tcp",
                 4648, f"V48-SRV-PEER-1; {src.TF_AWS_SERVERS_49}"),
        ]  # fmt: skip
    else:
        out += [
            Flow("the in-cluster Nomad server reaches its clients", "pod", "nomad-client", "tcp",
                 4647, f"NOMAD-IN-1, K8S-OUT-2; {tf_clients} 4646-4648 from the VPC"),
        ]  # fmt: skip
    if ref.load_balancer == "instance":
        out += [
            Flow("users reach the frontend (NodePort, client IP kept)", "user", "node", "tcp",
                 NODE_PORTS[443], f"LB-IN-2, K8S-IN-1; {src.K8S_NLB}"),
            Flow("the NLB health-checks the nodes", "proxy-nlb", "node", "tcp",
                 HEALTH_NODE_PORT, f"K8S-IN-1; {src.K8S_NLB}"),
        ]  # fmt: skip
        if not ref.external_servers:
            out += [
                Flow("Nomad clients reach the proxy's NLB on 4647", "nomad-client", "proxy-nlb",
                     "tcp", 4647, f"NOMAD-OUT-3; {src.K8S_NLB}"),
                Flow("the NLB hands 4647 to the proxy's NodePort (client IP kept)",
                     "nomad-client via an NLB", "node", "tcp", NODE_PORTS[4647],
                     f"LB-IN-4, K8S-IN-1; {src.K8S_NLB}"),
            ]  # fmt: skip
    else:
        out += [
            Flow("users reach the NLB", "user", "proxy-nlb", "tcp", 443, f"LB-IN-2; {src.AWS_LBC}"),
            Flow("the NLB reaches the proxy pods (ip targets)", "proxy-nlb", "pod", "tcp",
                 POD_PORTS[443], f"LB-IN-2, K8S-IN-1; {src.AWS_LBC}"),
        ]  # fmt: skip
    return out


def _spec(ref: AwsReference, endpoint_url: str) -> dict[str, Any]:
    """The ServerHardening spec a platform engineer writes for this installation: the roles'
    subnets, the one group per role the product manages (4.8.x: the clients' main group), the
    NLB's kind."""
    g = ref.groups
    topology: dict[str, Any] = {
        "kubernetesNodes": {"cidrs": [NODES]},
        "nomadClients": {"cidrs": [CLIENTS], "runtime": "podman" if ref.podman else "docker"},
        "externalVMs": {"cidrs": [VMS]},
        "dns": {"cidrs": ["10.0.0.2/32"]},
        "loadBalancers": {"targetType": "Instance" if ref.load_balancer == "instance" else "IP"},
    }
    groups = {
        "kubernetesNodes": g["eks-cluster"],
        "nomadClients": g["nomad"],
        "externalVMs": g["vms"],
    }
    if ref.external_servers:
        topology["nomadServers"] = {"cidrs": [SERVERS]}
        groups["nomadServers"] = g["nomad-servers"]
    return {
        "serverVersion": ref.version,
        "topology": topology,
        "aws": {"region": "us-east-1", "securityGroups": groups, "endpointUrl": endpoint_url},
    }


def observed_groups(ec2: EC2Client, reference: AwsReference) -> list[dict[str, Any]]:
    """Every group of the installation as the account holds it now, in the shape
    ``truth.aws_eval`` reads (``groupId``, ``ingress`` and ``egress`` IpPermissions)."""
    out = ec2.describe_security_groups(GroupIds=reference.group_ids)["SecurityGroups"]
    return [
        {
            "groupId": group["GroupId"],
            "ingress": [dict(p) for p in group.get("IpPermissions", [])],
            "egress": [dict(p) for p in group.get("IpPermissionsEgress", [])],
        }
        for group in out
    ]
