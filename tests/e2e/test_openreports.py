"""The OpenReports Report of a ServerHardening on the real kube-apiserver, written as the
chart's ServiceAccount: absent CRD said once, the chart's optional CRD, create and replace,
every finding, owned by the resource, readable as `kubectl get reports` shows it."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.harness import GROUP, PLURAL, VERSION, custom, operator_identity, wait_for
from server_hardening.drift import DriftCounts
from server_hardening.model import ResourceRef
from server_hardening.reconcile import MAX_FINDINGS, Report, TargetReport
from server_hardening.rules import Finding, Severity
from server_hardening.runner import kube_api
from server_hardening.targets.kubeapi import KubeApi
from server_hardening.targets.reports import ReportWriter

pytestmark = pytest.mark.e2e

NAMESPACE = f"svh-reports-{uuid.uuid4().hex[:6]}"
REPORTS = ("openreports.io", "v1alpha1", "reports")


@pytest.fixture(scope="module")
def operator_api(control_plane: Any, admin_api: Any) -> Iterator[KubeApi]:
    """The operator's own client, as the chart's ServiceAccount."""
    kubeconfig, _ = operator_identity(control_plane, admin_api, [NAMESPACE])
    api = kube_api(str(kubeconfig))
    yield api
    api.close()


@pytest.fixture(scope="module")
def owner(admin_api: Any, operator_api: Any) -> ResourceRef:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ServerHardening",
        "metadata": {"name": "circleci", "namespace": NAMESPACE},
        "spec": {
            "serverVersion": "4.3",
            "topology": {
                "kubernetesNodes": {"cidrs": ["10.0.0.0/16"]},
                "nomadClients": {"cidrs": ["10.1.0.0/16"]},
                "externalVMs": {"enabled": False},
            },
        },
    }
    created = custom(admin_api).create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, body
    )
    return ResourceRef(NAMESPACE, "circleci", created["metadata"]["uid"])


def make_report(owner: ResourceRef, missing: int) -> Report:
    findings = [
        Finding(Severity.WARNING, "Missing", f"svh-policy-{i} is desired and absent",
                row="K8S-IN-1", target="kubernetes", objects=(f"svh-policy-{i}",))
        for i in range(missing)
    ]  # fmt: skip
    aws = TargetReport(
        name="aws",
        observed=True,
        drift=DriftCounts(unmanaged_widening=1),
        findings=[
            Finding(
                Severity.ERROR,
                "WorldOpenSensitivePort",
                "sgr-0123456789abcdef0 in sg-0aaaaaaaaaaaaaaaa opens 22 to the world",
                row="ALL-IN-1",
                target="aws",
            )
        ],
    )
    k8s = TargetReport(name="kubernetes", observed=True, findings=findings,
                       drift=DriftCounts(missing=missing))  # fmt: skip
    return Report(ref=owner, generation=1, mode="Audit", phase="Drifted", reason="DriftReported",
                  message="", checked_at=dt.datetime.now(dt.UTC), targets=[k8s, aws])  # fmt: skip


def reports_crd_installed(admin_api: Any) -> bool:
    try:
        client.ApiextensionsV1Api(admin_api).read_custom_resource_definition(
            "reports.openreports.io"
        )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_without_the_crd_it_says_so_once_and_carries_on(
    operator_api: Any, owner: ResourceRef, admin_api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert not reports_crd_installed(admin_api)
    writer = ReportWriter()
    with caplog.at_level(logging.INFO, logger="server_hardening.reports"):
        assert writer.publish(operator_api, make_report(owner, 3), owner) is False
        assert writer.publish(operator_api, make_report(owner, 3), owner) is False
    said = [r for r in caplog.records if "CRD is not installed" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]


def install_chart_crd(admin_api: Any) -> None:
    import sys

    from e2e.harness import REPO

    sys.path.insert(0, str(REPO / "tests" / "packaging"))
    from hardening_chart import render_chart

    rendered = render_chart({"openReports": {"installCRD": True}}, namespace="server-hardening")
    (crd,) = [
        o for o in rendered
        if o.get("kind") == "CustomResourceDefinition"
        and o["metadata"]["name"] == "reports.openreports.io"
    ]  # fmt: skip
    ext = client.ApiextensionsV1Api(admin_api)
    ext.create_custom_resource_definition(crd)

    def established() -> bool:
        got = ext.read_custom_resource_definition("reports.openreports.io")
        return any(c.type == "Established" and c.status == "True"
                   for c in got.status.conditions or [])  # fmt: skip

    wait_for("the Report CRD to be established", established)


def test_the_chart_installs_the_crd_and_every_finding_is_published(
    operator_api: Any, owner: ResourceRef, admin_api: Any, caplog: pytest.LogCaptureFixture
) -> None:
    install_chart_crd(admin_api)
    writer = ReportWriter()
    writer.publish(operator_api, make_report(owner, 1), owner)  # may race the CRD's discovery
    many = MAX_FINDINGS * 2
    with caplog.at_level(logging.INFO, logger="server_hardening.reports"):
        wait_for(
            "the first Report",
            lambda: writer.publish(operator_api, make_report(owner, many), owner),
        )
    stored = custom(admin_api).get_namespaced_custom_object(*REPORTS[:2], NAMESPACE,
                                                            REPORTS[2], "circleci")  # fmt: skip
    assert stored["metadata"]["ownerReferences"][0]["uid"] == owner.uid
    assert stored["scope"]["kind"] == "ServerHardening"
    assert len(stored["results"]) == many + 1  # every finding, no cap
    assert stored["summary"] == {"pass": 0, "fail": many + 1, "warn": 0, "error": 0, "skip": 0}
    world = next(r for r in stored["results"] if r["rule"] == "WorldOpenSensitivePort")
    assert world["policy"] == "ALL-IN-1" and world["severity"] == "critical"
    assert world["properties"]["awsIds"] == "sg-0aaaaaaaaaaaaaaaa,sgr-0123456789abcdef0"

    # Replaced, not duplicated, when the findings change.
    assert writer.publish(operator_api, make_report(owner, 0), owner) is True
    listed = custom(admin_api).list_namespaced_custom_object(*REPORTS[:2], NAMESPACE, REPORTS[2])
    assert [i["metadata"]["name"] for i in listed["items"]] == ["circleci"]
    (item,) = listed["items"]
    assert item["summary"]["fail"] == 1
    assert item["summary"]["pass"] == 1  # kubernetes: checked and in sync now

    # What `kubectl get reports -n NS` prints: the CRD's printer columns over the table API.
    table = admin_api.call_api(
        f"/apis/openreports.io/v1alpha1/namespaces/{NAMESPACE}/reports", "GET",
        header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
        auth_settings=["BearerToken"], response_type="object", _return_http_data_only=True,
    )  # fmt: skip
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:1] == ["Name"] and {"Pass", "Fail", "Warn", "Error", "Skip"} <= set(columns)
    row = dict(zip(columns, table["rows"][0]["cells"], strict=True))
    assert (row["Name"], row["Pass"], row["Fail"]) == ("circleci", 1, 1)


def test_the_chart_leaves_the_report_crd_alone_by_default() -> None:
    import sys

    from e2e.harness import REPO

    sys.path.insert(0, str(REPO / "tests" / "packaging"))
    from hardening_chart import render_chart

    names = [o["metadata"]["name"] for o in render_chart({}) if o.get("kind") ==
             "CustomResourceDefinition"]  # fmt: skip
    assert "reports.openreports.io" not in names
