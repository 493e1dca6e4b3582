"""``hardening dev cluster start|stop`` and ``hardening demo``: registered into the product CLI
through the ``server_hardening.cli`` entry point when this developer package is installed."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_dev(args: argparse.Namespace) -> int:
    from server_hardening_dev import controlplane

    argv = [args.action]
    if args.state_dir:
        argv += ["--state-dir", args.state_dir]
    return controlplane.main(argv)


def cmd_demo(args: argparse.Namespace) -> int:
    from server_hardening_dev.demo import run_demo

    return run_demo(args)


def register(sub: Any) -> None:
    """Add the developer subcommands to the product parser's subparsers."""
    dev = sub.add_parser("dev", help="development tools (source checkout only)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    cluster = dev_sub.add_parser("cluster", help="a local kube-apiserver + etcd")
    cluster.add_argument("action", choices=["start", "stop"])
    cluster.add_argument("--state-dir", default=None)
    cluster.set_defaults(func=cmd_dev)

    demo = sub.add_parser("demo", help="run the whole product locally (control plane + EC2)")
    demo.add_argument("--mode", choices=["Enforce", "Audit"], default="Enforce")
    demo.add_argument("--keep", action="store_true", help="leave it running until Ctrl-C")
    demo.add_argument("--no-progress", action="store_true", help="plain output, no spinner")
    demo.set_defaults(func=cmd_demo)
