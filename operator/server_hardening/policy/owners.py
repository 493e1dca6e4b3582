"""Controllers whose rules appear in the accounts and projects CircleCI Server runs in, recognised
by their documented marks. Pure: no I/O here.

Such rules are reported as owned by that controller: never changed or removed (not even with
``unmanagedRules: Remove``, which would start a fight the controller wins after an outage), and
still judged for exposure like every rule.

- AWS rule description ``kubernetes.io/rule/nlb/client=``, ``/health=``, ``/mtu=``: the
  Kubernetes AWS cloud provider (NLB Services);
- AWS rule description or tag ``elbv2.k8s.aws/...``: the AWS Load Balancer Controller;
- AWS rule tag ``aws:eks:cluster-name`` or ``eks:cluster-name``: Amazon EKS;
- GCP firewall ``gke-<cluster>-<hash>-all|-master|-vms|-ssh|-exkubelet|-inkubelet``: GKE;
- GCP firewall ``k8s-fw-<lb>`` (traffic), ``k8s-<hash>-node-hc`` and ``k8s-<lb>-http-hc``
  (health checks), or a description naming ``kubernetes.io/service-name``: the Kubernetes GCE
  service controller;
- GCP firewall ``k8s-fw-l7-...`` or ``k8s2-...``: the GKE Ingress / NEG controller.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

AWS_CLOUD_PROVIDER = "the Kubernetes AWS cloud provider (NLB Service)"
AWS_LOAD_BALANCER_CONTROLLER = "the AWS Load Balancer Controller"
EKS = "Amazon EKS"
GKE = "GKE"
GCE_SERVICE_CONTROLLER = "the Kubernetes GCE service controller"
GKE_INGRESS = "the GKE Ingress controller"

_AWS_DESCRIPTIONS = (
    ("kubernetes.io/rule/nlb/", AWS_CLOUD_PROVIDER),
    ("elbv2.k8s.aws/", AWS_LOAD_BALANCER_CONTROLLER),
)
_AWS_TAGS = (
    ("elbv2.k8s.aws/cluster", AWS_LOAD_BALANCER_CONTROLLER),
    ("ingress.k8s.aws/stack", AWS_LOAD_BALANCER_CONTROLLER),
    ("aws:eks:cluster-name", EKS),
    ("eks:cluster-name", EKS),
)
_GCP_NAMES = (
    (re.compile(r"^gke-.+-[0-9a-f]{8}-(all|master|vms|ssh|exkubelet|inkubelet)$"), GKE),
    (re.compile(r"^k8s-fw-l7-"), GKE_INGRESS),
    (re.compile(r"^k8s2-"), GKE_INGRESS),
    (re.compile(r"^k8s-fw-"), GCE_SERVICE_CONTROLLER),
    (re.compile(r"^k8s-[0-9a-z-]+-hc$"), GCE_SERVICE_CONTROLLER),
)


def aws_rule_controller(description: str, tags: Mapping[str, str]) -> str:
    """The controller a security-group rule belongs to by its marks, or ""."""
    for prefix, controller in _AWS_DESCRIPTIONS:
        if description.startswith(prefix):
            return controller
    for key, controller in _AWS_TAGS:
        if key in tags or any(k.startswith(key) for k in tags):
            return controller
    return ""


def gcp_firewall_controller(name: str, description: str = "") -> str:
    """The controller a VPC firewall rule belongs to by its name (or description), or ""."""
    for pattern, controller in _GCP_NAMES:
        if pattern.search(name):
            return controller
    if '"kubernetes.io/service-name"' in description:
        return GCE_SERVICE_CONTROLLER
    return ""
