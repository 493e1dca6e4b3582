"""The operator's NetworkPolicy and Service watches, wired to the reconciles: started at
startup (one per kind, and per namespace unless cluster-wide), each delivering from its thread
into the event loop, where the versions are kept
(:class:`~server_hardening.targets.watches.NamespaceVersions`) and the affected resources
reconciled (:func:`~server_hardening.service.request_reconcile`).

- A watch event in a namespace with a resource reconciles that namespace's resources.
- A watch's first listing starts nothing: the reconciles at start cover what it holds, and they
  wait for it (:func:`watches_listed`), so their checks have counted it and the next check of
  an unchanged namespace is skipped (the minute after a restart used to check every resource
  in full twice).
- A later listing (the watch lost its place: an API-server restart, a "410 Gone") reconciles
  exactly the namespaces where it differs from what the events had said, deletions included.
- Only namespaces that have a resource are kept, once kopf's index of the resources is
  complete (:func:`index_complete`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from server_hardening import metrics
from server_hardening.model import GROUP, PLURAL, VERSION
from server_hardening.service import (
    READY_GRACE,
    OperatorState,
    request_reconcile,
    schedule_next,
)
from server_hardening.targets.base import TargetError
from server_hardening.targets.kubeapi import namespaced
from server_hardening.targets.watches import NETWORKPOLICIES, SERVICES, Versions, Watch

log = logging.getLogger("server_hardening")

WATCH_LISTING_WAIT = 60.0  # seconds a reconcile at start waits for the watches' first listings
FIRST_LISTING_RETRY = 2.0  # seconds between tries of the listing at start, when it fails


def start_watches(state: OperatorState) -> None:
    """Start a watch per kind (and per namespace unless cluster-wide), each in its own thread
    on its own connection; they deliver into the running event loop."""
    if state.watch_api is None:
        return
    loop = asyncio.get_running_loop()
    state.listed = asyncio.Event()
    delivery = _WatchDelivery(state, loop)
    scopes: list[str | None] = [None] if state.clusterwide else list(state.namespaces)
    record = metrics.recorder_for("kubernetes")
    for kind in (NETWORKPOLICIES, SERVICES):
        for scope in scopes:
            state.unlisted.add((kind.kind, scope))
            watch = Watch(state.watch_api.fork(), kind, scope, delivery, record=record)
            state.watches.append(watch.start())
    if not state.unlisted:
        state.listed.set()


def stop_watches(state: OperatorState) -> None:
    for watch in state.watches:
        watch.stop(timeout=1.0)
    state.watches.clear()


async def watches_listed(state: OperatorState, timeout: float = WATCH_LISTING_WAIT) -> None:
    """Wait (at most ``timeout``) for every watch's first listing: a reconcile at start that
    runs after it has counted what the listings hold, and the next check of an unchanged
    namespace is skipped. One that runs before it (a watch that cannot list) just leaves its
    next check to run in full."""
    if state.listed is not None and not state.listed.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.listed.wait(), timeout)


class _WatchDelivery:
    """The watches' sink: from their threads into the event loop, which keeps the versions."""

    def __init__(self, state: OperatorState, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop

    def listed(self, kind: str, namespace: str | None, versions: Versions) -> None:
        self._hop(watch_listed, self.state, kind, namespace, versions)

    def changed(self, kind: str, namespace: str, name: str, version: str) -> None:
        self._hop(watch_changed, self.state, kind, namespace, name, version)

    def _hop(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: the operator is stopping
            self.loop.call_soon_threadsafe(fn, *args)


def _kept(state: OperatorState) -> set[str] | None:
    """The namespaces whose objects are kept: those with a resource, once kopf's index of them
    is complete (the first handler call); everything until then."""
    return None if state.awaiting is None else state.owned_namespaces()


def watch_changed(state: OperatorState, kind: str, namespace: str, name: str, version: str) -> None:
    """A watch event: note the version, and reconcile the namespace's resources (every event
    does: a change is drift, or an edit the resources' policies must follow)."""
    owners = state.owners(namespace)
    if state.awaiting is not None and not owners:
        return  # kopf's index is complete and has no resource there: not kept
    state.versions.seen(namespace, kind, name, version)
    reconcile_soon(state, namespace, owners)


def watch_listed(state: OperatorState, kind: str, scope: str | None, versions: Versions) -> None:
    """A complete listing: it replaces what was known. The first one of each watch starts
    nothing (the reconciles at start cover what it holds); a later one (the watch lost its
    place) reconciles the namespaces where it differs from what the events had said."""
    changed = state.versions.replace(kind, scope, versions, _kept(state))
    if (kind, scope) in state.unlisted:
        state.unlisted.discard((kind, scope))
        if not state.unlisted and state.listed is not None:
            state.listed.set()
        return
    for namespace in changed:
        reconcile_soon(state, namespace, state.owners(namespace))


def index_complete(state: OperatorState) -> None:
    """kopf's index of the resources is complete: drop what the watches delivered for
    namespaces without one."""
    state.versions.retain(state.owned_namespaces())


def note_empty_index(state: OperatorState) -> None:
    """No resource in kopf's index :data:`READY_GRACE` seconds after start: there is none, and
    no handler call will say the index is complete. (The heartbeat calls this: the fallback
    when the listing at start, :func:`list_resources_at_start`, could not be made.)"""
    waited = time.monotonic() - state.started > READY_GRACE
    if state.awaiting is None and waited and state.resources_indexed() == 0:
        state.awaiting = set()
        index_complete(state)


def resources_in_scope(state: OperatorState) -> bool | None:
    """Whether the watched scope holds any ServerHardening now: one listing per namespace (or
    one cluster-wide) of at most one item, with the operator's own client; None when a listing
    failed or there is no client."""
    if state.watch_api is None:
        return None
    api_path = f"/apis/{GROUP}/{VERSION}"
    paths = (
        [f"{api_path}/{PLURAL}"]
        if state.clusterwide
        else [namespaced(api_path, ns, PLURAL) for ns in state.namespaces]
    )
    api = state.watch_api.fork()
    try:
        for path in paths:
            page = api.get(path + "?limit=1")
            if page.get("items") or (page.get("metadata") or {}).get("continue"):
                return True
    except Exception as exc:  # an API or connection error: the caller tries again
        log.info("listing the ServerHardenings at start failed (%s); trying again", exc)
        return None
    finally:
        api.close()
    return False


def note_first_listing(state: OperatorState, any_resource: bool | None) -> bool:
    """The first listing of the ServerHardenings at start: when it shows none, there is nothing
    to catch up with, so the operator is ready now (no handler call will come to say kopf's
    index is complete, and :data:`READY_GRACE` need not be waited out). When it shows some,
    readiness waits, as before, for each of them to be reconciled once. True once settled."""
    if any_resource is None:
        return False
    if not any_resource and state.awaiting is None and state.resources_indexed() == 0:
        state.awaiting = set()
        index_complete(state)
    return True


async def list_resources_at_start(state: OperatorState) -> None:
    """List the ServerHardenings once (again every :data:`FIRST_LISTING_RETRY` seconds while
    the listing fails, until kopf's first handler call has settled it): a fresh install with
    none is ready within seconds instead of after :data:`READY_GRACE`."""
    while state.awaiting is None:
        if note_first_listing(state, await asyncio.to_thread(resources_in_scope, state)):
            return
        await asyncio.sleep(FIRST_LISTING_RETRY)


def reconcile_soon(state: OperatorState, namespace: str, names: Collection[str]) -> None:
    for name in names:
        task = asyncio.get_running_loop().create_task(_watched_reconcile(state, namespace, name))
        state.watch_tasks.add(task)
        task.add_done_callback(state.watch_tasks.discard)


async def _watched_reconcile(state: OperatorState, namespace: str, name: str) -> None:
    try:
        await request_reconcile(state, namespace, name)
    except TargetError as exc:
        log.warning("reconcile of %s/%s after a watch event failed: %s", namespace, name, exc)
        schedule_next(state, (namespace, name), soon=True)
