"""Writes the OpenReports ``Report`` of a ServerHardening (see :mod:`server_hardening.openreports`).

Cost per pass: one create (the first time) or one get plus one replace; two more calls when a
concurrent writer changed the object in between (one retry on 409). When the
``reports.openreports.io`` CRD is not installed, the first call gets a 404, the operator logs
that once and carries on; every later pass tries again (one 404 call), so installing the CRD
later needs no restart, and the return is logged once too.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import urllib3

from server_hardening.model import ResourceRef
from server_hardening.openreports import GROUP, PLURAL, VERSION, Report, to_openreport
from server_hardening.targets.base import PermanentTargetError, TransientTargetError
from server_hardening.targets.kubeapi import ApiError, KubeApi, namespaced

log = logging.getLogger("server_hardening.reports")

CRD_NAME = f"{PLURAL}.{GROUP}"


class ReportWriter:
    """Create-or-replace of Report objects; remembers whether the CRD was seen missing, so the
    log says it once (and says once when it is back)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._crd_missing = False

    def publish(self, api: KubeApi, report: Report, owner: ResourceRef) -> bool:
        """Write the Report for ``report``; False (and nothing written) when the CRD is absent.

        Raises :class:`TransientTargetError` for 5xx/429 and network errors,
        :class:`PermanentTargetError` for anything else the API refuses (RBAC, validation)."""
        body = to_openreport(report, owner)
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        try:
            for _attempt in range(2):
                if self._write(api, namespace, name, body):
                    break
            else:
                raise TransientTargetError(
                    f"Report {namespace}/{name}: changed by another writer twice in a row"
                )
        except ApiError as exc:
            if exc.status == 404 and self._is_missing_crd(exc):
                self._set_missing(True)
                return False
            raise _translate(exc, namespace, name) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientTargetError(f"Report {namespace}/{name}: {exc}") from exc
        self._set_missing(False)
        return True

    @staticmethod
    def _write(api: KubeApi, namespace: str, name: str, body: dict[str, Any]) -> bool:
        """One create-or-replace; False on a write conflict (try again)."""
        group = f"/apis/{GROUP}/{VERSION}"
        try:
            api.create(namespaced(group, namespace, PLURAL), body)
            return True
        except ApiError as exc:
            if exc.status != 409:
                raise
        current = api.get(namespaced(group, namespace, PLURAL, name))
        replacement = {
            **body,
            "metadata": {
                **body["metadata"],
                "resourceVersion": current["metadata"]["resourceVersion"],
            },
        }
        try:
            api.replace(namespaced(group, namespace, PLURAL, name), replacement)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    @staticmethod
    def _is_missing_crd(exc: ApiError) -> bool:
        """A create gets 404 for a missing resource type (a plain ``404 page not found`` when
        the whole group is unknown, a Status "could not find the requested resource" when
        the group is served but not this kind), or for a missing namespace (a Status naming
        ``namespaces``), which is not a missing CRD."""
        return exc.details.get("kind") != "namespaces"

    def _set_missing(self, missing: bool) -> None:
        with self._lock:
            changed, self._crd_missing = self._crd_missing != missing, missing
        if changed and missing:
            log.warning(
                "the %s CRD is not installed: findings stay in the ServerHardening status and "
                "events only (install it with the chart's openReports.installCRD=true, or the "
                "OpenReports chart); the operator carries on",
                CRD_NAME,
            )
        elif changed:
            log.info("the %s CRD is installed now: writing OpenReports Reports", CRD_NAME)


def _translate(exc: ApiError, namespace: str, name: str) -> Exception:
    message = f"Report {namespace}/{name}: {exc.status} {exc.reason}"
    if exc.status in {429, 500, 502, 503, 504}:
        return TransientTargetError(message)
    return PermanentTargetError(message)


_WRITER = ReportWriter()


def publish_report(api: KubeApi, report: Report, owner: ResourceRef) -> bool:
    """Create or replace the OpenReports ``Report`` of ``owner`` from ``report``.

    Returns True when written, False when the Report CRD is not installed (logged once).
    ``api`` must be allowed to create, get and update
    ``reports.openreports.io`` in the owner's namespace (the chart's Role grants it)."""
    return _WRITER.publish(api, report, owner)
