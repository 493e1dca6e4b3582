"""kopf wiring only: events in, reconcile, status/events/metrics out.

Triggers, all funnelled into one coalescing runner per resource (a burst of events costs at most
one running and one queued reconcile, and each run reads the resource fresh):

- create / update / resume of a ServerHardening;
- any NetworkPolicy event in a namespace that has a ServerHardening (managed ones edited or
  deleted, unmanaged ones added): drift is seen within seconds, not at the next timer;
- any Service event there (the components' selectors and target ports may have changed);
- a timer that re-observes every target each ``driftCheckInterval`` (the backstop, and the only
  way to see drift in the clouds, which have no watch).

Deletion runs behind a finalizer: ``deletionPolicy: Delete`` removes owned rules, ``Orphan``
drops the ownership marks. A target that stays unreachable does not hold the finalizer forever:
after ``--release-timeout`` seconds (default 300) the operator gives up on it with a Warning
event naming what it left behind.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from server_hardening import metrics
from server_hardening.compiler import compile_intent
from server_hardening.model import (
    GROUP,
    PLURAL,
    VERSION,
    DeletionPolicy,
    ResourceRef,
    SpecError,
    parse_spec,
)
from server_hardening.reconcile import Report, TargetFactory, invalid_report, reconcile
from server_hardening.targets.base import TargetError, TransientTargetError
from server_hardening.targets.kubernetes import ResourceClient

log = logging.getLogger("server_hardening")

RELEASE_TIMEOUT = 300.0
TIMER_TICK = 5.0
FINALIZER = "hardening.circleci.com/finalizer"


@dataclass
class Runtime:
    """What the handlers need, set once by the runner before kopf starts."""

    factory: TargetFactory
    resources: ResourceClient
    clock: Callable[[], float] = time.time
    locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    pending: set[tuple[str, str]] = field(default_factory=set)
    last_check: dict[tuple[str, str], float] = field(default_factory=dict)
    # Resources being deleted: a reconcile still in flight must not bring their series back.
    released: set[tuple[str, str]] = field(default_factory=set)
    heartbeat: float = field(default_factory=time.monotonic)
    ready: bool = False
    kubeconfig: str | None = None
    clusterwide: bool = False
    release_timeout: float = RELEASE_TIMEOUT


RUNTIME: Runtime | None = None


def runtime() -> Runtime:
    if RUNTIME is None:
        raise RuntimeError("server_hardening.handlers.RUNTIME is not configured")
    return RUNTIME


# -- the coalescing runner ------------------------------------------------------------------


def _reconcile_now(rt: Runtime, namespace: str, name: str) -> Report | None:
    """Read the resource fresh, run the pipeline, write status, events and metrics."""
    body = rt.resources.get(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    meta = body["metadata"]
    ref = ResourceRef(namespace=namespace, name=name, uid=str(meta.get("uid", "")))
    generation = int(meta.get("generation") or 0)
    previous = body.get("status") or {}
    now = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    try:
        spec = parse_spec(body.get("spec"))
    except SpecError as exc:
        report = invalid_report(ref, generation, exc.errors, now)
    else:
        report = reconcile(ref, spec, rt.factory, generation=generation, previous_status=previous)
    metrics.RECONCILE_DURATION.observe(time.monotonic() - started)
    metrics.RECONCILES.labels(result=_result(report)).inc()
    _count(report)
    rt.resources.patch_status(namespace, name, report.status(previous))
    for event in report.events:
        try:
            rt.resources.post_event(body, event.type, event.reason, event.message)
        except TargetError as exc:
            log.warning("could not post event %s on %s/%s: %s", event.reason, namespace, name, exc)
    if (namespace, name) not in rt.released:
        metrics.SNAPSHOTS.update(report.snapshot())
    rt.last_check[(namespace, name)] = rt.clock()
    log.info(
        "reconciled %s/%s: phase=%s drift=%d %s",
        namespace,
        name,
        report.phase,
        report.drift_total,
        report.message,
    )
    return report


def _result(report: Report) -> str:
    if report.phase == "Invalid":
        return "invalid"
    if report.phase == "Conflict":
        return "conflict"
    if report.phase == "Error":
        return "error"
    if any(t.repaired for t in report.targets):
        return "repaired"
    if report.drift_total:
        return "drift_reported"
    return "in_sync"


def _count(report: Report) -> None:
    for target in report.targets:
        for kind, value in (
            ("missing", target.drift.missing),
            ("modified", target.drift.modified),
            ("unexpected", target.drift.unexpected),
            ("unmanaged_widening", target.drift.unmanaged_widening),
        ):
            if value:
                metrics.DRIFT_DETECTED.labels(target=target.name, kind=kind).inc(value)
        applied = target.applied
        if applied is None:
            continue
        for action, value in (
            ("create", applied.created),
            ("update", applied.updated),
            ("delete", applied.deleted),
            ("remove_unmanaged", applied.removed_unmanaged),
        ):
            if value:
                metrics.WRITES.labels(target=target.name, action=action).inc(value)


async def request_reconcile(namespace: str, name: str) -> None:
    """Run a reconcile of one resource; while one runs, queue at most one more."""
    rt = runtime()
    key = (namespace, name)
    lock = rt.locks.setdefault(key, asyncio.Lock())
    if lock.locked():
        rt.pending.add(key)
        return
    async with lock:
        while True:
            rt.pending.discard(key)
            try:
                await asyncio.to_thread(_reconcile_now, rt, namespace, name)
            except TargetError as exc:
                # Status could not be read or written: kopf retries the handler that asked.
                raise kopf.TemporaryError(str(exc), delay=10) from exc
            if key not in rt.pending:
                return


# -- handlers -------------------------------------------------------------------------------


@kopf.on.startup(id="configure")
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    # Watching named namespaces needs no namespace listing; without this kopf tries to list
    # namespaces cluster-wide, which namespaced RBAC rightly refuses, and retries noisily.
    settings.scanning.disabled = not runtime().clusterwide
    _HEARTBEAT.append(asyncio.get_running_loop().create_task(_heartbeat()))


# The heartbeat is not a kopf task: kopf gives such tasks 5 s at every stop before cancelling
# them, so it is ended at cleanup (which kopf runs as soon as its own tasks are done).
_HEARTBEAT: list[asyncio.Task[None]] = []


@kopf.on.cleanup(id="stop-heartbeat")
async def stop_heartbeat(**_: Any) -> None:
    while _HEARTBEAT:
        _HEARTBEAT.pop().cancel()


async def _heartbeat() -> None:
    """Proves the event loop runs; /healthz reads it."""
    rt = runtime()
    while True:
        rt.heartbeat = time.monotonic()
        rt.ready = True
        metrics.WATCH_ALIVE.set(1)
        await asyncio.sleep(2)


@kopf.on.login(id="login")
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """``--kubeconfig`` when given; else kopf's own (in-cluster, then the default kubeconfig)."""
    path = runtime().kubeconfig
    if not path:
        return kopf.login_via_client(**kwargs)
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=path, client_configuration=cfg)
    token = str((cfg.api_key or {}).get("authorization", "")).removeprefix("Bearer ").strip()
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        scheme="Bearer" if token else None,
        token=token or None,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
    )


