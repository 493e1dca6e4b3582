"""The status schema on a real kube-apiserver: a status the operator writes is stored as written
(nothing pruned, nothing refused), the recorded spec in it included, which the operator reads
back to keep enforcing the last valid spec."""

from __future__ import annotations

from typing import Any

import pytest

from builders import example_body
from e2e.harness import GROUP, PLURAL, VERSION, custom, ensure_namespace, install_crd
from unit.crd.test_crd_schema import written_statuses
from unit.service.test_idle_operator import _merged

NAMESPACE = "status-schema"


@pytest.mark.parametrize("status", written_statuses(), ids=["clean", "drifted", "invalid"])
def test_a_status_the_operator_writes_is_stored_as_written(admin_api: Any, status: Any) -> None:
    install_crd(admin_api)
    ensure_namespace(admin_api, NAMESPACE)
    objects = custom(admin_api)
    body = example_body("kubernetes-only")
    name = f"status-{status['phase'].lower()}-{len(status['targets'])}"
    body["metadata"] = {"name": name, "namespace": NAMESPACE}
    objects.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    written = dict(status)
    # The operator records the spec it enforced; a nested one shows what pruning would take.
    written["lastValidSpec"] = {"generation": 1, "spec": body["spec"]}
    objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, NAMESPACE, PLURAL, name, {"status": written}
    )
    stored = objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
    assert stored["status"] == _merged(written)
    objects.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
