"""GCP writes issued together and waited for together, against operations that take time and
a network that is sometimes busy (the fake's ``operation_seconds``, ``not_ready``,
``fail_operations``, ``wait_deadline_seconds``)."""

from __future__ import annotations

import time

from adapters.gcp.gcp_support import (
    PROJECT,
    Recorder,
    fake,
    gcp_spec,
    make_fake,
    make_target,
    plan_for,
    reconcile,
    recorder,
)
from builders import OWNER
from fakes.gcp_compute import FakeCompute
from server_hardening.ownership import gcp_name_prefix

__all__ = ["fake", "recorder"]  # fixtures

PREFIX = gcp_name_prefix(OWNER)
ADDS = ("firewalls.insert", "firewalls.update")


def _seed_one_modified_and_one_stale(fake: FakeCompute, recorder: Recorder) -> tuple[str, str]:
    """A network holding one of our rules edited and one we no longer want."""
    target = make_target(gcp_spec(fake), recorder)
    bodies = {d.key: dict(d.payload) for d in target.policy.desired()}
    edited = f"{PREFIX}nomad-in-allow-rerun"
    fake.seed(PROJECT, {**bodies[edited], "sourceRanges": ["198.51.100.0/24"]})
    stale = f"{PREFIX}nomad-in-allow-old"
    fake.seed(PROJECT, {**bodies[f"{PREFIX}nomad-in-allow-k8s"], "name": stale})
    return edited, stale


def test_all_inserts_are_outstanding_at_once(recorder: Recorder) -> None:
    # pending_operations: an operation is DONE only once asked about, so how many ran side by
    # side shows what was sent before the first wait.
    with make_fake(pending_operations=True) as fake:
        target = make_target(gcp_spec(fake), recorder)
        _, result = reconcile(target)
        desired = len(target.policy.desired())
        assert result.errors == [] and result.created == desired
        # all but the writes the network refused as busy (sent again after the others)
        assert fake.max_outstanding >= desired - fake.chaos_count("firewalls.insert", 400) > 1


def test_removes_are_sent_only_after_every_add_is_done(recorder: Recorder) -> None:
    with make_fake(operation_seconds=0.3) as fake:
        edited, stale = _seed_one_modified_and_one_stale(fake, recorder)
        target = make_target(gcp_spec(fake), recorder)
        plan, result = reconcile(target)
        assert [u.desired.key for u in plan.update] == [edited]
        assert [d.key for d in plan.delete] == [stale]
        assert result.errors == [] and result.in_progress == []
        assert (result.created, result.updated, result.deleted) == (len(plan.create), 1, 1)

        adds_done = [c.at for c in fake.completed if c.kind in ("insert", "update")]
        deletes_sent = [r.at for r in fake.log if r.operation == "firewalls.delete" and not r.chaos]
        assert len(adds_done) == len(plan.create) + 1 and len(deletes_sent) == 1
        assert min(deletes_sent) > max(adds_done)
        assert stale not in fake.rules(PROJECT)
        _, settled = plan_for(target)
        assert settled.empty


def test_a_busy_network_delays_one_write_and_fails_nothing(
    fake: FakeCompute, recorder: Recorder
) -> None:
    fake.calm()  # counts exactly the backoffs of the refusals scripted here
    fake.not_ready("firewalls.insert", times=2)  # the first write, and one of the rest
    target = make_target(gcp_spec(fake), recorder)
    _, result = reconcile(target)
    desired = len(target.policy.desired())
    assert result.errors == [] and result.created == desired
    assert len(fake.rules(PROJECT)) == desired
    refused = [r for r in fake.log if r.operation == "firewalls.insert" and r.status == 400]
    assert len(refused) == 2
    # the two were sent again after the others, after one backoff for both
    inserts = [r for r in fake.log if r.operation == "firewalls.insert"]
    assert inserts[-2:] != refused and {r.status for r in inserts[-2:]} == {200}
    assert len(recorder.sleeps) == 1 and recorder.sleeps[0] >= 0
    assert recorder.count("firewalls.insert", "transient_error") == 2


def test_an_operation_that_fails_not_ready_is_sent_again_with_a_new_request_id(
    fake: FakeCompute, recorder: Recorder
) -> None:
    fake.fail_operations("insert", times=1)
    target = make_target(gcp_spec(fake), recorder)
    _, result = reconcile(target)
    assert result.errors == [] and result.created == len(target.policy.desired())
    failed = [c for c in fake.completed if c.failed]
    assert len(failed) == 1
    inserts = [r for r in fake.log if r.operation == "firewalls.insert" and not r.chaos]
    desired = len(target.policy.desired())
    # one more insert than rules, each with its own request ID: the same ID would only fetch
    # the failed operation again
    assert len(inserts) == desired + 1
    assert len({r.query["requestId"] for r in inserts}) == desired + 1
    assert failed[0].firewall in fake.rules(PROJECT)
    assert set(fake.rules(PROJECT)) == {d.key for d in target.policy.desired()}


def test_a_network_busy_for_good_fails_only_its_write_and_skips_the_deletes(
    recorder: Recorder,
) -> None:
    with make_fake() as fake:
        _, stale = _seed_one_modified_and_one_stale(fake, recorder)
        fake.fail_operations("update", times=100)
        target = make_target(gcp_spec(fake), recorder, attempts=3)
        plan, result = reconcile(target)
        assert result.created == len(plan.create)  # the inserts were not abandoned
        assert result.updated == 0 and result.deleted == 0
        assert any("firewalls.update" in e and "is not ready" in e for e in result.errors)
        assert any(e.startswith("deletes skipped") for e in result.errors)
        assert stale in fake.rules(PROJECT)  # never less access than before
        assert fake.calls("firewalls.delete") == []
        # three attempts, a busy-network refusal nobody scripted counting as one of them
        sent = len(fake.calls("firewalls.update"))
        assert sent + fake.chaos_count("firewalls.update", 400) == 3


def test_operations_that_outlive_the_wait_budget_are_reported_in_progress(
    recorder: Recorder,
) -> None:
    with make_fake(operation_seconds=1.5) as fake:
        _, stale = _seed_one_modified_and_one_stale(fake, recorder)
        target = make_target(gcp_spec(fake), recorder, wait_budget_seconds=0.2)
        plan, result = reconcile(target)
        adds = len(plan.create) + len(plan.update)
        assert result.errors == []
        assert len(result.in_progress) == adds
        assert fake.calls("firewalls.delete") == []  # removes wait for the adds
        assert stale in fake.rules(PROJECT)

        time.sleep(1.6)  # the operations finish on the API's side meanwhile
        fake.reset_log()
        later = make_target(gcp_spec(fake), recorder)
        plan, result = reconcile(later)
        assert plan.create == () and plan.update == ()
        assert result.errors == [] and result.deleted == 1
        assert stale not in fake.rules(PROJECT)


def test_a_wait_that_returns_before_done_is_asked_again(recorder: Recorder) -> None:
    # The API's wait returns at its deadline (2 minutes) with the operation maybe still RUNNING.
    with make_fake(operation_seconds=0.4, wait_deadline_seconds=0.1) as fake:
        target = make_target(gcp_spec(fake), recorder)
        _, result = reconcile(target)
        desired = len(target.policy.desired())
        assert result.errors == [] and result.created == desired
        assert len(fake.calls("globalOperations.wait")) > desired
        assert recorder.count("globalOperations.wait", "error") == 0
