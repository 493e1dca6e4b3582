"""``hardening``: the same pipeline the operator runs, from a terminal.

    hardening plan -f hardening.yaml [-o table|wide|yaml|json]  what would be written (offline)
    hardening plan --live -f hardening.yaml [-o json]       what the next pass would do (read-only)
    hardening apply -f hardening.yaml                       one Enforce pass, without the operator
    hardening crd                                           the CustomResourceDefinition
    hardening run [--namespace NS ...]                      the operator

On a source checkout the developer package (``dev/``) adds ``hardening dev cluster start|stop``
and ``hardening demo``; they are not part of the product.

Exit codes: 0 success, 1 failure, 2 invalid input (the error names the field; stdout is empty).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from server_hardening import __version__
from server_hardening.election import LeaseTimings
from server_hardening.model import ResourceRef, ServerHardeningSpec, SpecError, parse_resource

EXIT_INVALID = 2


def _load_resource(path: str, name: str | None = None) -> tuple[Any, str]:
    """The ServerHardening in ``path`` (or stdin) and where in the file it is ("" when the
    file holds only it); :class:`ManifestError` names the file and what is wrong."""
    from server_hardening import manifest

    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise manifest.ManifestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    source = "<stdin>" if path == "-" else path
    found = manifest.documents(manifest.decode(data, source), source)
    selected = manifest.select(found, source, name)
    return selected.body, selected.where


def _parse(path: str, name: str | None = None) -> tuple[ResourceRef, ServerHardeningSpec] | None:
    """The resource in ``path``, or None after printing every error, each naming the file, the
    field, the value and the reason (``hardening.yaml: spec.mode: "audit" is not one of ...``)."""
    from server_hardening.manifest import ManifestError

    try:
        body, where = _load_resource(path, name)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    source = "<stdin>" if path == "-" else path
    label = f"{source} ({where})" if where else source
    try:
        parsed = parse_resource(body)
    except SpecError as exc:
        for error in exc.errors:
            print(f"{label}: {error}", file=sys.stderr)
        return None
    if where:
        print(f"{label}: ServerHardening {parsed[0]}", file=sys.stderr)
    return parsed


def cmd_plan(args: argparse.Namespace) -> int:
    from server_hardening.plan import build_plan

    parsed = _parse(args.file, args.name)
    if parsed is None:
        return EXIT_INVALID
    ref, spec = parsed
    if args.live:
        return _live(args, ref, spec, enforce=False)
    doc = build_plan(spec, ref)
    if args.output == "json":
        json.dump(doc.as_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if args.output == "yaml":
        manifests = list(doc.network_policies or [])
        sys.stdout.write(yaml.safe_dump_all(manifests, sort_keys=False) if manifests else "")
        return 0
    _print_table(doc, ref, wide=args.output == "wide")
    return 0


def _print_table(doc: Any, ref: ResourceRef, *, wide: bool) -> None:
    from server_hardening.plantable import plan_lines
    from server_hardening.renderers.gcp import role_tags

    gcp = doc.intent.spec.gcp
    tag_roles = {tag: role.value for role, tag in role_tags(gcp).items()} if gcp else {}
    title = f"ServerHardening {ref} - guide profile {doc.profile}"
    lines = plan_lines(title, doc.as_json(), doc.network_policy_rows, tag_roles, wide=wide)
    sys.stdout.write("".join(line + "\n" for line in lines))


def cmd_apply(args: argparse.Namespace) -> int:
    parsed = _parse(args.file, args.name)
    if parsed is None:
        return EXIT_INVALID
    ref, spec = parsed
    return _live(args, ref, spec, enforce=True)


def _live(
    args: argparse.Namespace, ref: ResourceRef, spec: ServerHardeningSpec, *, enforce: bool
) -> int:
    """One pass of the per-target pipeline against the configured cluster and clouds."""
    from server_hardening.live import live_plan_json, run_once
    from server_hardening.runner import kube_api
    from server_hardening.targets.factory import LiveTargets
    from server_hardening.targets.kubeconfig import KubeConfigError

    try:
        api = kube_api(args.kubeconfig) if spec.kubernetes.network_policies.enabled else None
    except KubeConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    reports, _events = run_once(ref, spec, LiveTargets(api), enforce=enforce)
    doc = live_plan_json(spec, reports)
    if args.output == "json":
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        from server_hardening.plantable import live_lines

        lines = live_lines(doc, wide=args.output == "wide")
        sys.stdout.write("".join(line + "\n" for line in lines))
    failed = any(t["error"] or t["conflictWith"] for t in doc["targets"])
    return 1 if failed else 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Read-only: every row of the guide on the effective live state; exit 0 when every row
    holds, 3 when one is violated, 1 when the state cannot be read, 2 on bad input."""
    import datetime as dt

    from server_hardening.live import run_once
    from server_hardening.runner import kube_api
    from server_hardening.targets.factory import LiveTargets
    from server_hardening.targets.kubeconfig import KubeConfigError
    from server_hardening.verify import (
        EXIT_UNREADABLE,
        exit_code,
        verify_document,
        verify_markdown,
        verify_table,
    )

    parsed = _parse(args.file, args.name)
    if parsed is None:
        return EXIT_INVALID
    ref, spec = parsed
    try:
        api = kube_api(args.kubeconfig) if spec.kubernetes.network_policies.enabled else None
    except KubeConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    observed_at = dt.datetime.now(dt.UTC)
    reports, _events = run_once(ref, spec, LiveTargets(api), enforce=False)
    document = verify_document(ref, spec, reports, observed_at)
    if args.output == "json":
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.output == "markdown":
        sys.stdout.write(verify_markdown(document))
    else:
        from server_hardening.plantable import render_lines

        header, *rows = verify_table(document)
        lines = render_lines(header, rows, [False] * len(header), None)
        sys.stdout.write("".join(line + "\n" for line in lines))
        for target in document["targets"]:
            if target["error"]:
                sys.stdout.write(f"\n{target['name']}: {target['error']}\n")
    return exit_code(document)


