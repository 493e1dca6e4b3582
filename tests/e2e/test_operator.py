"""The operator against the real kube-apiserver, running as the Helm chart's ServiceAccount with
exactly the chart's RBAC. Writes are counted from the API server's own audit log."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.harness import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    create,
    custom,
    events_for,
    network_policies,
    operator_identity,
    resource,
    status_of,
    target_status,
    wait_for,
    wait_for_event,
)

pytestmark = pytest.mark.e2e

POOL = [f"svh-e2e-{uuid.uuid4().hex[:6]}-{i}" for i in range(15)]
NAME = "circleci"
EXPECTED = {"svh-default-deny", "svh-allow-namespace", "svh-allow-circleci-proxy"}


@pytest.fixture(scope="module")
def operator_sa_kubeconfig(control_plane: Any, admin_api: Any) -> tuple[Path, str]:
    return operator_identity(control_plane, admin_api, POOL)


@pytest.fixture(scope="module")
def operator(operator_sa_kubeconfig: Any) -> Iterator[OperatorProcess]:
    kubeconfig, _ = operator_sa_kubeconfig
    proc = OperatorProcess(kubeconfig, POOL).start()
    yield proc
    proc.stop()


@pytest.fixture
def ns(admin_api: Any) -> str:
    name = POOL.pop()
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_service(
        name,
        {
            "metadata": {"name": "circleci-proxy", "labels": {"app": "circleci-proxy"}},
            "spec": {
                "selector": {"app": "circleci-proxy", "layer": "application"},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080},
                    {"name": "https", "port": 443, "targetPort": "https"},
                    {"name": "nomad", "port": 4647, "targetPort": 4647},
                ],
            },
        },
    )
    return name


def phase_is(api: Any, namespace: str, phase: str, name: str = NAME) -> Any:
    return lambda: (
        status_of(api, namespace, name)
        if status_of(api, namespace, name).get("phase") == phase
        else None
    )


def writes_by(
    audit: list[dict[str, Any]], user: str, namespace: str, resource: str = "networkpolicies"
) -> list[str]:
    return [
        f"{e['verb']} {e['objectRef'].get('name', '')}"
        for e in audit
        if e["user"]["username"].endswith(f":{user}")
        and e["verb"] in {"create", "update", "patch", "delete"}
        and e.get("objectRef", {}).get("resource") == resource
        and e.get("objectRef", {}).get("namespace") == namespace
    ]


ALLOW_ALL = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-everything"},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]},
}


def test_apply_writes_the_policies_and_reports_enforced(
    operator: OperatorProcess, admin_api: Any, ns: str
) -> None:
    create(admin_api, resource(ns))
    status = wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    policies = network_policies(admin_api, ns)
    assert set(policies) == EXPECTED
    proxy = policies["svh-allow-circleci-proxy"]
    assert proxy.metadata.labels["app.kubernetes.io/managed-by"] == "server-hardening"
    assert proxy.metadata.annotations["hardening.circleci.com/owner"].startswith(f"{ns}/{NAME}/")
    assert proxy.spec.pod_selector.match_labels == {"app": "circleci-proxy", "layer": "application"}
    ports = sorted(str(p.port) for rule in proxy.spec.ingress for p in rule.ports)
    assert ports == ["4647", "8080", "https"]  # the Service's targetPorts, not its ports
    assert status["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Valid": "True",
        "Ready": "True",
        "InSync": "True",
        "ComponentsResolved": "True",
    }
    (kube,) = status["targets"]
    assert kube["name"] == "kubernetes" and kube["managedRules"] == 3
    wait_for_event(admin_api, ns, NAME, "an Applied event", lambda e: e.reason == "Applied")
    assert (
        operator.metric(
            "server_hardening_managed_rules", namespace=ns, name=NAME, target="kubernetes"
        )
        == 3
    )
    assert (
        operator.metric(
            "server_hardening_resource_ready", namespace=ns, name=NAME, phase="Enforced"
        )
        == 1
    )


def test_an_edited_managed_policy_is_restored_and_counted(
    operator: OperatorProcess, admin_api: Any, ns: str
) -> None:
    create(admin_api, resource(ns))
    wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    net = client.NetworkingV1Api(admin_api)
    before = operator.metric(
        "server_hardening_drift_detected_total", target="kubernetes", kind="modified"
    )
    net.patch_namespaced_network_policy("svh-allow-circleci-proxy", ns, {"spec": {"ingress": [{}]}})

    def restored() -> Any:
        policy = net.read_namespaced_network_policy("svh-allow-circleci-proxy", ns)
        return policy if policy.spec.ingress and policy.spec.ingress[0]._from else None

    wait_for("the policy to be restored", restored)
    last = wait_for(
        "lastDrift", lambda: target_status(admin_api, ns, NAME, "kubernetes").get("lastDrift")
    )
    assert last["modified"] == 1 and last["repaired"] is True
    wait_for_event(
        admin_api, ns, NAME, "the DriftDetected event",
        lambda e: e.reason == "DriftDetected" and "modified svh-allow-circleci-proxy" in e.message,
    )  # fmt: skip
    assert (
        operator.metric(
            "server_hardening_drift_detected_total", target="kubernetes", kind="modified"
        )
        >= before + 1
    )


def test_a_deleted_managed_policy_is_restored(
    operator: OperatorProcess, admin_api: Any, ns: str
) -> None:
    create(admin_api, resource(ns))
    wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    net = client.NetworkingV1Api(admin_api)
    old_uid = net.read_namespaced_network_policy("svh-default-deny", ns).metadata.uid
    net.delete_namespaced_network_policy("svh-default-deny", ns)
    wait_for(
        "svh-default-deny to come back",
        lambda: (
            (p := network_policies(admin_api, ns).get("svh-default-deny")) is not None
            and p.metadata.uid != old_uid
        ),
    )
    last = wait_for(
        "lastDrift", lambda: target_status(admin_api, ns, NAME, "kubernetes").get("lastDrift")
    )
    assert last["missing"] == 1 and last["repaired"] is True


def test_an_allow_all_policy_is_reported_then_removed_when_asked(
    operator: OperatorProcess, admin_api: Any, ns: str
) -> None:
    create(admin_api, resource(ns))
    wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    client.NetworkingV1Api(admin_api).create_namespaced_network_policy(ns, ALLOW_ALL)
    status = wait_for("Drifted", phase_is(admin_api, ns, "Drifted"))
    (kube,) = status["targets"]
    assert kube["drift"]["unmanagedWidening"] == 1
    # Every source on every port: that opens the guide's sensitive ports to the whole internet,
    # the same finding (and the same paging metric) as a world-open rule on either cloud.
    assert any(
        "allow-everything" in f["message"]
        and f["code"] == "WorldOpenSensitivePort"
        and f["severity"] == "error"
        for f in kube["findings"]
    )
    assert (
        operator.metric(
            "server_hardening_world_open_sensitive_ports",
            namespace=ns,
            name=NAME,
            target="kubernetes",
        )
        == 1
    )
    assert "allow-everything" in network_policies(admin_api, ns)  # Report: left alone
    assert (
        operator.metric(
            "server_hardening_drift",
            namespace=ns,
            name=NAME,
            target="kubernetes",
            kind="unmanaged_widening",
        )
        == 1
    )

    custom(admin_api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, NAME, {"spec": {"unmanagedRules": "Remove"}}
    )
    wait_for(
        "allow-everything to be removed",
        lambda: "allow-everything" not in network_policies(admin_api, ns),
    )
    wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    # Events are posted after the status is written: wait for it rather than race it.
    wait_for(
        "the RemovedUnmanaged event",
        lambda: any(
            e.reason == "RemovedUnmanaged" and "allow-everything" in e.message
            for e in events_for(admin_api, ns, NAME)
        ),
    )


def test_audit_mode_reports_and_never_writes(
    operator: OperatorProcess,
    admin_api: Any,
    ns: str,
    control_plane: Any,
    operator_sa_kubeconfig: Any,
) -> None:
    _, service_account = operator_sa_kubeconfig
    client.NetworkingV1Api(admin_api).create_namespaced_network_policy(ns, ALLOW_ALL)
    create(admin_api, resource(ns, mode="Audit", unmanagedRules="Remove"))
    status = wait_for("Drifted", phase_is(admin_api, ns, "Drifted"))
    (kube,) = status["targets"]
    assert kube["drift"]["missing"] == 3 and kube["drift"]["unmanagedWidening"] == 1
    assert status["conditions"][1]["reason"] == "DriftReported"

    # Let a few drift checks run, then read the API server's audit log. Nothing changes, so
    # the status is not written again: the checks show in the metrics.
    def checks() -> float:
        return sum(operator.metric("server_hardening_drift_checks_total", how=how)
                   for how in ("full", "unchanged"))  # fmt: skip

    before = checks()
    wait_for("two more drift checks", lambda: checks() >= before + 2, timeout=45)
    assert status_of(admin_api, ns, NAME)["lastDriftCheckTime"] == status["lastDriftCheckTime"]
    assert set(network_policies(admin_api, ns)) == {"allow-everything"}
    assert writes_by(control_plane.audit_events(), service_account, ns) == []


def test_deleting_an_audit_mode_resource_writes_nothing_whatever_the_deletion_policy(
    operator: OperatorProcess,
    admin_api: Any,
    ns: str,
    control_plane: Any,
    operator_sa_kubeconfig: Any,
) -> None:
    """Enforce wrote the policies (deletionPolicy: Delete), then the resource went to Audit and
    was deleted: the operator writes nothing to any target, only the finalizer goes."""
    _, service_account = operator_sa_kubeconfig
    create(admin_api, resource(ns, deletionPolicy="Delete"))
    wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    custom(admin_api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, NAME, {"spec": {"mode": "Audit"}}
    )
    wait_for("Auditing", phase_is(admin_api, ns, "Auditing"))
    before = writes_by(control_plane.audit_events(), service_account, ns)

    custom(admin_api).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)

    def gone() -> bool:
        try:
            custom(admin_api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for("the resource to be gone", gone)
    audit = control_plane.audit_events()
    after = writes_by(audit, service_account, ns)
    print(
        f"writes by the operator to {ns}: networkpolicies {len(before)} before the deletion "
        f"(Enforce), {len(after) - len(before)} at it; serverhardenings "
        f"{writes_by(audit, service_account, ns, 'serverhardenings')}; events "
        f"{len(writes_by(audit, service_account, ns, 'events'))}"
    )
    assert after[len(before) :] == []  # 0 writes to networkpolicies at deletion
    assert after == before
    left = network_policies(admin_api, ns)
    assert set(left) == EXPECTED  # untouched: still there, still marked
    assert all(
        p.metadata.annotations["hardening.circleci.com/owner"].startswith(f"{ns}/{NAME}/")
        for p in left.values()
    )


def test_a_resource_the_model_refuses_gets_invalid_spec_and_nothing_is_written(
    operator: OperatorProcess, admin_api: Any, ns: str
) -> None:
    body = resource(ns)
    body["spec"]["topology"]["nomadClients"] = {"cidrs": ["10.0.128.0/20"]}  # inside the nodes' /16
    create(admin_api, body)
    status = wait_for("Invalid", phase_is(admin_api, ns, "Invalid"))
    valid = next(c for c in status["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert (
        "spec.topology.nomadClients.cidrs[0]: 10.0.128.0/20 overlaps spec.topology.kubernetesNodes.cidrs[0]"
        in valid["message"]
    )
    wait_for_event(
        admin_api, ns, NAME, "the InvalidSpec event", lambda e: e.reason == "InvalidSpec"
    )
    assert network_policies(admin_api, ns) == {}


@pytest.mark.parametrize("policy", ["Delete", "Orphan"])
def test_deletion_follows_the_deletion_policy(
    operator: OperatorProcess, admin_api: Any, ns: str, policy: str
) -> None:
    create(admin_api, resource(ns, deletionPolicy=policy))
    wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    custom(admin_api).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)

    def gone() -> bool:
        try:
            custom(admin_api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for("the resource to be gone", gone)
    left = network_policies(admin_api, ns)
    if policy == "Delete":
        assert left == {}
    else:
        assert set(left) == EXPECTED
        for item in left.values():
            assert "hardening.circleci.com/owner" not in (item.metadata.annotations or {})
            assert "app.kubernetes.io/managed-by" not in (item.metadata.labels or {})


def test_a_second_resource_for_the_same_namespace_is_a_conflict(
    operator: OperatorProcess, admin_api: Any, ns: str
) -> None:
    create(admin_api, resource(ns))
    wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    second = resource(ns)
    second["metadata"]["name"] = "second"
    create(admin_api, second)
    status = wait_for("Conflict", phase_is(admin_api, ns, "Conflict", name="second"))
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "Conflict" and f"{ns}/{NAME}" in ready["message"]
    assert status_of(admin_api, ns, NAME)["phase"] == "Enforced"


def test_a_killed_operator_converges_on_restart_without_duplicates_or_deletes(
    admin_api: Any,
    operator: OperatorProcess,
    operator_sa_kubeconfig: Any,
    control_plane: Any,
    ns: str,
) -> None:
    kubeconfig, service_account = operator_sa_kubeconfig
    operator.kill()
    try:
        create(admin_api, resource(ns))
        first = OperatorProcess(kubeconfig, [ns]).start()
        wait_for("a first managed policy", lambda: network_policies(admin_api, ns) or None)
        first.kill()  # mid-way: after some writes, maybe before the rest and before status
        second = OperatorProcess(kubeconfig, [ns]).start()
        try:
            wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
        finally:
            second.stop()
    finally:
        operator.start()
    assert set(network_policies(admin_api, ns)) == EXPECTED
    writes = writes_by(control_plane.audit_events(), service_account, ns)
    # Nothing was ever removed (no window with less access), and each policy was created once.
    assert not [w for w in writes if w.startswith("delete")], writes
    creates = [w for w in writes if w.startswith("create")]
    assert sorted(creates) == sorted(f"create {name}" for name in EXPECTED), writes


def test_metrics_show_reconciles_and_health(
    operator: OperatorProcess, admin_api: Any, ns: str
) -> None:
    create(admin_api, resource(ns))
    wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
    assert operator.metric("server_hardening_reconciles_total") >= 1
    assert operator.metric("server_hardening_reconcile_duration_seconds_count") >= 1
    assert (
        operator.metric(
            "server_hardening_last_reconcile_timestamp_seconds", namespace=ns, name=NAME
        )
        > 0
    )
    assert (
        operator.metric("server_hardening_drift_check_interval_seconds", namespace=ns, name=NAME)
        == 5
    )

    def calls() -> dict[str, float]:
        return {
            operation: operator.metric(
                "server_hardening_api_calls_total", target="kubernetes", operation=operation
            )
            for operation in ("create_networkpolicy", "list_networkpolicies", "read_service")
        }

    def checks() -> float:
        return sum(operator.metric("server_hardening_drift_checks_total", how=how)
                   for how in ("full", "unchanged"))  # fmt: skip

    def full_checks() -> float:
        return operator.metric("server_hardening_drift_checks_total", how="full")

    assert calls()["create_networkpolicy"] >= 1
    time.sleep(6)  # the reconciles that the watch events of its own writes trigger
    before, checked, full = calls(), checks(), full_checks()

    def last_check() -> float:
        return operator.metric(
            "server_hardening_last_drift_check_timestamp_seconds",
            namespace=ns,
            name=NAME,
            target="kubernetes",
        )

    checked_at = last_check()
    wait_for("two more drift checks", lambda: checks() >= checked + 2, timeout=45)
    # A skipped check is still a check: the series ServerHardeningDriftCheckStale ages on moves.
    assert last_check() > checked_at

    # Drift checks of an unchanged namespace are skipped: no list, no Service read. One check
    # per FULL_CHECK_PERIOD runs in full (where in the cycle comes from the uid): it lists once.
    def reads_only_from_full_checks() -> bool:
        now, ran = calls(), full_checks() - full
        listed = now["list_networkpolicies"] - before["list_networkpolicies"]
        read = now["read_service"] - before["read_service"]
        # A check is counted before it reads: the reads may lag its count for a moment.
        return listed == ran and (read > 0) == (ran > 0)

    wait_for("reads from the full checks only", reads_only_from_full_checks, timeout=10)
    assert calls()["create_networkpolicy"] == before["create_networkpolicy"]
    assert operator.http("/healthz")[0] == 200
    assert operator.http("/readyz")[0] == 200
    custom(admin_api).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)
    wait_for(
        "the deleted resource's series to go",
        lambda: (
            operator.metric("server_hardening_managed_rules", namespace=ns, name=NAME) == 0
            and f'namespace="{ns}"' not in operator.http("/metrics")[1]
        ),
    )


def test_a_restarted_operator_does_not_check_an_unchanged_namespace_again(
    admin_api: Any, operator: OperatorProcess, operator_sa_kubeconfig: Any, ns: str
) -> None:
    """The reconciles at start wait for the watches' first listings, so the timed checks after a
    restart find nothing changed and are skipped: no second full check of everything."""
    from server_hardening import service

    kubeconfig, _ = operator_sa_kubeconfig
    operator.kill()  # this test's operator watches only its namespace: its counters are its own
    own = OperatorProcess(kubeconfig, [ns]).start()
    try:
        interval = 5.0
        api = custom(admin_api)

        def gone() -> bool:
            try:
                api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)
            except ApiException as exc:
                return exc.status == 404
            return False

        for _ in range(10):
            create(admin_api, resource(ns))
            uid = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)["metadata"][
                "uid"
            ]
            start = service.cycle_start(uid, ns, NAME, interval)
            if service.full_check_every(interval) - start > 2:
                break  # its first two timed checks after a restart are not due in full
            api.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)
            wait_for("the resource gone", gone)
        wait_for("Enforced", phase_is(admin_api, ns, "Enforced"))
        own.kill()
        own.start()
        wait_for("ready", lambda: own.http("/readyz")[0] == 200)

        def count(how: str) -> float:
            return own.metric("server_hardening_drift_checks_total", how=how)

        lists = own.metric(
            "server_hardening_api_calls_total",
            target="kubernetes",
            operation="list_networkpolicies",
        )
        assert lists == 1  # the reconcile at start, after the listings
        wait_for("two timed checks", lambda: count("unchanged") >= 2, timeout=45)
        assert count("full") == 0
        assert (
            own.metric(
                "server_hardening_api_calls_total",
                target="kubernetes",
                operation="list_networkpolicies",
            )
            == 1
        )
    finally:
        own.stop()
        operator.start()


def test_the_examples_pass_the_real_api_server_schema(
    admin_api: Any, operator: OperatorProcess
) -> None:
    from builders import EXAMPLES

    for path in sorted(EXAMPLES.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        body["metadata"]["namespace"] = POOL[0]
        custom(admin_api).create_namespaced_custom_object(
            GROUP, VERSION, POOL[0], PLURAL, body, dry_run="All", field_validation="Strict"
        )


def test_a_resource_whose_cloud_is_unreachable_can_still_be_deleted(
    admin_api: Any, operator_sa_kubeconfig: Any, ns: str
) -> None:
    kubeconfig, _ = operator_sa_kubeconfig
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
           "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    own = OperatorProcess(kubeconfig, [ns], env=env, extra_args=["--release-timeout", "5"]).start()
    try:
        aws = {
            "region": "us-east-1",
            "endpointUrl": "http://127.0.0.1:9",  # discard port: nothing answers
            "securityGroups": {"nomadClients": "sg-0a1b2c3d4e5f60002"},
        }
        create(admin_api, resource(ns, aws=aws, deletionPolicy="Delete"))
        status = wait_for("Error", phase_is(admin_api, ns, "Error"), timeout=120)
        assert "aws" in status["conditions"][1]["message"]
        assert set(network_policies(admin_api, ns)) == EXPECTED  # the reachable target still works
        custom(admin_api).delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)

        def gone() -> bool:
            try:
                custom(admin_api).get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)
            except ApiException as exc:
                return exc.status == 404
            return False

        wait_for("the finalizer to give up and the resource to go", gone, timeout=240)
        messages = [
            e.message for e in events_for(admin_api, ns, NAME) if e.reason == "ReleaseAbandoned"
        ]
        assert messages and "aws" in messages[0] and "left in place" in messages[0]
        assert network_policies(admin_api, ns) == {}  # kubernetes released as asked (Delete)
    finally:
        own.stop()
