"""``hardening verify``: the guide, row by row, on the live installation, as evidence. Pure: it
formats what one read-only pass found (``live.run_once(..., examine=True)``); no I/O here.

Three outputs of one document: JSON for machines, a table for a terminal, and Markdown an
auditor can file: scope, time, product and guide version, every row with its verdict and the
evidence that decided it, and the controls each row supports.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from server_hardening import __version__
from server_hardening.compiler import compile_intent
from server_hardening.model import ResourceRef, ServerHardeningSpec
from server_hardening.reconcile import TargetReport
from server_hardening.rules import most_important_first
from server_hardening.verification import CheckResult, RowResult, Verdict

EXIT_HOLDS = 0
EXIT_UNREADABLE = 1
EXIT_VIOLATED = 3

# The controls a row's evidence supports (what security teams map this guide to). Rows not
# listed support SOC 2 CC6.6 (boundary protection) only.
ADMIN_PORTS = (
    "CIS AWS Foundations 5.2/5.3 (no admin port from 0.0.0.0/0 or ::/0); "
    "CIS GCP 3.6 (SSH restricted from the internet); SOC 2 CC6.6"
)
CONTROLS: dict[str, str] = {
    "ALL-IN-1": ADMIN_PORTS,
    "NOMAD-IN-2": ADMIN_PORTS,
    "VM-IN-5": ADMIN_PORTS,
    "VM-IN-3": "CIS Docker daemon exposure (2376 never public); SOC 2 CC6.6",
    "NOMAD-ISO-1": "CIS EKS 4.3.2 / 5.4.4 (network segmentation); SOC 2 CC6.6",
    "VM-ISO-1": "CIS EKS 4.3.2 / 5.4.4 (network segmentation); SOC 2 CC6.6",
}
DEFAULT_CONTROL = "SOC 2 CC6.6"


def _check_json(result: CheckResult) -> dict[str, Any]:
    check = result.check
    return {
        "from": check.source.label,
        "to": check.destination.label,
        "protocol": check.protocol,
        "port": check.port,
        "expect": "allow" if check.expect else "block",
        "result": "unknown" if result.allowed is None else ("allow" if result.allowed else "block"),
        "verdict": result.verdict.value,
        "machines": list(result.machines),
        "decidedBy": list(result.decided_by),
    }


def rows_of(reports: Sequence[TargetReport]) -> list[RowResult]:
    return [row for report in reports for row in report.rows or ()]


def verify_document(
    ref: ResourceRef,
    spec: ServerHardeningSpec,
    reports: Sequence[TargetReport],
    observed_at: dt.datetime,
) -> dict[str, Any]:
    intent = compile_intent(spec)
    findings = most_important_first([f for r in reports for f in r.findings])
    return {
        "observedAt": observed_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "resource": f"{ref.namespace}/{ref.name}",
        "product": f"server-hardening {__version__}",
        "profile": intent.profile.name,
        "serverVersion": spec.server_version,
        "targets": [
            {
                "name": r.name,
                "examined": r.rows is not None,
                "error": r.last_error,
            }
            for r in reports
        ],
        "rows": [
            {
                "row": row.row,
                "target": row.target,
                "verdict": row.verdict.value,
                "controls": CONTROLS.get(row.row, DEFAULT_CONTROL),
                "checks": [_check_json(c) for c in row.checks],
            }
            for row in rows_of(reports)
        ],
        "findings": [f.as_dict() for f in findings],
    }


def exit_code(document: dict[str, Any]) -> int:
    """0: every row holds; 3: one is violated; 1: a target could not be read (or examined)."""
    if any(r["verdict"] == Verdict.VIOLATED.value for r in document["rows"]):
        return EXIT_VIOLATED
    if any(t["error"] or not t["examined"] for t in document["targets"]):
        return EXIT_UNREADABLE
    return EXIT_HOLDS


def _evidence(check: dict[str, Any]) -> str:
    machines = ", ".join(check["machines"][:5]) or "-"
    more = f" (+{len(check['machines']) - 5})" if len(check["machines"]) > 5 else ""
    return f"{machines}{more}: {'; '.join(check['decidedBy'])}"


def verify_table(document: dict[str, Any]) -> list[list[str]]:
    rows = [["ROW", "TARGET", "VERDICT", "CHECK", "RESULT", "EVIDENCE"]]
    for row in document["rows"]:
        for check in row["checks"]:
            rows.append(
                [
                    row["row"],
                    row["target"],
                    row["verdict"],
                    f"{check['from']} -> {check['to']} {check['protocol']}/{check['port']} "
                    f"must {check['expect']}",
                    check["result"],
                    _evidence(check) if check["verdict"] != "holds" else "-",
                ]
            )
    return rows


def verify_markdown(document: dict[str, Any]) -> str:
    verdicts = [r["verdict"] for r in document["rows"]]
    summary = (
        f"{verdicts.count('holds')} held, {verdicts.count('violated')} violated, "
        f"{verdicts.count('unknown')} unknown"
    )
    lines = [
        f"# Network hardening evidence: {document['resource']}",
        "",
        "| | |",
        "|---|---|",
        f"| Scope | ServerHardening `{document['resource']}`, targets "
        f"{', '.join(t['name'] for t in document['targets'])} |",
        f"| Observed at | {document['observedAt']} |",
        f"| Product | {document['product']} |",
        f"| Guide profile | {document['profile']} (CircleCI Server {document['serverVersion']}) |",
        f"| Result | {summary} |",
        "",
        "Each row of CircleCI's network hardening guide implies checks (from, to, protocol, "
        "port; must allow or must block). Each was evaluated on the effective state of every "
        "machine of the role: every security group on its interfaces and its subnet's network "
        "ACL on AWS; every firewall rule that targets the instance, under the firewall policies, "
        "on GCP; in the server's namespace, every NetworkPolicy (managed or not) on its pods' "
        "labels and declared ports. Read-only: nothing was written.",
        "",
        "| Row | Target | Verdict | Controls supported | Evidence |",
        "|---|---|---|---|---|",
    ]
    for row in document["rows"]:
        evidence = "<br>".join(
            f"{c['from']} → {c['to']} {c['protocol']}/{c['port']} must {c['expect']}: "
            f"**{c['result']}**" + (f" ({_evidence(c)})" if c["verdict"] != "holds" else "")
            for c in row["checks"]
        )
        lines.append(
            f"| {row['row']} | {row['target']} | {row['verdict']} | {row['controls']} | "
            f"{evidence.replace('|', '/')} |"
        )
    if document["findings"]:
        lines += ["", "## Findings", ""]
        lines += [
            f"- **{f['severity']}** `{f['code']}`"
            + (f" [{f['row']}]" if f.get("row") else "")
            + f": {f['message']}"
            for f in document["findings"]
        ]
    return "\n".join(lines) + "\n"
