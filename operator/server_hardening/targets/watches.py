"""The NetworkPolicy and Service watches, run as client-go's reflector runs them: list (in
pages), watch from the listing's resourceVersion, and list again when the API says that version
is gone. Nothing of an object is kept but its resourceVersion, and only for what the sink keeps.

Why these and not kopf's watches (``kopf.on.event``, used before):

- A relisting must *replace* what is known. An object deleted while a watch was down is not
  reported as deleted: it is just absent from the next listing. A kopf handler sees the listed
  objects one at a time and never where a listing ends, so each (re)listing had to make every
  resource's next check run in full, the minute after every start included (about 2,500 reads
  at 1,000 resources). Here the sink gets each listing whole (:meth:`WatchSink.listed`) and can
  tell exactly which namespaces changed.
- The first listings are known to be in: reconciles at start wait for them (controller-runtime's
  "wait for cache sync"), so what they compare already counts what the listings hold.
- kopf runs every watched object through its per-object machinery (a queue, a worker task, a
  memory record): 5,000 objects at 1,000 installations, nearly all of them in namespaces the
  operator has no resource in.

A watch runs in a thread of its own with its own connection (a forked client), so it never
waits behind the reconciles' calls. Failures (a refused connection, an API server restarting, a
401 before a token is re-read) are waited out with a capped backoff, then the watch goes on
from where it was, or lists again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from server_hardening.targets.base import ApiCallRecorder, ignore_call
from server_hardening.targets.kubeapi import (
    CLIENT_ERRORS,
    CORE,
    NETWORKING,
    ApiError,
    KubeApi,
    WatchStream,
    namespaced,
)

log = logging.getLogger("server_hardening.watches")

PAGE_SIZE = 500
# The API server ends each watch call after about this long (kopf used 270 s too); the watch
# then goes on from the last version it saw, without listing.
WATCH_SECONDS = 270
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 30.0

# namespace -> object name -> resourceVersion
Versions = dict[str, dict[str, str]]


@dataclass(frozen=True)
class WatchedKind:
    kind: str  # as the sink names it
    api_path: str
    plural: str


NETWORKPOLICIES = WatchedKind("networkpolicy", NETWORKING, "networkpolicies")
SERVICES = WatchedKind("service", CORE, "services")


class WatchSink(Protocol):
    """Where a watch delivers, from its own thread."""

    def listed(self, kind: str, namespace: str | None, versions: Versions) -> None:
        """A complete listing of ``kind`` in ``namespace`` (None: every namespace): what it
        holds replaces what was known there."""

    def changed(self, kind: str, namespace: str, name: str, version: str) -> None:
        """One object added or modified (its new version) or deleted (``version`` empty)."""


class VersionGoneError(Exception):
    """410: the version to go on from is too old (or a page's continue token expired)."""


class Watch:
    """One kind, cluster-wide (``namespace`` None) or in one namespace."""

    def __init__(
        self,
        api: KubeApi,
        kind: WatchedKind,
        namespace: str | None,
        sink: WatchSink,
        *,
        record: ApiCallRecorder = ignore_call,
        page_size: int = PAGE_SIZE,
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self.api = api
        self.kind = kind
        self.namespace = namespace
        self.sink = sink
        self.record = record
        self.page_size = page_size
        self.watch_seconds = watch_seconds
        self.stopping = threading.Event()
        # The version to go on from: the listing's, then each event's (None: list first). Kept
        # as each event is delivered, so a connection that drops mid-stream resumes after it.
        self.since: str | None = None
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        if self.namespace is None:
            return f"{self.kind.api_path}/{self.kind.plural}"
        return namespaced(self.kind.api_path, self.namespace, self.kind.plural)

    def start(self) -> Watch:
        where = self.namespace or "all namespaces"
        self._thread = threading.Thread(
            target=self.run, name=f"watch {self.kind.plural} in {where}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop, ending a watch call in progress (closing its connection) rather than waiting
        for the server to end it."""
        self.stopping.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Until stopped: list, then watch; wait out failures and go on."""
        failures = 0
        while not self.stopping.is_set():
            try:
                if self.since is None:
                    self.since = self.list_once()
                self.watch_once(self.since)
                failures = 0
            except VersionGoneError:
                self.since = None
                failures = 0
            except CLIENT_ERRORS as exc:
                if self.stopping.is_set():
                    return
                failures += 1
                wait = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (failures - 1))
                log.warning(
                    "watching %s in %s failed (%s); again in %.0f s",
                    self.kind.plural,
                    self.namespace or "all namespaces",
                    exc,
                    wait,
                )
                self.stopping.wait(wait)

    def list_once(self) -> str:
        """One complete listing, page by page, delivered whole; returns its resourceVersion.
        A listing cut short (an error, an expired continue token) delivers nothing."""
        versions: Versions = {}
        token = ""
        while True:
            query = f"?limit={self.page_size}"
            if token:
                query += f"&continue={quote(token, safe='')}"
            page = self._call(f"list_all_{self.kind.plural}", self.api.get, self.path + query)
            for item in page.get("items") or ():
                meta = item.get("metadata") or {}
                names = versions.setdefault(str(meta.get("namespace", "")), {})
                names[str(meta.get("name", ""))] = str(meta.get("resourceVersion", ""))
            listing = page.get("metadata") or {}
            token = str(listing.get("continue") or "")
            if not token:
                self.sink.listed(self.kind.kind, self.namespace, versions)
                return str(listing.get("resourceVersion", ""))

    def watch_once(self, since: str) -> None:
        """One watch call, from ``since`` until the server ends it; :attr:`since` follows the
        events delivered."""
        stream: WatchStream = self._call(
            f"watch_{self.kind.plural}",
            self.api.watch,
            self.path,
            since=since,
            timeout_seconds=self.watch_seconds,
        )
        self._stream = stream
        try:
            for event in stream:
                if self.stopping.is_set():
                    break
                self.since = since = self._deliver(event, since)
        finally:
            self._stream = None
            stream.close()

    def _deliver(self, event: dict[str, Any], since: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410:
                raise VersionGoneError(str(obj.get("message", "")))
            raise ApiError(code, str(obj.get("reason", "")), str(obj.get("message", "")))
        meta = obj.get("metadata") or {}
        version = str(meta.get("resourceVersion") or since)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self.sink.changed(
                self.kind.kind,
                str(meta.get("namespace", "")),
                str(meta.get("name", "")),
                "" if kind == "DELETED" else version,
            )
        return version  # BOOKMARK too: it only moves the version on

    def _call(self, operation: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except ApiError as exc:
            self.record(operation, "error")
            if exc.status == 410:
                raise VersionGoneError(exc.message) from exc
            raise
        except CLIENT_ERRORS:
            self.record(operation, "transient_error")
            raise
        self.record(operation, "ok")
        return result


class NamespaceVersions:
    """What the watches delivered, per namespace: the resourceVersion of every NetworkPolicy and
    Service, and a counter that moves whenever one of them changes (O(1) to compare).

    A watch that lists again (after an API-server restart, a "410 Gone") delivers the listing
    whole: it replaces what was known of that kind there, so an object deleted while the watch
    was down counts as a change of its namespace, as a deletion event would have. A namespace
    kept only since the last listing (its first resource came after it) may hold objects never
    delivered to it, so the next listing counts as a change there too."""

    def __init__(self) -> None:
        self._versions: dict[str, dict[tuple[str, str], str]] = {}
        self._changes: dict[str, int] = {}
        # Per kind, the namespaces whose objects the last listing delivered in full.
        self._listed: dict[str, set[str]] = {}

    def seen(self, namespace: str, kind: str, name: str, version: str) -> bool:
        """``version`` empty: the object was deleted. Whether that changed anything."""
        known = self._versions.setdefault(namespace, {})
        if known.get((kind, name), "") == version:
            return False
        if version:
            known[(kind, name)] = version
        else:
            known.pop((kind, name), None)
        self._moved(namespace)
        return True

    def replace(
        self, kind: str, scope: str | None, listing: Versions, kept: Collection[str] | None
    ) -> set[str]:
        """A complete listing of ``kind`` in ``scope`` (None: every namespace) becomes what is
        known of it in the namespaces ``kept`` (None: all of them); returns those whose objects
        changed."""
        listed = self._listed.setdefault(kind, set())
        candidates = set(self._versions) | set(listing) | set(kept or ())
        changed = set()
        for namespace in candidates:
            if (scope is not None and namespace != scope) or (
                kept is not None and namespace not in kept
            ):
                continue
            known = self._versions.setdefault(namespace, {})
            before = {name: v for (k, name), v in known.items() if k == kind}
            after = listing.get(namespace, {})
            if before == after and namespace in listed:
                continue
            for name in before:
                del known[(kind, name)]
            known.update(((kind, name), version) for name, version in after.items())
            listed.add(namespace)
            self._moved(namespace)
            changed.add(namespace)
        return changed

    def retain(self, kept: Collection[str]) -> None:
        """Forget every namespace but these."""
        for namespace in set(self._versions) - set(kept):
            self.forget(namespace)

    def forget(self, namespace: str) -> None:
        """The namespace has no resource any more: nothing of it is kept."""
        self._versions.pop(namespace, None)
        self._changes.pop(namespace, None)
        for listed in self._listed.values():
            listed.discard(namespace)

    def namespaces(self) -> set[str]:
        """The namespaces whose objects' versions are kept."""
        return set(self._versions)

    def changes(self, namespace: str) -> int:
        return self._changes.get(namespace, 0)

    def _moved(self, namespace: str) -> None:
        self._changes[namespace] = self._changes.get(namespace, 0) + 1
