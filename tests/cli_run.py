"""``hardening ARGS`` in this process, as a user sees it (a subprocess per case cost 0.4 s)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

from server_hardening.cli import main


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """stdin, stdout, stderr and the exit code of ``hardening ARGS`` as a user sees them."""
    out, err = io.StringIO(), io.StringIO()
    saved_stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO((stdin or "").encode()))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdin = saved_stdin
    return subprocess.CompletedProcess(["hardening", *args], code, out.getvalue(), err.getvalue())
