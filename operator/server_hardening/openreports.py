"""A reconcile :class:`~server_hardening.reconcile.Report` as an OpenReports ``Report``
(``openreports.io/v1alpha1``), the object security tools read (Policy Reporter, kubectl).
Pure: no I/O here; :mod:`server_hardening.targets.reports` writes it.

One Report per ServerHardening, in its namespace, with the same name, owned by it (so it goes
when the resource goes). Every finding is a result, uncapped (status keeps the most important
ones only):

- ``policy``: the guide row ID the finding concerns (``ALL-IN-1``, ``NOMAD-IN-2``, ...); findings
  about no single row (a conflict, an invalid field, an unmanaged rule) use ``ServerHardening``;
- ``rule``: the finding code (``WorldOpenSensitivePort``, ``Missing``, ``UnmanagedRule``, ...);
- ``result``: ``fail`` for errors and warnings, ``warn`` for notes (info), ``error`` for a target
  that could not be checked, ``pass`` for a target checked and found in sync;
- ``severity``: see :data:`SEVERITY` (a world-open sensitive port is ``critical``);
- ``category``: the target (``kubernetes``, ``aws``, ``gcp``) or ``spec``;
- ``properties``: ``target``, ``guideRow``, ``code``, ``mode``, ``generation`` and, when known, the
  affected ``objects`` and the cloud IDs named in the finding (``awsIds``: security groups and
  security-group rules);
- ``resources``: the ServerHardening, plus each affected NetworkPolicy on the kubernetes target.

The ``summary`` counts results by outcome.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

from server_hardening.model import API_VERSION as OWNER_API_VERSION
from server_hardening.model import KIND as OWNER_KIND
from server_hardening.model import ResourceRef
from server_hardening.rules import Finding, Severity


# What this module reads of reconcile's Report and TargetReport, as protocols: the layers stay
# one way (the adapter that writes the Report sits below reconcile and must not import it).
class _Drift(Protocol):
    @property
    def total(self) -> int: ...


class TargetReport(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def findings(self) -> Sequence[Finding]: ...
    @property
    def last_error(self) -> str: ...
    @property
    def observed(self) -> bool: ...
    @property
    def managed_rules(self) -> int: ...
    @property
    def drift(self) -> _Drift: ...
    @property
    def rows(self) -> Sequence[_RowResult] | None: ...


class _Check(Protocol):
    def describe(self) -> str: ...


class _CheckResult(Protocol):
    @property
    def check(self) -> _Check: ...
    @property
    def machines(self) -> tuple[str, ...]: ...
    @property
    def decided_by(self) -> tuple[str, ...]: ...
    @property
    def verdict(self) -> str: ...


class _RowResult(Protocol):
    @property
    def row(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def verdict(self) -> str: ...
    @property
    def checks(self) -> Sequence[_CheckResult]: ...


class Report(Protocol):
    @property
    def ref(self) -> ResourceRef: ...
    @property
    def generation(self) -> int: ...
    @property
    def mode(self) -> str: ...
    @property
    def checked_at(self) -> dt.datetime: ...
    @property
    def findings(self) -> Sequence[Finding]: ...
    @property
    def targets(self) -> Sequence[TargetReport]: ...


GROUP = "openreports.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Report"
PLURAL = "reports"
SOURCE = "server-hardening"
NO_ROW = "ServerHardening"
OUTCOMES = ("pass", "fail", "warn", "error", "skip")

SEVERITY = {Severity.ERROR: "high", Severity.WARNING: "medium", Severity.INFO: "info"}
CODE_SEVERITY = {"WorldOpenSensitivePort": "critical"}
RESULT = {Severity.ERROR: "fail", Severity.WARNING: "fail", Severity.INFO: "warn"}

_AWS_ID = re.compile(r"\b(?:sgr|sg)-[0-9a-f]{8,17}\b")
_NETWORK_POLICY = re.compile(r"\bNetworkPolicy (?P<name>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)\b")


def report_name(ref: ResourceRef) -> str:
    """The Report shares the ServerHardening's name (another kind, so no clash)."""
    return ref.name


def _timestamp(report: Report) -> dict[str, int]:
    moment = report.checked_at
    return {"seconds": int(moment.timestamp()), "nanos": moment.microsecond * 1000}


def _owner_object(owner: ResourceRef) -> dict[str, str]:
    out = {
        "apiVersion": OWNER_API_VERSION,
        "kind": OWNER_KIND,
        "namespace": owner.namespace,
        "name": owner.name,
    }
    if owner.uid:
        out["uid"] = owner.uid
    return out


def _objects(finding: Finding) -> list[str]:
    """What the finding is about: the adapter's own list when it gave one, else the names
    the message carries (a NetworkPolicy name, security-group and rule IDs)."""
    if finding.objects:
        return list(finding.objects)
    found = [m["name"] for m in _NETWORK_POLICY.finditer(finding.message)]
    return found + [i for i in _AWS_ID.findall(finding.message) if i not in found]


