"""The operator end to end with its cloud targets: the real kube-apiserver, moto for EC2 (over
HTTP, the real boto3), and the GCP fake (the real google-cloud-compute client, authenticated
through Application Default Credentials whose token endpoint is a local stand-in)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from adapters.aws.double import MotoDouble
from adapters.aws.world import World, make_world
from e2e.harness import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    cloud_env,
    custom,
    events_for,
    operator_identity,
    status_of,
    target_status,
    wait_for,
)
from fakes.gcp_compute import FakeCompute
from server_hardening.ownership import OWNER_TAG

pytestmark = pytest.mark.e2e

NAMESPACES = [f"svh-cloud-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
NAME = "circleci"
GKE_PODS = {"cidrs": ["10.4.0.0/14"]}  # VPC-native GKE: required with gcp.restrictEgress
TOPOLOGY = {
    "kubernetesNodes": {"cidrs": ["10.0.0.0/20"]},
    "nomadClients": {"cidrs": ["10.0.16.0/20"]},
    "externalVMs": {"cidrs": ["10.0.32.0/20"]},
}


class _TokenEndpoint(BaseHTTPRequestHandler):
    """OAuth2 token endpoint stand-in: the client's ADC refresh lands here, not at Google."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps(
            {"access_token": "e2e-token", "expires_in": 3600, "token_type": "Bearer"}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture(scope="module")
def clouds(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[MotoDouble, FakeCompute, Path]]:
    double = MotoDouble()
    fake = FakeCompute()
    fake.start()
    tokens = ThreadingHTTPServer(("127.0.0.1", 0), _TokenEndpoint)
    threading.Thread(target=tokens.serve_forever, daemon=True).start()
    adc = tmp_path_factory.mktemp("adc") / "application_default_credentials.json"
    # A service-account key file, as GOOGLE_APPLICATION_CREDENTIALS names one; google-auth honours
    # its token_uri (authorized_user files always go to Google), so the refresh stays local.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    adc.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "circleci-e2e",
                "private_key_id": "e2e",
                "private_key": pem,
                "client_email": "server-hardening@circleci-e2e.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"http://127.0.0.1:{tokens.server_address[1]}/token",
            }
        )
    )
    try:
        yield double, fake, adc
    finally:
        tokens.shutdown()
        fake.stop()
        double.stop()


@pytest.fixture(scope="module")
def cloud_operator(control_plane: Any, admin_api: Any, clouds: Any) -> Iterator[OperatorProcess]:
    _, _, adc = clouds
    kubeconfig, _ = operator_identity(control_plane, admin_api, NAMESPACES)
    env = cloud_env(adc)
    proc = OperatorProcess(kubeconfig, NAMESPACES, env=env).start()
    yield proc
    proc.stop()


def create(api: Any, namespace: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServerHardening",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {"serverVersion": "3", "driftCheckInterval": "5s", "topology": TOPOLOGY,
                 "kubernetes": {"networkPolicies": {"enabled": False}}, **spec},
    }  # fmt: skip
    custom(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def settled(api: Any, namespace: str) -> Any:
    status = status_of(api, namespace, NAME)
    return (
        status if status.get("phase") in {"Enforced", "Drifted"} and status.get("targets") else None
    )


def test_aws_target_end_to_end(
    cloud_operator: OperatorProcess, admin_api: Any, clouds: Any
) -> None:
    double, _, _ = clouds
    world: World = make_world(double)  # four groups, each with AWS's default allow-all egress
    ns = NAMESPACES[0]
    create(admin_api, ns, {"aws": world.aws_spec().model_dump(by_alias=True, exclude_none=True)})
    status = wait_for("the aws target to converge", lambda: settled(admin_api, ns), timeout=90)
    aws = target_status(admin_api, ns, NAME, "aws")
    assert aws["lastError"] == "" and aws["managedRules"] > 20
    # The default egress rules are not ours: reported, not removed (unmanagedRules: Report).
    assert aws["drift"]["unmanagedWidening"] == 4
    assert status["phase"] == "Drifted"
    assert any(
        f["code"] == "DefaultEgressAllowAll" or "egress" in f["message"] for f in aws["findings"]
    )
    wait_for(  # events are posted after the status: wait for it rather than race it
        "the Applied event",
        lambda: any(
            e.reason == "Applied" and e.message.startswith("aws:")
            for e in events_for(admin_api, ns, NAME)
        ),
    )

    rules = world.ec2.describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": list(world.groups.values())}]
    )["SecurityGroupRules"]
    owned = [
        r
        for r in rules
        if any(t["Key"] == OWNER_TAG and t["Value"] == f"{ns}/{NAME}" for t in r.get("Tags", []))
    ]
    assert len(owned) == aws["managedRules"]
    victim = owned[0]
    revoke = (
        world.ec2.revoke_security_group_egress
        if victim["IsEgress"]
        else world.ec2.revoke_security_group_ingress
    )
    revoke(GroupId=victim["GroupId"], SecurityGroupRuleIds=[victim["SecurityGroupRuleId"]])

    def restored() -> bool:
        after = world.ec2.describe_security_group_rules(
            Filters=[{"Name": "group-id", "Values": [victim["GroupId"]]}]
        )["SecurityGroupRules"]
        return any(
            r.get("CidrIpv4") == victim.get("CidrIpv4") and r.get("FromPort") == victim.get("FromPort")
            and r.get("ToPort") == victim.get("ToPort") and r["IsEgress"] == victim["IsEgress"]
            and r.get("ReferencedGroupInfo", {}).get("GroupId") == victim.get("ReferencedGroupInfo", {}).get("GroupId")
            and r["SecurityGroupRuleId"] != victim["SecurityGroupRuleId"]
            for r in after
        )  # fmt: skip

    wait_for("the revoked rule to be put back", restored, timeout=60)
    wait_for(  # events are posted after the status: wait for it rather than race it
        "the DriftDetected event",
        lambda: any(
            e.reason == "DriftDetected" and e.message.startswith("aws: missing")
            for e in events_for(admin_api, ns, NAME)
        ),
    )
    assert (
        cloud_operator.metric(
            "server_hardening_managed_rules", namespace=ns, name=NAME, target="aws"
        )
        == aws["managedRules"]
    )
    assert (
        cloud_operator.metric(
            "server_hardening_api_calls_total",
            target="aws",
            operation="DescribeSecurityGroupRules",
            outcome="ok",
        )
        >= 2
    )
    assert (
        cloud_operator.metric("server_hardening_drift_detected_total", target="aws", kind="missing")
        >= 1
    )


