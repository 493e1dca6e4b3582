"""kopf wiring only: kopf's events in, :mod:`server_hardening.service` out.

Triggers, all funnelled into one coalescing runner per resource
(:func:`.service.request_reconcile`):

- create / update / resume of a ServerHardening;
- any NetworkPolicy or Service event in a namespace that has a ServerHardening (managed
  policies edited or deleted, unmanaged ones added, the components' Services changed): drift is
  seen within seconds, not at the next check. These watches are the operator's own
  (:mod:`server_hardening.targets.watches`, started here at startup), not kopf's: a listing
  reaches the operator whole, so what was deleted while a watch was down is seen, and a
  reconcile at start waits for the first listings (:func:`.watching.watches_listed`);
- the cloud event sources (:mod:`.eventsources`): an SQS queue fed with CloudTrail's
  security-group calls, a Pub/Sub subscription fed with firewall audit logs; a reader per
  source, started when a spec names it (``service.register``), requests a check of the resources
  each event concerns;
- the annotation ``hardening.circleci.com/recheck`` set to a new value (``hardening recheck``):
  every target checked in full at once, and an Event saying so (:func:`.service.recheck`);
- the drift-check scheduler (:func:`.service.run_drift_checks`), one task started at startup,
  that re-observes every resource's targets each ``driftCheckInterval`` at the resource's own
  phase (the backstop, and the only way to see drift in the clouds, which have no watch). It
  replaces a kopf timer per resource: those woke every few seconds each, logged
  "Timer ... succeeded." at INFO every time, and lined up into bursts.

The versions the watches delivered are kept per namespace
(:class:`~server_hardening.targets.watches.NamespaceVersions`): a timed check of a Kubernetes-only
resource whose namespace saw no change since its last check is skipped (every change already
triggers a reconcile). kopf's per-object INFO lines ("Handler ... succeeded.") are lowered to
WARNING unless ``--verbose``: the service logs what each reconcile did when it did something.

Deletion runs behind a finalizer (:func:`.service.release_resource`). The per-operator state is
an :class:`~server_hardening.service.OperatorState` in kopf's ``memo`` (``memo.state``), set by
the runner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf

from server_hardening import metrics, service, watching
from server_hardening.model import GROUP, PLURAL, VERSION
from server_hardening.service import OperatorState
from server_hardening.targets.base import TargetError

FINALIZER = "hardening.circleci.com/finalizer"
RECHECK_ANNOTATION = service.RECHECK_ANNOTATION
RETRY_DELAY = 10.0


def state_of(memo: Any) -> OperatorState:
    state = getattr(memo, "state", None)
    if not isinstance(state, OperatorState):
        raise RuntimeError("kopf's memo holds no OperatorState: start through `hardening run`")
    return state


async def _reconcile(memo: Any, namespace: str, name: str) -> None:
    try:
        await service.request_reconcile(state_of(memo), namespace, name)
    except TargetError as exc:
        # Status could not be read or written: kopf retries the handler that asked.
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc


class _ProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's progress records, under the resource's API group as before; kopf takes every
    annotation under that prefix for one of its own and leaves it out of what it compares, which
    would hide the recheck annotation (a user's request, not progress) from its handler."""

    def clear(self, *, essence: Any) -> Any:
        requested = ((essence or {}).get("metadata") or {}).get("annotations") or {}
        value = requested.get(RECHECK_ANNOTATION)
        cleared = super().clear(essence=essence)
        if value is not None:
            metadata = cleared.setdefault("metadata", {})
            metadata.setdefault("annotations", {})[RECHECK_ANNOTATION] = value
        return cleared


@kopf.on.startup(id="configure")
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = _ProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    # Watching named namespaces needs no namespace listing; without this kopf tries to list
    # namespaces cluster-wide, which namespaced RBAC rightly refuses, and retries noisily.
    settings.scanning.disabled = not state_of(memo).clusterwide
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    state = state_of(memo)
    # kopf hands startup handlers its (still empty, then filling) indexes.
    resources = kwargs["by_namespace"]
    state.resources_indexed = lambda: len(resources)
    state.owners = lambda namespace: set(resources.get(namespace, ()))
    state.owned_namespaces = lambda: {ns for ns in resources if ns is not None}
    watching.start_watches(state)
    loop = asyncio.get_running_loop()
    state.background = [
        loop.create_task(_heartbeat(state)),
        loop.create_task(service.run_drift_checks(state)),
        loop.create_task(watching.list_resources_at_start(state)),
    ]


