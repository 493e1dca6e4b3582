"""A corpus of bad specs, one fault each, with the field path that names the fault.

Both verdicts are checked against it: the model's (tests/unit/model/test_bad_specs.py, on every
run) and the real API server's, through the generated CRD (tests/e2e/test_admission.py). One
fault per case because the API server runs CEL rules only on an object whose schema checks
passed; with two faults it may name only one.

A case is ``admission`` when the CRD expresses it (schema or CEL), so the API server must name the
same field as the model. ``model_only`` cases the CRD cannot express with the same field path;
their reason says why, and the e2e test asserts the API server still accepts them, so the day
someone adds the rule the corpus is updated with it. ``owned_elsewhere`` cases belong to work in
another branch and are listed, not asserted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from builders import spec_dict

C = "kubernetes.components"
FRONTEND = "spec.kubernetes.components.frontend"
SELECTOR = {"matchLabels": {"app": "kong"}}


@dataclass(frozen=True)
class BadSpec:
    name: str
    spec: dict[str, Any]
    paths: frozenset[str]
    model_only: str = ""  # why the CRD cannot say it at the same path
    owned_elsewhere: str = ""
    # Where the API server's strict decoder names a field inside the faulty one (an object where
    # a number or name goes: it names the object's first key as unknown), and why.
    api_paths: frozenset[str] | None = None
    api_paths_reason: str = ""

    @property
    def expected_api_paths(self) -> frozenset[str]:
        return self.paths if self.api_paths is None else self.api_paths


def _case(name: str, changes: dict[str, Any], *paths: str, **kw: Any) -> BadSpec:
    return BadSpec(name, spec_dict(**changes), frozenset(paths), **kw)


def _removed(name: str, path: str, field_path: str, **changes: Any) -> BadSpec:
    spec = spec_dict(**changes)
    node: Any = spec
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    del node[last]
    return BadSpec(name, spec, frozenset({field_path}))


def _component(name: str, component: dict[str, Any], *paths: str) -> BadSpec:
    return _case(name, {C: {"frontend": component}}, *paths)


CORPUS: tuple[BadSpec, ...] = (
    # Required fields, unknown fields, types.
    _removed("server version missing", "serverVersion", "spec.serverVersion"),
    _removed("nomad clients missing", "topology.nomadClients", "spec.topology.nomadClients"),
    _case("unknown field", {"topology.nomadClient": {"cidrs": ["10.9.0.0/16"]}},
          "spec.topology.nomadClient"),
    _case("a string where a boolean goes", {"topology.externalVMs": {"enabled": "yes",
          "cidrs": ["10.2.0.0/16"]}}, "spec.topology.externalVMs.enabled"),
    # Versions and durations.
    _case("server version 5", {"serverVersion": "5"}, "spec.serverVersion"),
    _case("server version with a v", {"serverVersion": "v4.3"}, "spec.serverVersion"),
    _case("server version 4.x.1", {"serverVersion": "4.x.1"}, "spec.serverVersion"),
    _case("server version with spaces", {"serverVersion": " 4.3"}, "spec.serverVersion"),
    _case("duration in days", {"driftCheckInterval": "1d"}, "spec.driftCheckInterval"),
    _case("duration of zero", {"driftCheckInterval": "0s"}, "spec.driftCheckInterval"),
    _case("duration in milliseconds", {"driftCheckInterval": "500ms"}, "spec.driftCheckInterval"),
    # Enums.
    _case("mode in lower case", {"mode": "enforce"}, "spec.mode"),
    _case("unknown unmanagedRules", {"unmanagedRules": "Delete"}, "spec.unmanagedRules"),
    _case("unknown deletionPolicy", {"deletionPolicy": "Keep"}, "spec.deletionPolicy"),
    # CIDRs.
    _case("a CIDR with a bad octet", {"topology.nomadClients": {"cidrs": ["10.1.0.0/16",
          "10.0.0.300/24"]}}, "spec.topology.nomadClients.cidrs[1]"),
    _case("a CIDR without a prefix", {"topology.nomadClients": {"cidrs": ["10.1.0.0"]}},
          "spec.topology.nomadClients.cidrs[0]"),
    _case("an IPv4 prefix over 32", {"topology.dns": {"cidrs": ["10.0.0.2/33"]}},
          "spec.topology.dns.cidrs[0]"),
    _case("a CIDR with spaces", {"topology.nomadClients": {"cidrs": [" 10.1.0.0/16"]}},
          "spec.topology.nomadClients.cidrs[0]"),
    _case("no CIDR for a role", {"topology.nomadClients": {"cidrs": []}},
          "spec.topology.nomadClients.cidrs"),
    _case("too many CIDRs", {"topology.nomadClients": {"cidrs": [f"10.1.{i}.0/24"
          for i in range(65)]}}, "spec.topology.nomadClients.cidrs"),
    _case("external VMs enabled without CIDRs", {"topology.externalVMs": {"enabled": True}},
          "spec.topology.externalVMs.cidrs"),
    _case("overlapping role subnets", {"topology.nomadClients": {"cidrs": ["10.0.128.0/20"]}},
          "spec.topology.nomadClients.cidrs[0]",
          model_only="the API server's CEL can test overlap, but its error path is static: it "
          "cannot name the index of the CIDR that overlaps"),
    # Port ranges.
    _case("a NodePort range reversed", {"topology.loadBalancers": {"nodePortRange": {
          "from": 32767, "to": 30000}}}, "spec.topology.loadBalancers.nodePortRange"),
    _case("a NodePort range past 65535", {"topology.loadBalancers": {"nodePortRange": {
          "from": 30000, "to": 70000}}}, "spec.topology.loadBalancers.nodePortRange.to"),
    _case("a NodePort range from 0", {"topology.loadBalancers": {"nodePortRange": {
          "from": 0, "to": 30000}}}, "spec.topology.loadBalancers.nodePortRange.from"),
    _case("an API server port of 0", {"kubernetes.apiServer": {"ports": [443, 0]}},
          "spec.kubernetes.apiServer.ports[1]"),
    # Components.
    _component("a pod port of 70000", {"podSelector": SELECTOR, "ports": [8000, 70000]},
               f"{FRONTEND}.ports[1]"),
    _component("a pod port of 0", {"podSelector": SELECTOR, "ports": [0]}, f"{FRONTEND}.ports[0]"),
    _component("a port name in capitals", {"podSelector": SELECTOR, "ports": ["HTTP"]},
               f"{FRONTEND}.ports[0]"),
    _component("a port name of digits", {"podSelector": SELECTOR, "ports": ["8000"]},
               f"{FRONTEND}.ports[0]"),
    _component("a port name with --", {"podSelector": SELECTOR, "ports": ["a--b"]},
               f"{FRONTEND}.ports[0]"),
    _component("a port name of 16", {"podSelector": SELECTOR, "ports": ["sixteen-letters1"]},
               f"{FRONTEND}.ports[0]"),
    replace(
        _component("an old port object", {"podSelector": SELECTOR, "ports": [{"port": 8080}]},
                   f"{FRONTEND}.ports[0]"),
        api_paths=frozenset({f"{FRONTEND}.ports[0].port"}),
        api_paths_reason="strict field validation sees an unknown field 'port' in a value that "
        "has no properties before the type check; without it the API server names ports[0]",
    ),
    _component("ports beside a service", {"service": "kong", "ports": [8000]},
               f"{FRONTEND}.ports"),
    _component("a selector without ports", {"podSelector": SELECTOR}, f"{FRONTEND}.ports"),
    _component("a service and a selector", {"service": "kong", "podSelector": SELECTOR,
               "ports": [8000]}, FRONTEND),
    _component("neither service nor selector", {}, FRONTEND),
    _component("an empty selector", {"podSelector": {}, "ports": [80]}, f"{FRONTEND}.podSelector"),
    _component("an old flat selector", {"podSelector": {"app": "kong"}, "ports": [80]},
               f"{FRONTEND}.podSelector.app"),
    _component("a bad service name", {"service": "Kong"}, f"{FRONTEND}.service"),
    _component("a bad label key", {"podSelector": {"matchLabels": {"-app": "kong"}},
               "ports": [80]}, f"{FRONTEND}.podSelector.matchLabels"),
    _component("a label name of 64", {"podSelector": {"matchLabels": {"a" * 64: "kong"}},
               "ports": [80]}, f"{FRONTEND}.podSelector.matchLabels"),
    _component("a label prefix of 254", {"podSelector": {"matchLabels": {"x" * 254 + "/a": "k"}},
               "ports": [80]}, f"{FRONTEND}.podSelector.matchLabels"),
    _component("a bad label value", {"podSelector": {"matchLabels": {"app": "-kong"}},
               "ports": [80]}, f"{FRONTEND}.podSelector.matchLabels.app"),
    _component("In without values", {"podSelector": {"matchExpressions": [
               {"key": "app", "operator": "In"}]}, "ports": [80]},
               f"{FRONTEND}.podSelector.matchExpressions[0].values"),
    _component("Exists with values", {"podSelector": {"matchExpressions": [
               {"key": "app", "operator": "Exists", "values": ["a"]}]}, "ports": [80]},
               f"{FRONTEND}.podSelector.matchExpressions[0].values"),
    _component("an unknown operator", {"podSelector": {"matchExpressions": [
               {"key": "app", "operator": "Has"}]}, "ports": [80]},
               f"{FRONTEND}.podSelector.matchExpressions[0].operator"),
    _component("a bad expression key", {"podSelector": {"matchExpressions": [
               {"key": "a/b/c", "operator": "Exists"}]}, "ports": [80]},
               f"{FRONTEND}.podSelector.matchExpressions[0].key"),
    _component("a bad expression value", {"podSelector": {"matchExpressions": [
               {"key": "app", "operator": "In", "values": ["kong", "-x"]}]}, "ports": [80]},
               f"{FRONTEND}.podSelector.matchExpressions[0].values[1]"),
    _component("an expression without operator", {"podSelector": {"matchExpressions": [
               {"key": "app"}]}, "ports": [80]},
               f"{FRONTEND}.podSelector.matchExpressions[0].operator"),
    # External Nomad servers (4.8+).
    _case("external Nomad servers on 4.7", {"serverVersion": "4.7", "topology.nomadServers":
          {"cidrs": ["10.3.0.0/24"]}}, "spec.topology.nomadServers"),
    _case("external Nomad servers without CIDRs", {"serverVersion": "4.8",
          "topology.nomadServers": {"cidrs": []}}, "spec.topology.nomadServers.cidrs"),
    _case("a bad Nomad servers' security group", {"serverVersion": "4.8",
          "topology.nomadServers": {"cidrs": ["10.3.0.0/24"]}, "aws": {"region": "us-east-1",
          "securityGroups": {"nomadServers": "sg-1"}}}, "spec.aws.securityGroups.nomadServers"),
    # Clouds.
    _case("a bad security group", {"aws": {"region": "us-east-1", "securityGroups": {
          "nomadClients": "sg-XYZ"}}}, "spec.aws.securityGroups.nomadClients"),
    _case("a bad region", {"aws": {"region": "Virginia", "securityGroups": {}}},
          "spec.aws.region"),
    _case("aws without security groups", {"aws": {"region": "us-east-1"}},
          "spec.aws.securityGroups"),
    _case("a rule quota of 0", {"aws": {"region": "us-east-1", "securityGroups": {},
          "ruleQuota": {"inbound": 0}}}, "spec.aws.ruleQuota.inbound"),
    _case("an endpoint without a scheme", {"aws": {"region": "us-east-1", "securityGroups": {},
          "endpointUrl": "ec2.local"}}, "spec.aws.endpointUrl"),
    _case("a bad GCP project", {"gcp": {"project": "P", "network": "n", "targetTags": {}}},
          "spec.gcp.project"),
    _case("a bad network tag", {"gcp": {"project": "my-project", "network": "n", "targetTags":
          {"nomadClients": "Nomad_Clients"}}}, "spec.gcp.targetTags.nomadClients"),
    _removed("GCP restricting egress without the pod range", "topology.kubernetesPods",
             "spec.topology.kubernetesPods", gcp={"project": "my-project", "network": "n",
             "targetTags": {}}),
    # Reference installations: podman, pods, monitoring.
    _case("an unknown Nomad runtime", {"topology.nomadClients": {"cidrs": ["10.1.0.0/16"],
          "runtime": "crio"}}, "spec.topology.nomadClients.runtime"),
    _case("a pod range that is no CIDR", {"topology.kubernetesPods": {"cidrs": ["pods"]}},
          "spec.topology.kubernetesPods.cidrs[0]"),
    _case("monitoring from every namespace", {"kubernetes.monitoring": {"namespaceSelector":
          {}}}, "spec.kubernetes.monitoring.namespaceSelector"),
    _case("monitoring without ports", {"kubernetes.monitoring": {"namespaceSelector":
          {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}, "ports": []}},
          "spec.kubernetes.monitoring.ports"),
    _case("an unknown load-balancer target type", {"topology.loadBalancers": {"targetType":
          "Pod"}}, "spec.topology.loadBalancers.targetType"),
    # Access: the admin-SSH rules are another branch's work (exposure by meaning).
    _case("admin SSH from the world", {"access.adminSSH": {"enabled": True, "sources":
          ["0.0.0.0/0"]}}, "spec.access.adminSSH.sources[0]",
          owned_elsewhere="admin SSH from the world (exposure by meaning) is reworked in "
          "another branch"),
    _case("admin SSH from two halves of the world", {"access.adminSSH": {"enabled": True,
          "sources": ["0.0.0.0/1", "128.0.0.0/1"]}}, "spec.access.adminSSH.sources",
          owned_elsewhere="admin SSH from the world (exposure by meaning) is reworked in "
          "another branch"),
    _case("admin SSH enabled without sources", {"access.adminSSH": {"enabled": True}},
          "spec.access.adminSSH.sources",
          owned_elsewhere="its CEL rule sits in the admin-SSH block another branch reworks"),
    _case("SSH-rerun source not a CIDR", {"access.sshRerun": {"sources": ["office"]}},
          "spec.access.sshRerun.sources[0]"),
)  # fmt: skip


def admission_cases() -> list[BadSpec]:
    return [c for c in CORPUS if not c.model_only and not c.owned_elsewhere]


def model_only_cases() -> list[BadSpec]:
    return [c for c in CORPUS if c.model_only and not c.owned_elsewhere]


def asserted_cases() -> list[BadSpec]:
    return [c for c in CORPUS if not c.owned_elsewhere]
