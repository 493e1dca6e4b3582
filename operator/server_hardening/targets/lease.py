"""The leader election's Lease (``coordination.k8s.io/v1``): read, create, update. No judgement:
:mod:`server_hardening.election` decides what to write; this only translates.

Cost: a candidate reads the Lease once per try (every 1 to 2.2 s by default, and once more at
the instant a lease it waits for expires); the holder updates it once per retry period (every
second) without reading it first (the update carries the resourceVersion of its last write; a
conflict makes the next try read). So about 60 calls a minute for the holder and 27 to 60 for
each standby (with client-go's 15/10/2 s timings: 30, and 14 to 30).

The client is the operator's own, built without the write gate (the election must write while
the gate is closed: that is how it opens).
"""

from __future__ import annotations

from typing import Any

from server_hardening.election import LeaseRecord, Observed
from server_hardening.targets.kubeapi import CLIENT_ERRORS, ApiError, KubeApi, namespaced

COORDINATION = "/apis/coordination.k8s.io/v1"


class LeaseConflict(Exception):  # noqa: N818 - what the API server answered
    """The Lease changed since it was read (409): someone else wrote it first."""


class LeaseUnavailable(Exception):  # noqa: N818
    """The Lease could not be read or written (the API server's error, or the connection's)."""


class LeaseClient:
    def __init__(self, api: KubeApi, namespace: str, name: str) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.collection = namespaced(COORDINATION, namespace, "leases")
        self.path = namespaced(COORDINATION, namespace, "leases", name)

    def describe(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def get(self, *, timeout: float) -> Observed:
        try:
            body = self.api.get(self.path, timeout=timeout)
        except CLIENT_ERRORS as exc:
            if isinstance(exc, ApiError) and exc.status == 404:
                return Observed(None)
            raise LeaseUnavailable(f"read {self.describe()}: {_why(exc)}") from exc
        return _observed(body)

    def create(self, record: LeaseRecord, *, timeout: float) -> str:
        """Create the Lease holding ``record``; its resourceVersion."""
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": _spec(record),
        }
        return self._write("create", "POST", self.collection, body, timeout)

    def update(self, record: LeaseRecord, resource_version: str, *, timeout: float) -> str:
        """Replace the Lease's spec, only if it is still at ``resource_version``."""
        if not resource_version:
            raise ValueError("an update of the Lease needs the resourceVersion it was read at")
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": resource_version,
            },
            "spec": _spec(record),
        }
        return self._write("update", "PUT", self.path, body, timeout)

    def _write(self, verb: str, method: str, path: str, body: Any, timeout: float) -> str:
        try:
            answer = self.api.request(method, path, body=body, timeout=timeout)
        except CLIENT_ERRORS as exc:
            if isinstance(exc, ApiError) and exc.status == 409:
                raise LeaseConflict(f"{verb} {self.describe()}: {exc.message}") from exc
            raise LeaseUnavailable(f"{verb} {self.describe()}: {_why(exc)}") from exc
        return str((answer.get("metadata") or {}).get("resourceVersion", ""))


def _spec(record: LeaseRecord) -> dict[str, Any]:
    """The Lease's spec as client-go writes it (times as MicroTime; an empty holder stays an
    empty string, as client-go's release writes it)."""
    spec: dict[str, Any] = {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": record.lease_duration_seconds,
        "leaseTransitions": record.transitions,
    }
    if record.acquire_time:
        spec["acquireTime"] = record.acquire_time
    if record.renew_time:
        spec["renewTime"] = record.renew_time
    return spec


def _observed(body: Any) -> Observed:
    spec = (body or {}).get("spec") or {}
    meta = (body or {}).get("metadata") or {}
    record = LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        lease_duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=str(spec.get("acquireTime") or ""),
        renew_time=str(spec.get("renewTime") or ""),
        transitions=int(spec.get("leaseTransitions") or 0),
    )
    return Observed(record, str(meta.get("resourceVersion", "")))


def _why(exc: Exception) -> str:
    first = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}"
