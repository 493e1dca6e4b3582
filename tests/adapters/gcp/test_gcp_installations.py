"""Two installations in one GCP project: firewall names are unique per project, so two resources
of the same namespace/name (and installationId) on two networks would collide. The second is a
``Conflict`` naming the first (its network, namespace/name, installationId), before any write;
``plan --live`` and ``apply`` say so; a distinct ``spec.gcp.installationId`` lets both run."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from adapters.gcp.gcp_support import (
    PROJECT,
    Recorder,
    anonymous,
    fake,
    gcp_spec,
    make_target,
    reconcile,
    recorder,
)
from builders import OWNER
from fakes.gcp_compute import FakeCompute
from server_hardening.model import ResourceRef
from server_hardening.reconcile import plan_target, run_target

__all__ = ["fake", "recorder"]  # fixtures

# The same namespace/name in another cluster (another UID), as a second installation has.
SECOND = ResourceRef(OWNER.namespace, OWNER.name, "uid-of-the-second-cluster")


def _with_gcp(spec: Any, **gcp: Any) -> Any:
    assert spec.gcp is not None
    return spec.model_copy(update={"gcp": spec.gcp.model_copy(update=gcp)})


def _first_installation(fake: FakeCompute, recorder: Recorder, **gcp: Any) -> int:
    fake.add_network(PROJECT, "circleci-a")
    first = make_target(_with_gcp(gcp_spec(fake, network="circleci-a"), **gcp), recorder)
    _, result = reconcile(first)
    assert result.errors == []
    return len(first.policy.desired())


def _second_spec(fake: FakeCompute, **gcp: Any) -> Any:
    fake.add_network(PROJECT, "circleci-b")
    return _with_gcp(gcp_spec(fake, network="circleci-b"), **gcp)


def test_same_name_on_another_network_is_a_conflict_and_nothing_is_written(
    fake: FakeCompute, recorder: Recorder
) -> None:
    created = _first_installation(fake, recorder)
    before = fake.rules(PROJECT)
    second = make_target(_second_spec(fake), recorder, owner=SECOND)
    fake.reset_log()

    report = run_target("gcp", lambda: second, _second_spec(fake), 0, [])

    assert report.plan is None and report.applied is None
    assert "circleci-server/circleci on network circleci-a (no installationId)" in (
        report.conflict_with
    )
    assert "set spec.gcp.installationId" in report.conflict_with
    (conflict,) = [f for f in report.findings if f.code == "Conflict"]
    assert "circleci-a" in conflict.message and "installationId" in conflict.message
    assert fake.writes() == []
    assert fake.rules(PROJECT) == before and len(before) == created


def test_the_same_installation_id_on_two_networks_is_named_too(
    fake: FakeCompute, recorder: Recorder
) -> None:
    _first_installation(fake, recorder, installation_id="eu-1")
    spec = _second_spec(fake, installation_id="eu-1")
    second = make_target(spec, recorder, owner=SECOND)
    fake.reset_log()
    report = run_target("gcp", lambda: second, spec, 0, [])
    assert "on network circleci-a (installationId 'eu-1')" in report.conflict_with
    assert fake.writes() == []


def test_a_distinct_installation_id_lets_both_installations_run(
    fake: FakeCompute, recorder: Recorder
) -> None:
    created = _first_installation(fake, recorder)
    spec = _second_spec(fake, installation_id="second")
    second = make_target(spec, recorder, owner=SECOND)
    plan, result = reconcile(second)
    assert result.errors == [] and result.created == len(plan.create) == created
    assert len(fake.rules(PROJECT)) == 2 * created


def test_an_insert_that_meets_another_networks_rule_never_overwrites_it(
    fake: FakeCompute, recorder: Recorder
) -> None:
    """Even if the clash appears between observe and apply, the 409 is not answered with a PUT
    of the other installation's rule."""
    fake.add_network(PROJECT, "circleci-b")
    second = make_target(gcp_spec(fake, network="circleci-b"), recorder, owner=SECOND)
    planned = plan_target(second, second.observe())
    _first_installation(fake, recorder)  # lands meanwhile
    before = fake.rules(PROJECT)
    fake.reset_log()
    result = second.apply(planned)
    assert result.created == 0 and len(result.errors) >= len(planned.create)
    assert any("circleci-a" in e and "installationId" in e for e in result.errors)
    assert fake.calls("firewalls.update") == []
    assert fake.rules(PROJECT) == before


@pytest.mark.parametrize("command", ["plan", "apply"])
def test_plan_live_and_apply_show_the_conflict(
    fake: FakeCompute,
    recorder: Recorder,
    command: str,
    tmp_path: Any,
    capsys: Any,
    monkeypatch: Any,
) -> None:
    from server_hardening.cli import main

    _first_installation(fake, recorder)
    spec = _second_spec(fake).model_dump(by_alias=True, exclude_none=True, mode="json")
    spec["kubernetes"] = {"networkPolicies": {"enabled": False}}
    path = tmp_path / "hardening.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "hardening.circleci.com/v1alpha1",
                "kind": "ServerHardening",
                "metadata": {"name": OWNER.name, "namespace": OWNER.namespace},
                "spec": spec,
            }
        )
    )
    monkeypatch.setattr("server_hardening.targets.gcp.adapter.make_clients", anonymous)
    fake.reset_log()

    argv = [command, *(["--live"] if command == "plan" else []), "-f", str(path), "-o", "json"]
    assert main(argv) == 1
    doc = json.loads(capsys.readouterr().out)
    (gcp,) = doc["targets"]
    assert "on network circleci-a" in gcp["conflictWith"]
    assert gcp["actions"] == []
    assert fake.writes() == []

    assert main([command, *(["--live"] if command == "plan" else []), "-f", str(path)]) == 1
    table = capsys.readouterr().out
    assert "managed by circleci-server/circleci on network circleci-a" in table
    assert "spec.gcp.installationId" in table
