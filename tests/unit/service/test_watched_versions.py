"""What the operator does with what its NetworkPolicy and Service watches deliver: it keeps only
the versions of objects in namespaces that have a ServerHardening, reconciles a namespace's
resources on each of its events, starts nothing on a watch's first listing (the reconciles at
start cover it), and on a later listing reconciles exactly the namespaces where it differs
from what the events had said."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from builders import make_spec
from server_hardening import service, watching
from server_hardening.service import OperatorState

WITH, WITHOUT, LATER = "circleci-server", "team-a", "team-b"


def _state(owners: dict[str, set[str]]) -> OperatorState:
    state = OperatorState(factory=None, resources=None)  # type: ignore[arg-type]
    state.owners = lambda namespace: set(owners.get(namespace, ()))
    state.owned_namespaces = lambda: {ns for ns, names in owners.items() if names}
    state.unlisted = {("networkpolicy", None), ("service", None)}
    return state


@pytest.fixture
def reconciled(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []

    async def request_reconcile(state: Any, namespace: str, name: str, **_: Any) -> None:
        calls.append((namespace, name))

    monkeypatch.setattr(watching, "request_reconcile", request_reconcile)
    return calls


def _in_loop(state: OperatorState, *steps: Callable[[], None]) -> None:
    async def run() -> None:
        for step in steps:
            step()
        await asyncio.sleep(0)
        await asyncio.gather(*state.watch_tasks)

    asyncio.run(run())


def test_the_first_listings_start_nothing_and_then_count_as_listed(
    reconciled: list[tuple[str, str]],
) -> None:
    state = _state({WITH: {"circleci"}})
    state.awaiting = set()  # kopf's index is complete
    _in_loop(
        state,
        lambda: watching.watch_listed(state, "networkpolicy", None, {WITH: {"p": "1"}}),
        lambda: watching.watch_listed(state, "service", None, {WITH: {"circleci-proxy": "2"}}),
    )
    assert reconciled == []
    assert state.unlisted == set()


def test_objects_of_namespaces_without_a_resource_are_not_kept(
    reconciled: list[tuple[str, str]],
) -> None:
    state = _state({WITH: {"circleci"}})
    listing = {ns: {"circleci-proxy": "1", "web": "1"} for ns in (WITH, WITHOUT)}
    # The listing may come before kopf's index of the resources is complete: all is kept...
    _in_loop(state, lambda: watching.watch_listed(state, "service", None, listing))
    assert state.versions.namespaces() == {WITH, WITHOUT}
    state.awaiting = set()
    watching.index_complete(state)  # ...until it is
    assert state.versions.namespaces() == {WITH}
    _in_loop(state, lambda: watching.watch_changed(state, "service", WITHOUT, "web", "2"))
    assert state.versions.namespaces() == {WITH}
    assert reconciled == []  # no resource there: nothing to reconcile


def test_an_event_reconciles_the_namespaces_resources(reconciled: list[tuple[str, str]]) -> None:
    state = _state({WITH: {"a", "b"}})
    state.awaiting = set()
    before = state.versions.changes(WITH)
    _in_loop(state, lambda: watching.watch_changed(state, "networkpolicy", WITH, "p", "7"))
    assert sorted(reconciled) == [(WITH, "a"), (WITH, "b")]
    assert state.versions.changes(WITH) == before + 1
    # A deletion of an object never delivered (in the namespace before its first resource
    # came) changes no version, and is still drift to look at.
    _in_loop(state, lambda: watching.watch_changed(state, "networkpolicy", WITH, "old", ""))
    assert len(reconciled) == 4


def test_a_later_listing_reconciles_where_it_differs(reconciled: list[tuple[str, str]]) -> None:
    owners = {WITH: {"circleci"}, WITHOUT: {"other"}}
    state = _state(owners)
    state.awaiting = set()
    first = {WITH: {"p1": "1", "p2": "2"}, WITHOUT: {"q": "3"}}
    _in_loop(state, lambda: watching.watch_listed(state, "networkpolicy", None, first))
    state.unlisted.clear()
    # p1 was deleted while the watch was down; team-a is as it was.
    again = {WITH: {"p2": "2"}, WITHOUT: {"q": "3"}}
    _in_loop(state, lambda: watching.watch_listed(state, "networkpolicy", None, again))
    assert reconciled == [(WITH, "circleci")]


def test_a_namespace_kept_only_since_the_last_listing_changes_at_the_next(
    reconciled: list[tuple[str, str]],
) -> None:
    """Its objects from before its first resource were never delivered to the operator: one
    deleted while the watch was down would be absent from both what was known and the
    listing. So the next listing counts as a change there, once."""
    owners: dict[str, set[str]] = {WITH: {"circleci"}}
    state = _state(owners)
    state.awaiting = set()
    _in_loop(state, lambda: watching.watch_listed(state, "networkpolicy", None, {LATER: {}}))
    state.unlisted.clear()
    owners[LATER] = {"new"}  # a resource created there since
    _in_loop(state, lambda: watching.watch_listed(state, "networkpolicy", None, {}))
    assert reconciled == [(LATER, "new")]
    _in_loop(state, lambda: watching.watch_listed(state, "networkpolicy", None, {}))
    assert reconciled == [(LATER, "new")]


def test_a_namespaces_objects_are_forgotten_with_its_last_resource() -> None:
    state = _state({WITH: {"a", "b"}})
    spec = make_spec().model_dump(by_alias=True, mode="json")
    service.register(state, WITH, "a", "uid-a", spec, 1)
    service.register(state, WITH, "b", "uid-b", spec, 1)
    state.versions.seen(WITH, "service", "circleci-proxy", "1")
    service.unregister(state, WITH, "a")
    assert state.versions.namespaces() == {WITH}  # "b" still needs them
    service.unregister(state, WITH, "b")
    assert state.versions.namespaces() == set()
