"""The flows a CircleCI Server installation needs, as data: who opens a connection to whom, on
which protocol and port, and where that need is written down (a guide row, a server-terraform
rule or health check, a docs page). The reference installations in this package list theirs;
the tests evaluate each one over what the cloud (or the NetworkPolicies) hold after ``apply``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flow:
    """``source`` opens a connection to ``destination`` on ``protocol``/``port``.

    ``source`` and ``destination`` name endpoints of the reference installation (a host, a pod,
    the internet); ``why`` cites where CircleCI says this traffic must pass."""

    name: str
    source: str
    destination: str
    protocol: str
    port: int
    why: str

    def __str__(self) -> str:
        return (
            f"{self.name}: {self.source} -> {self.destination} {self.protocol}/{self.port} "
            f"({self.why})"
        )


# Where the flows come from. Versions: server-terraform tags 4.8.x (server-4.8.10) and 4.9.x
# (4.9.1), main at 888333e (use_podman); circleci-docs server-admin-4.8 to 4.10.
TF_AWS_48 = "server-terraform 4.8.x nomad-aws/security_groups.tf"
TF_AWS_49 = "server-terraform 4.9.1 nomad-aws/security_groups.tf"
TF_AWS_PODMAN = "server-terraform main (888333e) nomad-aws/security_groups.tf use_podman"
TF_AWS_SERVERS_48 = "server-terraform 4.8.x nomad-aws/modules/nomad-server-aws/server.tf"
TF_AWS_SERVERS_49 = "server-terraform 4.9.1 nomad-aws/modules/nomad-server-aws/server.tf"
TF_AWS_SERVER_NLB = (
    "server-terraform 4.8.0+ nomad-aws/modules/nomad-server-aws/nlb.tf (internal NLB, "
    "listeners 4646-4648, health check HTTPS :4646 /v1/agent/health?type=server)"
)
TF_GCP_48 = "server-terraform 4.8.x nomad-gcp/firewall.tf"
TF_GCP_49 = "server-terraform 4.9.1 nomad-gcp/firewall.tf"
TF_GCP_CLIENT_HEALTH = (
    "server-terraform 4.9.1 nomad-gcp/clients.tf google_compute_health_check.nomad "
    "(HTTP :4646 /v1/agent/health?type=client, the client group's autohealing)"
)
TF_GCP_SERVERS = "server-terraform 4.9.1 nomad-gcp/modules/nomad-server-gcp/firewall.tf"
DOCS_VM_SG = (
    "circleci-docs server-admin-4.8 partials/installation/phase-3.adoc "
    "'Set up security group' (circleci-machine-provisioner-sg, 54782 from 0.0.0.0/0)"
)
DOCS_HARDENING = "circleci-docs server-admin-4.8..4.10 installation/hardening-your-cluster.adoc"
DOCS_MONITORING = (
    "circleci-docs server-admin-4.8 operator/monitoring-stack-reference-helm-chart.adoc; "
    "circleci-server-monitoring-reference values.yaml (ServiceMonitor port prometheus-client)"
)
K8S_NLB = (
    "Kubernetes AWS cloud provider (NLB Service, instance targets): rules "
    "kubernetes.io/rule/nlb/client=, /health=, /mtu= on the nodes' group"
)
AWS_LBC = (
    "AWS Load Balancer Controller (ip targets): the node group admits the NLB's backend group "
    "on the pod ports (elbv2.k8s.aws/targetGroupBinding=shared)"
)
GKE_RULES = "GKE's own firewalls gke-<cluster>-<hash>-all/-master/-vms/-ssh (as GKE creates them)"
