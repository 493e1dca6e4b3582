"""What every target's judgement offers the pipeline. Pure: no I/O here.

A target's policy is built once per pass from the resource's spec (and the cluster facts the
factory read, such as NodePorts) and holds everything that is a decision: which items are
desired, how an item this resource does not own is judged, how another controller's item is
judged, which unmarked items may be claimed, and whether what widens is removed. The adapter
beside it only observes, applies and releases; ``reconcile.plan_target`` hands the policy and the
observation to ``drift.compute_plan``. So ``unmanagedRules`` reaches the decision by one road,
and a policy is tested without any SDK.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from server_hardening.drift import Claimer, DesiredItem, ObservedItem, UnmanagedJudge

PayloadT = TypeVar("PayloadT")


class TargetPolicy(Protocol[PayloadT]):
    """One target's judgement (``policy.aws.AwsPolicy``, ``policy.gcp.GcpPolicy``,
    ``policy.networkpolicy.KubernetesPolicy``)."""

    @property
    def remove_unmanaged(self) -> bool:
        """``unmanagedRules: Remove``: what widens is removed, not only reported."""
        ...

    def desired(self) -> Sequence[DesiredItem[PayloadT]]:
        """The items the compiled intent requires (pure rendering)."""
        ...

    def judge_unmanaged(
        self, observed: Sequence[ObservedItem[PayloadT]]
    ) -> UnmanagedJudge[PayloadT]:
        """How to judge an item this resource does not own, given everything observed beside it
        (AWS judges "the whole internet" on the union of a group's unmanaged rules)."""
        ...

    def judge_foreign(self) -> UnmanagedJudge[PayloadT]:
        """How to judge an item another controller owns: for exposure only, never removed."""
        ...

    def claimer(self) -> Claimer[PayloadT]:
        """Which unmarked items holding a desired key this resource may adopt or take back."""
        ...