# The background tasks are not kopf's: kopf gives such tasks 5 s at every stop before cancelling
# them, so they are ended at cleanup (which kopf runs as soon as its own tasks are done).
@kopf.on.cleanup(id="stop-background")
async def stop_background(memo: kopf.Memo, **_: Any) -> None:
    state = state_of(memo)
    for task in state.background:
        task.cancel()
    watching.stop_watches(state)
    if state.event_sources is not None:
        state.event_sources.stop()


async def _heartbeat(state: OperatorState) -> None:
    """Proves the event loop runs; /healthz reads it."""
    while True:
        state.heartbeat = time.monotonic()
        state.ready = True
        watching.note_empty_index(state)
        metrics.WATCH_ALIVE.set(1)
        await asyncio.sleep(2)


@kopf.on.login(id="login")
def login(memo: kopf.Memo, **kwargs: Any) -> kopf.ConnectionInfo:
    """The operator's own credentials (``--kubeconfig``, else in-cluster, else the default
    kubeconfig): kopf's watches and the operator's calls authenticate as the same user. kopf
    calls this again when the API server refuses the credentials (a rotated token, an exec
    plugin's expired one)."""
    from server_hardening.targets.kubeconfig import CredentialSource, load_credentials

    state = state_of(memo)
    source = state.credentials or CredentialSource(load_credentials(state.kubeconfig))
    now = source.current()
    creds = now.credentials
    return kopf.ConnectionInfo(
        server=creds.server,
        # kopf takes a path or the data, not both; the data wins, as in kubectl.
        ca_path=None if creds.ca_data else creds.ca_path,
        ca_data=creds.ca_data,
        insecure=creds.insecure,
        scheme="Bearer" if now.token else None,
        token=now.token,
        certificate_path=None if now.cert_data else creds.cert_path,
        certificate_data=now.cert_data,
        private_key_path=None if now.key_data else creds.key_path,
        private_key_data=now.key_data,
        default_namespace=creds.namespace,
        expiration=now.expires,
    )


# kopf passes an index to handlers as a keyword argument named by its id.
@kopf.index(GROUP, VERSION, PLURAL, id="by_namespace")
def by_namespace(namespace: str | None, name: str, **_: Any) -> dict[str | None, str]:
    return {namespace: name}


def _attach(memo: Any, handler_kwargs: Mapping[str, Any]) -> None:
    """The first handler call: kopf has filled the ServerHardening index (it runs no handler
    before), so the resources there are known (for /readyz)."""
    state = state_of(memo)
    if state.awaiting is not None:
        return
    known = handler_kwargs["by_namespace"]
    state.awaiting = {(ns, name) for ns in known for name in set(known[ns]) if ns is not None}
    watching.index_complete(state)


@kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile")
@kopf.on.update(GROUP, VERSION, PLURAL, id="reconcile", field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile")
async def on_change(
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    spec: kopf.Spec,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    if namespace is None:
        return
    _attach(memo, kwargs)
    state = state_of(memo)
    state.released.discard((namespace, name))  # re-created under the same name
    await watching.watches_listed(state)
    generation = int(meta.get("generation") or 0)
    service.register(
        state,
        namespace,
        name,
        str(meta.get("uid", "")),
        dict(spec),
        generation,
        dict(kwargs.get("status") or {}),
    )
    await _reconcile(memo, namespace, name)


@kopf.on.field(
    GROUP,
    VERSION,
    PLURAL,
    id="on-recheck",
    field=("metadata", "annotations", RECHECK_ANNOTATION),
)
async def on_recheck(
    namespace: str | None, name: str, new: Any, memo: kopf.Memo, **kwargs: Any
) -> None:
    """A new value of the recheck annotation: check every target in full now, and say so."""
    if namespace is None or not new:
        return
    _attach(memo, kwargs)
    state = state_of(memo)
    await watching.watches_listed(state)
    try:
        await service.recheck(state, namespace, name, str(new))
    except TargetError as exc:
        raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc


@kopf.on.delete(GROUP, VERSION, PLURAL, id="release", backoff=5)
async def release(
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    spec: kopf.Spec,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    if namespace is None:
        return
    outcome = await asyncio.to_thread(
        service.release_resource, state_of(memo), namespace, name, dict(meta), dict(spec)
    )
    if outcome.retry:
        raise kopf.TemporaryError(outcome.retry, delay=RETRY_DELAY)
