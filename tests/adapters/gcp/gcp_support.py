"""Builders for the GCP adapter tests: a spec pointing at the fake, a target, one reconcile."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials

from builders import OWNER, make_spec
from fakes.gcp_compute import FakeCompute
from server_hardening.compiler import compile_intent
from server_hardening.drift import Plan
from server_hardening.model import GcpSpec, ResourceRef, ServerHardeningSpec, UnmanagedRules
from server_hardening.policy.gcp import GcpPolicy
from server_hardening.reconcile import plan_target, run_target
from server_hardening.targets.base import ApplyResult, Observation
from server_hardening.targets.gcp import GcpClients, GcpTarget, RetryPolicy, make_clients

PROJECT = "circleci-test-1"
TAGS = {"kubernetesNodes": "k8s-node", "nomadClients": "nomad-client", "externalVMs": "circleci-vm"}
NETWORK = "circleci"


def make_fake(**options: Any) -> FakeCompute:
    """The fake as the adapter tests meet it: the project's network exists; operations need a
    poll, and throttling and busy-network refusals come unasked (the fake's defaults)."""
    return FakeCompute(networks=((PROJECT, NETWORK),), **options)


@dataclass
class Recorder:
    calls: list[tuple[str, str]] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)

    def __call__(self, operation: str, outcome: str) -> None:
        self.calls.append((operation, outcome))

    def count(self, operation: str, outcome: str) -> int:
        return self.calls.count((operation, outcome))


def gcp_spec(fake: FakeCompute, network: str = "circleci", **changes: Any) -> ServerHardeningSpec:
    gcp: dict[str, Any] = {
        "project": PROJECT,
        "network": network,
        "targetTags": dict(TAGS),
        "endpoint": fake.url,
    }
    return make_spec(gcp=gcp, **changes)


def anonymous(gcp: GcpSpec) -> GcpClients:
    return make_clients(gcp, AnonymousCredentials())  # type: ignore[no-untyped-call]


def make_target(
    spec: ServerHardeningSpec,
    recorder: Recorder,
    *,
    owner: ResourceRef = OWNER,
    unmanaged: UnmanagedRules = UnmanagedRules.REPORT,
    attempts: int = 5,
    **options: Any,
) -> GcpTarget:
    """A target on the fake; calls are not spaced (the fake has no rate quota) unless
    ``options`` say otherwise."""
    assert spec.gcp is not None
    return GcpTarget.from_rules(
        compile_intent(spec).cloud_rules("gcp"),
        spec.gcp,
        owner,
        unmanaged_rules=unmanaged,
        client_factory=anonymous,
        record_call=recorder,
        retry=RetryPolicy(max_attempts=attempts),
        sleep=recorder.sleeps.append,
        **{"requests_per_minute": 600_000.0, **options},
    )


def with_policy(target: GcpTarget, *, remove: bool) -> None:
    """As the factory does for each pass: the policy is built from the pass's spec."""
    target.policy = GcpPolicy(
        target.rendered, name_prefix=target.policy.name_prefix, remove_unmanaged=remove
    )


def plan_for(target: GcpTarget, *, remove: bool = False) -> tuple[Observation[Any], Plan[Any]]:
    observed = target.observe()
    with_policy(target, remove=remove)
    return observed, plan_target(target, observed)


def reconcile(target: GcpTarget, *, remove: bool = False) -> tuple[Plan[Any], ApplyResult]:
    """One Enforce pass of the production per-target pipeline (``reconcile.run_target``)."""
    spec = make_spec().model_copy(
        update={"unmanaged_rules": UnmanagedRules.REMOVE if remove else UnmanagedRules.REPORT}
    )
    with_policy(target, remove=remove)
    report = run_target("gcp", lambda: target, spec, 0, [])
    if report.error is not None:
        raise report.error
    assert report.plan is not None, f"no plan: {report.conflict_with or report.last_error}"
    return report.plan, report.applied or ApplyResult()


@pytest.fixture
def fake() -> Iterator[FakeCompute]:
    with make_fake() as server:
        yield server


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
