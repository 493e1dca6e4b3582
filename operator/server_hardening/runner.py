"""``hardening run``: logging, the metrics and health server, the Kubernetes client, then kopf.

One HTTP server on ``--metrics-port`` serves ``/metrics`` (Prometheus), ``/healthz`` (liveness:
fails when the operator's event loop or its kopf task is dead, not only when the process is)
and ``/readyz`` (readiness: kopf has started its watches).

As a pod's PID 1 the process gets what a container runtime sends:

- its kopf identity comes from the pod's name (``POD_NAME``, set by the chart), else from the
  host name, never from the user name: the image's uid has no passwd entry;
- SIGTERM (what the kubelet sends) and SIGINT stop kopf gracefully, so it withdraws its peering
  record and an HA standby takes over at once instead of when the record expires;
- a fatal error (kopf stopped without being asked to) exits non-zero with the reason on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server_hardening import metrics

HEARTBEAT_STALE_SECONDS = 30.0
#: How long a stop may take before giving up on kopf (the chart's grace period is 30 s).
STOP_GRACE_SECONDS = 20.0
#: Exit codes: a fatal error, and a stop that did not complete within STOP_GRACE_SECONDS.
EXIT_FATAL = 1
EXIT_STOP_TIMEOUT = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("server_hardening")


def operator_identity(environ: Mapping[str, str] | None = None) -> str:
    """This process's name among kopf peers.

    kopf's own default (``getpass.getuser()``) raises KeyError for a uid without a passwd entry,
    which is what a pod running the image as uid 65532 has. A pod's name is unique while the pod
    lives, so it identifies the peer (kopf's ``POD_ID`` wins when set); outside a pod, the host
    name, pid and start time do.
    """
    env = os.environ if environ is None else environ
    for variable in ("POD_ID", "POD_NAME"):
        if env.get(variable):
            return env[variable]
    started = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return f"{socket.gethostname()}/{os.getpid()}/{started}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(fmt: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("kubernetes", "urllib3", "botocore", "boto3", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Health:
    """What /healthz and /readyz answer from."""

    def __init__(self) -> None:
        self.kopf_thread: threading.Thread | None = None

    def alive(self) -> tuple[bool, str]:
        from server_hardening import handlers

        if self.kopf_thread is not None and not self.kopf_thread.is_alive():
            return False, "the kopf operator has stopped"
        rt = handlers.RUNTIME
        if rt is None or not rt.ready:
            return True, "starting"
        age = time.monotonic() - rt.heartbeat
        if age > HEARTBEAT_STALE_SECONDS:
            metrics.WATCH_ALIVE.set(0)
            return False, f"event loop silent for {age:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        from server_hardening import handlers

        ok, why = self.alive()
        rt = handlers.RUNTIME
        if not ok:
            return ok, why
        return (True, "ok") if rt is not None and rt.ready else (False, "starting")


def serve_http(host: str, port: int, health: Health) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body = generate_latest(metrics.REGISTRY)
                self._send(200, body, CONTENT_TYPE_LATEST)
                return
            if self.path.startswith("/healthz"):
                ok, why = health.alive()
            elif self.path.startswith("/readyz"):
                ok, why = health.ready()
            else:
                self._send(404, b"not found\n", "text/plain")
                return
            self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    # A short poll interval: shutdown() at every stop waits up to one interval.
    serve = lambda: server.serve_forever(poll_interval=0.1)  # noqa: E731
    threading.Thread(target=serve, name="metrics-http", daemon=True).start()
    return server


def _kube_api(kubeconfig: str | None) -> Any:
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    from server_hardening import handlers
    from server_hardening.targets.factory import LiveTargets
    from server_hardening.targets.kubernetes import ResourceClient

    configure_logging(args.log_format, args.verbose)
    api = _kube_api(args.kubeconfig)
    handlers.RUNTIME = handlers.Runtime(
        factory=LiveTargets(api, recorder=metrics.recorder_for),
        resources=ResourceClient(api),
        kubeconfig=args.kubeconfig,
        clusterwide=bool(args.all_namespaces),
        release_timeout=float(args.release_timeout),
    )
    health = Health()
    server = serve_http(args.metrics_host, args.metrics_port, health)
    log.info("metrics and health on http://%s:%d", args.metrics_host, server.server_port)
    stop = threading.Event()
    kwargs: dict[str, Any] = {"stop_flag": stop, "identity": operator_identity()}
    if args.all_namespaces:
        kwargs["clusterwide"] = True
    else:
        namespaces = args.namespace or [os.environ.get("POD_NAMESPACE", "default")]
        kwargs["namespaces"] = namespaces
    if args.peering:
        kwargs["peering_name"] = args.peering
        kwargs["priority"] = args.priority
    else:
        kwargs["standalone"] = True

    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(kopf.operator(**kwargs))
        except BaseException as exc:  # reported by the main thread, which exits non-zero
            failure.append(exc)

    thread = threading.Thread(target=run, name="kopf", daemon=True)
    health.kopf_thread = thread
    log.info("kopf identity %s", kwargs["identity"])
    with _stop_on_signals(stop):
        thread.start()
        while thread.is_alive() and not stop.is_set():
            thread.join(timeout=1.0)
        if stop.is_set():
            thread.join(timeout=STOP_GRACE_SECONDS)
    server.shutdown()
    return _exit_code(stop, thread, failure)


class _stop_on_signals:  # noqa: N801 - used as a context manager
    """SIGTERM and SIGINT set ``stop`` (kopf then stops gracefully); a second one exits at once.

    Python's default for SIGTERM is to die without cleanup, and as PID 1 in a container the
    kernel drops it when no handler is set: either way kopf never withdraws its peering record.
    """

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.previous: dict[int, Any] = {}

    def handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            sys.stderr.write(f"hardening run: {name} again while stopping; exiting now\n")
            sys.stderr.flush()
            os._exit(EXIT_STOP_TIMEOUT)
        log.info("%s received: stopping", name)
        self.stop.set()

    def __enter__(self) -> _stop_on_signals:
        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _exit_code(
    stop: threading.Event, thread: threading.Thread, failure: list[BaseException]
) -> int:
    """0 for a requested stop that completed; otherwise non-zero, with the reason on stderr."""
    if thread.is_alive():
        reason = f"kopf did not stop within {STOP_GRACE_SECONDS:.0f}s of the stop signal"
        code = EXIT_STOP_TIMEOUT
    elif failure:
        exc = failure[0]
        reason = f"kopf stopped on an error: {type(exc).__name__}: {exc}"
        code = EXIT_FATAL
    elif not stop.is_set():
        reason = "kopf stopped although no stop was requested"
        code = EXIT_FATAL
    else:
        log.info("stopped")
        return 0
    if failure:
        log.error("fatal: %s", reason, exc_info=failure[0])
    sys.stderr.write(f"hardening run: fatal: {reason}\n")
    sys.stderr.flush()
    return code