def _result(finding: Finding, owner: ResourceRef, report: Report, target: str) -> dict[str, Any]:
    objects = _objects(finding)
    properties = {
        "code": finding.code,
        "target": target or "spec",
        "mode": report.mode,
        "generation": str(report.generation),
    }
    if finding.row:
        properties["guideRow"] = finding.row
    if objects:
        properties["objects"] = ",".join(objects)
    aws_ids = sorted(
        set(_AWS_ID.findall(finding.message)) | {o for o in objects if _AWS_ID.fullmatch(o)}
    )
    if aws_ids:
        properties["awsIds"] = ",".join(aws_ids)
    resources = [_owner_object(owner)]
    if target == "kubernetes":
        resources += [
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "namespace": owner.namespace, "name": name}
            for name in objects
            if not _AWS_ID.fullmatch(name)
        ]  # fmt: skip
    return {
        "source": SOURCE,
        "policy": finding.row or NO_ROW,
        "rule": finding.code,
        "category": target or "spec",
        "severity": CODE_SEVERITY.get(finding.code, SEVERITY[finding.severity]),
        "result": RESULT[finding.severity],
        "scored": True,
        "timestamp": _timestamp(report),
        "message": finding.message,
        "properties": properties,
        "resources": resources,
    }


def _target_outcome(
    target: TargetReport, owner: ResourceRef, report: Report
) -> dict[str, Any] | None:
    """A target that could not be checked is an ``error``; one checked in sync a ``pass``."""
    base = {
        "source": SOURCE,
        "policy": NO_ROW,
        "category": target.name,
        "scored": True,
        "timestamp": _timestamp(report),
        "properties": {"target": target.name, "mode": report.mode,
                       "generation": str(report.generation),
                       "managedRules": str(target.managed_rules)},
        "resources": [_owner_object(owner)],
    }  # fmt: skip
    if target.last_error:
        return {**base, "rule": "TargetError", "result": "error", "severity": "high",
                "message": f"{target.name}: {target.last_error}"}  # fmt: skip
    if (
        target.observed
        and target.drift.total == 0
        and not any(RESULT[f.severity] == "fail" for f in target.findings)
    ):
        return {**base, "rule": "InSync", "result": "pass", "severity": "info",
                "message": f"{target.name}: {target.managed_rules} managed rule(s) hold what "
                "the guide requires"}  # fmt: skip
    return None


def _row_result(row: _RowResult, owner: ResourceRef, report: Report) -> dict[str, Any]:
    """One result per guide row verified on the machines: ``pass`` when it holds, ``fail``
    when violated, ``skip`` when no machine could tell."""
    verdict = str(row.verdict)
    outcome = {"holds": "pass", "violated": "fail"}.get(verdict, "skip")
    failing = [c for c in row.checks if str(c.verdict) == "violated"]
    evidence = "; ".join(
        f"{c.check.describe()} on {', '.join(c.machines[:5])}: {'; '.join(c.decided_by)}"
        for c in failing[:3]
    )
    return {
        "source": SOURCE,
        "policy": row.row,
        "rule": "GuideRowVerified",
        "category": row.target,
        "result": outcome,
        "severity": "high" if outcome == "fail" else "info",
        "scored": True,
        "timestamp": _timestamp(report),
        "message": f"{row.row} {verdict} on {row.target}" + (f": {evidence}" if evidence else ""),
        "properties": {"target": row.target, "guideRow": row.row, "verdict": verdict,
                       "checks": str(len(row.checks)), "mode": report.mode,
                       "generation": str(report.generation)},
        "resources": [_owner_object(owner)],
    }  # fmt: skip


def to_openreport(report: Report, owner: ResourceRef | None = None) -> dict[str, Any]:
    """The ``openreports.io/v1alpha1`` ``Report`` for one reconcile report (every finding)."""
    who = owner or report.ref
    results: list[dict[str, Any]] = [_result(f, who, report, f.target) for f in report.findings]
    for target in report.targets:
        results += [_result(f, who, report, f.target or target.name) for f in target.findings]
        outcome = _target_outcome(target, who, report)
        if outcome is not None:
            results.append(outcome)
        results += [_row_result(row, who, report) for row in target.rows or ()]
    counts = Counter(r["result"] for r in results)
    owner_reference: dict[str, Any] = {
        "apiVersion": OWNER_API_VERSION,
        "kind": OWNER_KIND,
        "name": who.name,
        "uid": who.uid,
        "controller": True,
    }
    metadata: dict[str, Any] = {
        "name": report_name(who),
        "namespace": who.namespace,
        "labels": {
            "app.kubernetes.io/managed-by": SOURCE,
            "app.kubernetes.io/part-of": SOURCE,
        },
    }
    if who.uid:  # an ownerReference needs the owner's UID (offline plans have none)
        metadata["ownerReferences"] = [owner_reference]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "source": SOURCE,
        "scope": _owner_object(who),
        "summary": {outcome: counts.get(outcome, 0) for outcome in OUTCOMES},
        "results": results,
    }
