"""Ready when there is nothing to catch up with: a fresh install (no ServerHardening in the
watched scope) is ready as soon as one listing says so, not after the grace period; with
resources at start, ready only once each was reconciled. No kopf, no API server: the listing
is answered by a fake of the operator's client, and the clock never passes the grace."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest

from server_hardening import watching
from server_hardening.service import READY_GRACE, OperatorState
from server_hardening.targets.kubeapi import ApiError, KubeApi

PATH = "/apis/hardening.circleci.com/v1alpha1"


class Listings:
    """The operator's client as far as the listing at start uses it: path -> answer (a page,
    or an exception to raise); what was asked is kept."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def fork(self) -> Listings:
        return self

    def close(self) -> None:
        pass

    def get(self, path: str) -> Any:
        self.asked.append(path)
        answer = self.answers[path.split("?", maxsplit=1)[0]]
        if isinstance(answer, list):  # answers in turn
            answer = answer.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def make_state(
    answers: dict[str, Any],
    *,
    namespaces: tuple[str, ...] = ("circleci-server",),
    clusterwide: bool = False,
    indexed: int = 0,
) -> tuple[OperatorState, Listings]:
    listings = Listings(answers)
    state = OperatorState(factory=cast(Any, None), resources=cast(Any, None))
    state.watch_api = cast(KubeApi, listings)
    state.namespaces = namespaces
    state.clusterwide = clusterwide
    state.resources_indexed = lambda: indexed
    state.started = time.monotonic()  # the grace is far from over in every test
    return state, listings


def _within_grace(state: OperatorState) -> None:
    assert time.monotonic() - state.started < READY_GRACE


def test_an_empty_listing_makes_a_fresh_install_ready_without_the_grace() -> None:
    state, listings = make_state({f"{PATH}/namespaces/circleci-server/serverhardenings": {}})
    assert not state.reconciling
    asyncio.run(watching.list_resources_at_start(state))
    _within_grace(state)
    assert state.reconciling
    assert state.awaiting == set()
    assert listings.asked == [f"{PATH}/namespaces/circleci-server/serverhardenings?limit=1"]


def test_every_watched_namespace_is_listed_and_cluster_wide_lists_once() -> None:
    empty = {"items": [], "metadata": {"resourceVersion": "7"}}
    state, listings = make_state(
        {f"{PATH}/namespaces/{ns}/serverhardenings": empty for ns in ("a", "b")},
        namespaces=("a", "b"),
    )
    asyncio.run(watching.list_resources_at_start(state))
    assert state.reconciling
    assert len(listings.asked) == 2

    state, listings = make_state({f"{PATH}/serverhardenings": empty}, clusterwide=True)
    asyncio.run(watching.list_resources_at_start(state))
    assert state.reconciling
    assert listings.asked == [f"{PATH}/serverhardenings?limit=1"]


def test_a_resource_at_start_keeps_readiness_waiting_for_its_reconcile() -> None:
    """The listing settles nothing when it finds one: kopf's first handler call names the
    resources to wait for (the guarantee for resources that exist at start)."""
    one = {"items": [{"metadata": {"namespace": "b", "name": "circleci"}}]}
    state, _ = make_state(
        {
            f"{PATH}/namespaces/a/serverhardenings": {"items": []},
            f"{PATH}/namespaces/b/serverhardenings": one,
        },
        namespaces=("a", "b"),
    )
    asyncio.run(watching.list_resources_at_start(state))
    assert state.awaiting is None
    assert not state.reconciling
    state.awaiting = {("b", "circleci")}  # what kopf's first handler call records
    assert not state.reconciling


def test_a_failed_listing_settles_nothing_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watching, "FIRST_LISTING_RETRY", 0.0)
    path = f"{PATH}/namespaces/circleci-server/serverhardenings"
    state, listings = make_state({path: [ApiError(503, "Unavailable"), {"items": []}]})
    assert watching.resources_in_scope(state) is None
    assert not state.reconciling
    listings.answers[path] = [ApiError(503, "Unavailable"), {"items": []}]
    asyncio.run(watching.list_resources_at_start(state))
    assert len(listings.asked) == 3  # the failure above, then a failure and a success
    assert state.reconciling


def test_a_resource_kopf_already_indexed_is_not_overlooked() -> None:
    """Created between the listing and its answer: kopf's index has it, so still waiting."""
    state, _ = make_state(
        {f"{PATH}/namespaces/circleci-server/serverhardenings": {"items": []}}, indexed=1
    )
    asyncio.run(watching.list_resources_at_start(state))
    assert state.awaiting is None
    assert not state.reconciling
