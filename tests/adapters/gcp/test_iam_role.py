"""Every Compute Engine method the GCP adapter calls, on every path, needs only permissions
that ``deploy/gcp/iam-role.yaml`` holds. The methods are what the fake's request log recorded
(real ``google-cloud-compute`` clients over REST), mapped to the permissions Google's Compute
Engine IAM reference lists for each; dropping any one permission from the role refuses a
recorded method, named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from adapters.gcp.gcp_support import (
    PROJECT,
    Recorder,
    gcp_spec,
    make_fake,
    make_target,
    plan_for,
    reconcile,
)
from builders import OWNER
from fakes.gcp_compute import FakeCompute
from server_hardening.model import UnmanagedRules
from server_hardening.ownership import gcp_name_prefix

REPO = Path(__file__).resolve().parents[3]
ROLE = REPO / "deploy/gcp/iam-role.yaml"
PREFIX = gcp_name_prefix(OWNER)

# Compute Engine IAM reference ("Compute Engine IAM roles and permissions", per method). A
# write to a firewall also needs compute.networks.updatePolicy on its network.
METHOD_PERMISSIONS: dict[str, frozenset[str]] = {
    "projects.get": frozenset({"compute.projects.get"}),
    "firewalls.list": frozenset({"compute.firewalls.list"}),
    "firewalls.get": frozenset({"compute.firewalls.get"}),
    "firewalls.insert": frozenset({"compute.firewalls.create", "compute.networks.updatePolicy"}),
    "firewalls.update": frozenset({"compute.firewalls.update", "compute.networks.updatePolicy"}),
    "firewalls.patch": frozenset({"compute.firewalls.update", "compute.networks.updatePolicy"}),
    "firewalls.delete": frozenset({"compute.firewalls.delete", "compute.networks.updatePolicy"}),
    "networks.getEffectiveFirewalls": frozenset({"compute.networks.getEffectiveFirewalls"}),
    "networks.get": frozenset({"compute.networks.get"}),
    "globalOperations.get": frozenset({"compute.globalOperations.get"}),
    "globalOperations.wait": frozenset({"compute.globalOperations.get"}),
    # The machine discovery (which instances carry each role's tag, and what reaches them).
    "instances.list": frozenset({"compute.instances.list"}),
    "instances.aggregatedList": frozenset({"compute.instances.list"}),
    "instances.getEffectiveFirewalls": frozenset({"compute.instances.getEffectiveFirewalls"}),
}
# Granted before the adapter calls a method that needs it (none now: every permission of the
# role is needed by a recorded method).
NOT_YET_CALLED: frozenset[str] = frozenset()


def role_permissions() -> set[str]:
    return set(yaml.safe_load(ROLE.read_text())["includedPermissions"])


def observe(fake: FakeCompute, recorder: Recorder) -> None:
    target = make_target(gcp_spec(fake), recorder)
    reconcile(target)
    fake.reset_log()
    _, plan = plan_for(target)
    assert plan.empty


def create_waiting_on_operations(_: FakeCompute, recorder: Recorder) -> None:
    with make_fake(pending_operations=True) as pending:
        target = make_target(gcp_spec(pending), recorder)
        _, result = reconcile(target)
        assert result.created == len(target.policy.desired()) and not result.errors
        _LOGS.append([r.operation for r in pending.log])


def insert_answered_409(fake: FakeCompute, recorder: Recorder) -> None:
    # The rule is there (the insert done at once) and the answer says it already exists.
    fake.operation_polls = 0
    fake.fail("firewalls.insert", status=409, reason="alreadyExists", after=True)
    target = make_target(gcp_spec(fake), recorder)
    _, result = reconcile(target)
    assert not result.errors


def update_delete_remove(fake: FakeCompute, recorder: Recorder) -> None:
    fake.seed_default_network(PROJECT, "default")
    target = make_target(
        gcp_spec(fake, network="default"), recorder, unmanaged=UnmanagedRules.REMOVE
    )
    bodies = {d.key: dict(d.payload) for d in target.policy.desired()}
    wrong = f"{PREFIX}nomad-in-allow-rerun"
    fake.seed(PROJECT, {**bodies[wrong], "sourceRanges": ["0.0.0.0/0", "198.51.100.0/24"]})
    fake.seed(
        PROJECT, {**bodies[f"{PREFIX}nomad-in-allow-k8s"], "name": f"{PREFIX}nomad-in-allow-old"}
    )
    fake.seed(
        PROJECT,
        {"name": "debug-ssh", "network": "global/networks/default", "priority": 1000,
         "sourceRanges": ["0.0.0.0/0"], "targetTags": ["nomad-client"],
         "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]},
    )  # fmt: skip
    _, result = reconcile(target, remove=True)
    assert result.updated >= 1 and result.deleted == 1 and result.removed_unmanaged >= 1
    assert not result.errors


def machines(fake: FakeCompute, recorder: Recorder) -> None:
    fake.seed_instance(PROJECT, "nomad-0", tags=["nomad-client"])
    found = make_target(gcp_spec(fake), recorder).observe_machines()
    assert any(r.instances for r in found.roles)


def release_delete(fake: FakeCompute, recorder: Recorder) -> None:
    target = make_target(gcp_spec(fake), recorder)
    reconcile(target)
    result = target.release(target.observe(), delete=True)
    assert result.deleted == len(target.policy.desired()) and not result.errors


def release_orphan_then_take_back(fake: FakeCompute, recorder: Recorder) -> None:
    target = make_target(gcp_spec(fake), recorder)
    reconcile(target)
    result = target.release(target.observe(), delete=False)
    assert result.updated == len(target.policy.desired()) and not result.errors
    _, again = reconcile(make_target(gcp_spec(fake), recorder))
    assert again.adopted == len(target.policy.desired()) and not again.errors


_LOGS: list[list[str]] = []
PATHS: dict[str, Callable[[FakeCompute, Recorder], None]] = {
    "observe": observe,
    "create, waiting on operations": create_waiting_on_operations,
    "insert answered 409": insert_answered_409,
    "update, delete, remove": update_delete_remove,
    "release Delete": release_delete,
    "release Orphan, then take back": release_orphan_then_take_back,
    "the machines of each role": machines,
}


@pytest.fixture(scope="module")
def methods() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, path in PATHS.items():
        _LOGS.clear()
        with make_fake() as fake:
            path(fake, Recorder())
            out[name] = [r.operation for r in fake.log] + [m for log in _LOGS for m in log]
    return out


def refused(methods: list[str], granted: set[str]) -> list[str]:
    """``method: missing permissions`` for each method the permissions do not cover."""
    out = []
    for method in dict.fromkeys(methods):
        needed = METHOD_PERMISSIONS.get(method)
        if needed is None:
            out.append(f"{method}: no permission mapping (add it from the Compute IAM reference)")
        elif not needed <= granted:
            out.append(f"{method}: needs {', '.join(sorted(needed - granted))}")
    return out


@pytest.mark.parametrize("path", list(PATHS))
def test_every_method_of_the_path_is_allowed_by_the_role(
    methods: dict[str, list[str]], path: str
) -> None:
    assert methods[path], "the path called nothing"
    assert refused(methods[path], role_permissions()) == []


@pytest.mark.parametrize("permission", sorted(role_permissions() - NOT_YET_CALLED))
def test_dropping_a_permission_refuses_a_method_and_names_it(
    methods: dict[str, list[str]], permission: str
) -> None:
    granted = role_permissions() - {permission}
    messages = [m for calls in methods.values() for m in refused(calls, granted)]
    assert messages, f"no method of any path needs {permission}: the role grants too much"
    assert all(permission in m for m in messages)
    assert all(m.split(":")[0] in METHOD_PERMISSIONS for m in messages)


def test_every_permission_of_the_role_is_needed_by_a_recorded_method(
    methods: dict[str, list[str]],
) -> None:
    needed = {
        p for calls in methods.values() for m in calls for p in METHOD_PERMISSIONS.get(m, set())
    }
    assert role_permissions() - needed == NOT_YET_CALLED
