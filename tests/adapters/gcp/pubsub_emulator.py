"""Google's Pub/Sub emulator (Java), started on a free port for the event tests and the benchmark.

Where it is found, first that exists: ``SERVER_HARDENING_PUBSUB_EMULATOR`` (the launcher's path),
``cloud-pubsub-emulator`` on ``PATH``, the Debian package ``google-cloud-cli-pubsub-emulator``
(``/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator``), or the same
under ``gcloud``'s SDK root. It needs Java 17 or later (``java`` on ``PATH``). Absent, the tests that
need it are skipped with the reason; under ``CI=true`` that is a failure instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

PACKAGE = "google-cloud-cli-pubsub-emulator"
DEBIAN_LAUNCHER = Path(
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
)
START_TIMEOUT = 120.0


def find_launcher() -> tuple[Path | None, str]:
    """The emulator's launcher, or None and why not."""
    named = os.environ.get("SERVER_HARDENING_PUBSUB_EMULATOR")
    candidates = [Path(named)] if named else []
    on_path = shutil.which("cloud-pubsub-emulator")
    if on_path:
        candidates.append(Path(on_path))
    candidates.append(DEBIAN_LAUNCHER)
    gcloud = shutil.which("gcloud")
    if gcloud:
        root = Path(gcloud).resolve().parents[1]
        candidates.append(root / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator")
    launcher = next((c for c in candidates if c.is_file()), None)
    if launcher is None:
        return None, (
            f"the Pub/Sub emulator is not installed (the Debian package {PACKAGE}, from Google's "
            "Cloud SDK apt repository, or SERVER_HARDENING_PUBSUB_EMULATOR=<launcher>)"
        )
    if shutil.which("java") is None:
        return None, "the Pub/Sub emulator needs Java 17 or later (`java` is not on PATH)"
    return launcher, ""


def require_launcher() -> Path:
    launcher, why = find_launcher()
    if launcher is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)
    return launcher


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PubSubEmulator:
    """One emulator process; ``host`` is what ``PUBSUB_EMULATOR_HOST`` takes."""

    def __init__(self, launcher: Path) -> None:
        self.launcher = launcher
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.data = tempfile.TemporaryDirectory(prefix="pubsub-emulator-")
        self.log = Path(self.data.name) / "emulator.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PubSubEmulator:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(self.launcher), "--host=127.0.0.1", f"--port={self.port}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data.name,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Pub/Sub emulator exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Pub/Sub emulator did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # The launcher runs java as its child: end the whole session it leads.
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait(timeout=30)
        self.data.cleanup()