def cmd_crd(args: argparse.Namespace) -> int:
    from server_hardening.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from server_hardening.runner import run_operator

    return run_operator(args)


def cmd_recheck(args: argparse.Namespace) -> int:
    """Ask the running operator to check every target of a resource in full now: a new value
    of its recheck annotation (the time), which the operator answers with a Rechecked Event."""
    import datetime as dt

    from server_hardening.runner import kube_api
    from server_hardening.service import RECHECK_ANNOTATION
    from server_hardening.targets.base import TargetError
    from server_hardening.targets.kubeconfig import KubeConfigError
    from server_hardening.targets.kubernetes import ResourceClient

    try:
        api = kube_api(args.kubeconfig)
    except KubeConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    namespace = args.namespace or api.source.current().credentials.namespace or "default"
    value = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        ResourceClient(api).set_annotation(namespace, args.name, RECHECK_ANNOTATION, value)
    except TargetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"serverhardening {namespace}/{args.name}: recheck requested ({RECHECK_ANNOTATION}="
        f"{value}); the operator posts a Rechecked event when done"
    )
    return 0


def _register_plugins(sub: Any) -> None:
    """Subcommands from installed plugins (``server_hardening.cli`` entry points): on a source
    checkout the developer package adds ``dev`` and ``demo``; the product wheel has none."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="server_hardening.cli"):
        entry.load()(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hardening",
        description="Keep a CircleCI Server installation hardened as CircleCI's guide says.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="show what would be written (offline, or --live)")
    plan.add_argument("-f", "--file", required=True, help="a ServerHardening YAML file, or -")
    plan.add_argument(
        "-o",
        "--output",
        choices=["table", "wide", "yaml", "json"],
        default="table",
        help="table: fits 120 columns, long cells wrap; wide: unwrapped, with every column "
        "(a GCP firewall's name)",
    )
    plan.add_argument(
        "--name", default=None, help="the ServerHardening to plan when the file holds several"
    )
    plan.add_argument(
        "--live",
        action="store_true",
        help="observe the configured cluster and clouds (read-only) and show what the next "
        "pass would create, adopt, update, delete, keep or leave",
    )
    plan.add_argument(
        "--kubeconfig", default=None, help="with --live: else in-cluster or ~/.kube/config"
    )
    plan.set_defaults(func=cmd_plan)

    apply = sub.add_parser("apply", help="run one Enforce pass now, without the operator")
    apply.add_argument("-f", "--file", required=True, help="a ServerHardening YAML file, or -")
    apply.add_argument("-o", "--output", choices=["table", "wide", "json"], default="table")
    apply.add_argument(
        "--name", default=None, help="the ServerHardening to apply when the file holds several"
    )
    apply.add_argument("--kubeconfig", default=None, help="else in-cluster or ~/.kube/config")
    apply.set_defaults(func=cmd_apply)

    verify = sub.add_parser(
        "verify",
        help="check every row of the guide on the live installation (read-only): exit 0 when "
        "every row holds, 3 when one is violated, 1 when the state cannot be read",
    )
    verify.add_argument("-f", "--file", required=True, help="a ServerHardening YAML file, or -")
    verify.add_argument("-o", "--output", choices=["table", "json", "markdown"], default="table")
    verify.add_argument(
        "--name", default=None, help="the ServerHardening to verify when the file holds several"
    )
    verify.add_argument("--kubeconfig", default=None, help="else in-cluster or ~/.kube/config")
    verify.set_defaults(func=cmd_verify)

    crd = sub.add_parser("crd", help="print the CustomResourceDefinition")
    crd.set_defaults(func=cmd_crd)

    run = sub.add_parser("run", help="run the operator")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    run.add_argument("--metrics-port", type=int, default=8080, help="/metrics, /healthz, /readyz")
    run.add_argument("--metrics-host", default="0.0.0.0", help="address to serve metrics on")  # noqa: S104
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument("--verbose", action="store_true")
    timings = LeaseTimings()
    election = run.add_argument_group(
        "leader election (HA)",
        "with --leader-elect, replicas hold a coordination.k8s.io/v1 Lease to act: one writes, "
        "the others stand by (client-go's semantics; shorter timings than its 15/10/2 s, so a "
        "crashed leader is replaced within about 10 s)",
    )
    election.add_argument(
        "--leader-elect", action="store_true", help="act only while holding the Lease"
    )
    election.add_argument("--lease-name", default="server-hardening", help="the Lease's name")
    election.add_argument(
        "--lease-namespace",
        default=None,
        help="the Lease's namespace (default: $POD_NAMESPACE, else the first --namespace)",
    )
    election.add_argument(
        "--lease-duration",
        type=float,
        default=timings.lease_duration,
        help="seconds a standby waits after the Lease last changed before taking it over "
        "(default %(default)g)",
    )
    election.add_argument(
        "--renew-deadline",
        type=float,
        default=timings.renew_deadline,
        help="seconds the leader keeps trying to renew before it stops (< --lease-duration; "
        "default %(default)g)",
    )
    election.add_argument(
        "--retry-period",
        type=float,
        default=timings.retry_period,
        help="seconds between renewals and tries (default %(default)g)",
    )
    run.add_argument("--kubeconfig", default=None, help="else in-cluster or ~/.kube/config")
    run.add_argument(
        "--release-timeout",
        type=float,
        default=300.0,
        help="seconds to keep retrying an unreachable target when a resource is deleted, "
        "before giving up with a ReleaseAbandoned event (the finalizer is removed)",
    )
    run.set_defaults(func=cmd_run)

    recheck = sub.add_parser(
        "recheck", help="ask the operator to check every target of a resource in full now"
    )
    recheck.add_argument("name", help="the ServerHardening's name")
    recheck.add_argument(
        "-n", "--namespace", default=None, help="else the kubeconfig context's, else default"
    )
    recheck.add_argument("--kubeconfig", default=None, help="else in-cluster or ~/.kube/config")
    recheck.set_defaults(func=cmd_recheck)

    _register_plugins(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