# kopf passes an index to handlers as a keyword argument named by its id.
@kopf.index(GROUP, VERSION, PLURAL, id="by_namespace")
def by_namespace(namespace: str | None, name: str, **_: Any) -> dict[str | None, str]:
    return {namespace: name}


@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile", field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
async def on_change(namespace: str | None, name: str, **_: Any) -> None:
    if namespace is not None:
        runtime().released.discard((namespace, name))  # re-created under the same name
        await request_reconcile(namespace, name)


@kopf.timer(GROUP, VERSION, PLURAL, id="drift-check", interval=TIMER_TICK, initial_delay=TIMER_TICK)
async def drift_check(namespace: str | None, name: str, spec: Mapping[str, Any], **_: Any) -> None:
    rt = runtime()
    if namespace is None:
        return
    try:
        interval = parse_spec(spec).drift_check_seconds
    except SpecError:
        return  # an invalid resource has nothing to check; its status says why
    if rt.clock() - rt.last_check.get((namespace, name), 0.0) >= interval:
        await request_reconcile(namespace, name)


async def _owners_in(namespace: str | None, index: kopf.Index[str | None, str]) -> None:
    """Reconcile every ServerHardening of the namespace the event happened in."""
    if namespace is None:
        return
    for name in set(index.get(namespace, [])):
        await request_reconcile(namespace, name)


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", id="watch-networkpolicies")
async def networkpolicy_changed(namespace: str | None, **kwargs: Any) -> None:
    await _owners_in(namespace, kwargs["by_namespace"])


@kopf.on.event("", "v1", "services", id="watch-services")
async def service_changed(namespace: str | None, **kwargs: Any) -> None:
    await _owners_in(namespace, kwargs["by_namespace"])


@kopf.on.delete(GROUP, VERSION, PLURAL, id="release", backoff=5)
async def release(
    namespace: str | None, name: str, meta: Mapping[str, Any], spec: Mapping[str, Any], **_: Any
) -> None:
    rt = runtime()
    if namespace is None:
        return
    rt.released.add((namespace, name))
    metrics.SNAPSHOTS.forget(namespace, name)
    rt.last_check.pop((namespace, name), None)
    ref = ResourceRef(namespace=namespace, name=name, uid=str(meta.get("uid", "")))
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServerHardening", "metadata": dict(meta)}
    try:
        parsed = parse_spec(spec)
    except SpecError:
        return  # never applied anything, so nothing to release
    delete = parsed.deletion_policy is DeletionPolicy.DELETE
    deleting_since = _parse_time(meta.get("deletionTimestamp"))
    waited = (dt.datetime.now(dt.UTC) - deleting_since).total_seconds() if deleting_since else 0.0
    failures = await asyncio.to_thread(_release_all, rt, ref, parsed, delete, body)
    if not failures:
        return
    if waited < rt.release_timeout and any(isinstance(f, TransientTargetError) for f in failures):
        raise kopf.TemporaryError("; ".join(str(f) for f in failures), delay=10)
    message = (
        "gave up releasing after "
        f"{int(waited)}s: " + "; ".join(str(f) for f in failures)
        + " - rules there are left in place; remove them by hand if needed"
    )  # fmt: skip
    await asyncio.to_thread(rt.resources.post_event, body, "Warning", "ReleaseAbandoned", message)


def _release_all(
    rt: Runtime, ref: ResourceRef, spec: Any, delete: bool, body: Mapping[str, Any]
) -> list[TargetError]:
    failures: list[TargetError] = []
    intent = compile_intent(spec)
    for target_name, build in rt.factory.build(intent, ref):
        try:
            target = build()
            result = target.release(target.observe(), delete=delete)
        except TransientTargetError as exc:
            failures.append(TransientTargetError(f"{target_name}: {exc}"))
            continue
        except TargetError as exc:
            failures.append(TargetError(f"{target_name}: {exc}"))
            continue
        if result.errors:
            failures.append(TransientTargetError(f"{target_name}: " + "; ".join(result.errors)))
            continue
        verb = "deleted" if delete else "orphaned"
        count = result.deleted if delete else result.updated
        rt.resources.post_event(body, "Normal", "Released", f"{target_name}: {verb} {count} rules")
    return failures


def _parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
