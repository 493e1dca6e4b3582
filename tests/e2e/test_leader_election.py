"""Two (then three) operator processes with ``--leader-elect`` against the real kube-apiserver,
with the chart's HA RBAC: one acts, the standby writes nothing and is Ready; after a SIGKILL of
the leader the standby takes the Lease and repairs a NetworkPolicy deleted at that moment; a
SIGTERM releases the Lease and the next standby takes over at once. The API server's audit log
shows no write of a replica outside its own tenure of the Lease (tests/one_writer.py).

No timing is asserted; the takeover times are printed (``-s``) and the bench measures them."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from e2e.harness import (
    RELEASE_NAMESPACE,
    LeaderReplicas,
    OperatorProcess,
    create,
    network_policies,
    resource,
    wait_for,
)
from one_writer import by_user, outside_their_lease, tenures_and_writes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPLICAS = ("a", "b", "c")


@pytest.fixture
def replicas(control_plane: Any, admin_api: Any, namespace: str) -> Iterator[LeaderReplicas]:
    group = LeaderReplicas(control_plane, admin_api, namespace, REPLICAS)
    try:
        yield group
    finally:
        group.stop_all()


def standby_of(process: OperatorProcess) -> str:
    """The replica a standby's /readyz names as the leader (ready: 200)."""
    code, text = process.http("/readyz")
    assert code == 200, text
    assert text.startswith("standby: the leader is "), text
    return text.removeprefix("standby: the leader is ").split("_")[0]


def policy_uid(api: Any, namespace: str, name: str) -> str | None:
    policy = network_policies(api, namespace).get(name)
    return None if policy is None else str(policy.metadata.uid)


def takeover(
    replicas: LeaderReplicas, stop: Any, policy: str, new_leader: str
) -> tuple[float, float]:
    """Stop the leader with ``stop()``, delete ``policy`` at that moment, and wait for
    ``new_leader`` to hold the Lease and for the policy to be back. Seconds from the stop to
    each."""
    api, namespace = replicas.api, replicas.namespace
    old_uid = policy_uid(api, namespace, policy)
    assert old_uid is not None
    started = time.monotonic()
    stop()
    client.NetworkingV1Api(api).delete_namespaced_network_policy(policy, namespace)
    wait_for(f"{new_leader} to hold the Lease", lambda: replicas.leader() == new_leader, 60)
    held = time.monotonic() - started
    wait_for(
        "the deleted policy to be repaired",
        lambda: policy_uid(api, namespace, policy) not in (None, old_uid),
        60,
    )
    return held, time.monotonic() - started


def test_one_replica_writes_and_a_standby_takes_over_a_crash_and_a_release(
    control_plane: Any, admin_api: Any, replicas: LeaderReplicas
) -> None:
    namespace = replicas.namespace
    create(admin_api, resource(namespace))  # first: a is ready once it has reconciled it
    a = replicas.start("a")
    assert replicas.leader() == "a"
    assert a.http("/readyz") == (200, "ok\n")
    b = replicas.start("b")
    assert standby_of(b) == "a"
    managed = wait_for(
        "the leader's NetworkPolicies",
        lambda: (
            sorted(n for n in network_policies(admin_api, namespace) if n.startswith("svh-"))
            or None
        ),
    )
    assert a.metric("server_hardening_leader") == 1
    assert b.metric("server_hardening_leader") == 0
    assert b.metric("server_hardening_reconciles_total") == 0  # a standby never reconciles
    policy = managed[0]

    # 1. A crash: SIGKILL, nothing released. b takes over once the lease expires for it.
    assert a.proc is not None
    crash = takeover(replicas, a.kill, policy, "b")
    c = replicas.start("c")
    assert standby_of(c) == "b"

    # 2. A graceful stop: SIGTERM, b stops writing at once, stops kopf and releases the Lease;
    # c takes it at its next try. The policy goes once b has exited.
    assert b.proc is not None
    proc_b = b.proc
    exits: list[int] = []

    def sigterm() -> None:
        proc_b.send_signal(signal.SIGTERM)
        exits.append(proc_b.wait(timeout=30))

    release = takeover(replicas, sigterm, policy, "c")
    assert exits == [0], b.log_tail()
    assert "leader election: released" in b.log_tail(200)
    print(
        f"\ntakeover after SIGKILL: lease {crash[0]:.1f}s, repaired {crash[1]:.1f}s; "
        f"after SIGTERM: lease {release[0]:.1f}s, repaired {release[1]:.1f}s"
    )
    c.stop()

    events = control_plane.audit_events()
    holders, writes = tenures_and_writes(
        events, (RELEASE_NAMESPACE, replicas.lease), by_user(replicas.users)
    )
    assert [replica for _, replica in holders] == ["a", "b", "c"]
    assert outside_their_lease(writes) == []
    # Each leader wrote (a created the policies, b and c each repaired the deleted one), so
    # the check above had writes of every replica to judge.
    repairs = [
        w.replica
        for w in writes
        if w.what.startswith(f"create networkpolicies {namespace}/{policy} ")
    ]
    assert repairs == ["a", "b", "c"]


def test_the_lease_client_reads_back_what_it_wrote_and_refuses_a_stale_write(
    control_plane: Any, namespace: str
) -> None:
    """The adapter against the real API server: a record round-trips unchanged (its MicroTimes
    as the API server stores them), a second create and an update from an old resourceVersion
    are conflicts (the optimistic concurrency the election relies on), a release reads back as
    no holder."""
    from server_hardening.election import LeaseRecord, Observed
    from server_hardening.elector import wall_now
    from server_hardening.targets.kubeapi import KubeApi
    from server_hardening.targets.kubeconfig import load_credentials
    from server_hardening.targets.lease import LeaseClient, LeaseConflict

    api = KubeApi(load_credentials(str(control_plane.admin_kubeconfig)), gated=False)
    lease = LeaseClient(api, namespace, "probe")
    assert lease.get(timeout=10) == Observed(None)
    now = wall_now()
    record = LeaseRecord("a_1", 15, now, now, 0)
    first = lease.create(record, timeout=10)
    with pytest.raises(LeaseConflict):
        lease.create(record, timeout=10)
    assert lease.get(timeout=10) == Observed(record, first)
    renewed = LeaseRecord("a_1", 15, now, wall_now(), 0)
    second = lease.update(renewed, first, timeout=10)
    with pytest.raises(LeaseConflict):
        lease.update(LeaseRecord("b_2", 15, now, now, 1), first, timeout=10)  # a stale read
    assert lease.get(timeout=10) == Observed(renewed, second)
    released = LeaseRecord("", 1, wall_now(), wall_now(), 0)
    third = lease.update(released, second, timeout=10)
    assert lease.get(timeout=10) == Observed(released, third)