def test_gcp_target_end_to_end(
    cloud_operator: OperatorProcess, admin_api: Any, clouds: Any
) -> None:
    _, fake, _ = clouds
    fake.seed_default_network("circleci-e2e", "circleci")
    ns = NAMESPACES[1]
    gcp = {
        "project": "circleci-e2e",
        "network": "circleci",
        "endpoint": fake.url,
        "targetTags": {
            "kubernetesNodes": "circleci-k8s",
            "nomadClients": "circleci-nomad",
            "externalVMs": "circleci-vm",
        },
    }
    create(admin_api, ns, {"gcp": gcp, "topology": {**TOPOLOGY, "kubernetesPods": GKE_PODS}})
    wait_for("the gcp target to converge", lambda: settled(admin_api, ns), timeout=90)
    status = target_status(admin_api, ns, NAME, "gcp")
    assert status["lastError"] == "" and status["managedRules"] > 10
    # Events are posted after the status is written: wait for it rather than race it.
    wait_for(
        "the gcp Applied event",
        lambda: any(
            e.reason == "Applied" and e.message.startswith("gcp:")
            for e in events_for(admin_api, ns, NAME)
        ),
    )
    ours = sorted(
        name
        for (project, name) in fake.firewalls
        if project == "circleci-e2e" and name.startswith("svh-")
    )
    assert len(ours) == status["managedRules"]

    victim = ours[0]
    with fake._lock:  # another client deletes a managed rule
        del fake.firewalls[("circleci-e2e", victim)]
    wait_for(
        "the deleted firewall to be put back",
        lambda: ("circleci-e2e", victim) in fake.firewalls,
        timeout=60,
    )
    wait_for(  # events are posted after the status: wait for it rather than race it
        "the DriftDetected event",
        lambda: any(
            e.reason == "DriftDetected" and e.message.startswith(f"gcp: missing {victim}")
            for e in events_for(admin_api, ns, NAME)
        ),
    )
    assert (
        cloud_operator.metric("server_hardening_drift_detected_total", target="gcp", kind="missing")
        >= 1
    )
    assert (
        cloud_operator.metric(
            "server_hardening_managed_rules", namespace=ns, name=NAME, target="gcp"
        )
        == status["managedRules"]
    )
    assert (
        cloud_operator.metric("server_hardening_api_calls_total", target="gcp", outcome="ok") >= 2
    )


def test_the_operator_sees_a_second_group_on_the_nomad_clients_open_ssh_to_the_world(
    cloud_operator: OperatorProcess, admin_api: Any, clouds: Any
) -> None:
    """server-terraform 4.8's three groups on every Nomad client, only the nomad group
    configured: the operator's status, metrics and Report name the machines and the ssh group,
    and nothing is written to the groups it does not manage."""
    from adapters.aws.test_machines import ASG, rules_of, server_terraform_48, spec_for

    double, _, _ = clouds
    world: World = make_world(double)
    install = server_terraform_48(world)
    before = rules_of(world, install.ssh_group)
    ns = NAMESPACES[2]
    spec = spec_for(world, machines={"nomadClients": {"autoScalingGroups": [ASG]}})
    aws = spec.model_dump(by_alias=True, exclude_none=True, mode="json")["aws"]
    create(admin_api, ns, {"serverVersion": "4.8", "unmanagedRules": "Remove", "aws": aws})

    def reported() -> Any:
        status = status_of(admin_api, ns, NAME)
        for target in status.get("targets") or []:
            for finding in target.get("findings") or []:
                if (
                    finding["code"] == "WorldOpenSensitivePort"
                    and install.ssh_group in finding["message"]
                ):
                    return finding
        return None

    finding = wait_for("the ssh group on the Nomad clients to be reported", reported, timeout=90)
    assert all(i in finding["message"] for i in install.nomad_instances)
    violated = wait_for(
        "the ALL-IN-1 verdict metric",
        lambda: cloud_operator.metric(
            "server_hardening_guide_row", namespace=ns, name=NAME, target="aws",
            row="ALL-IN-1", verdict="violated",
        ) == 1 or None,
    )  # fmt: skip
    assert violated
    assert rules_of(world, install.ssh_group) == before
