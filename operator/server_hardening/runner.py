"""``hardening run``: logging, the metrics and health server, the Kubernetes client, then kopf.

One HTTP server on ``--metrics-port`` serves ``/metrics`` (Prometheus), ``/healthz`` (liveness:
fails when the operator's event loop or its kopf task is dead, not only when the process is)
and ``/readyz`` (readiness: kopf has started its watches).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server_hardening import metrics

if TYPE_CHECKING:
    from server_hardening.service import OperatorState

HEARTBEAT_STALE_SECONDS = 30.0


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

    def __init__(self, state: OperatorState | None = None) -> None:
        self.kopf_thread: threading.Thread | None = None
        self.state = state

    def alive(self) -> tuple[bool, str]:
        if self.kopf_thread is not None and not self.kopf_thread.is_alive():
            return False, "the kopf operator has stopped"
        rt = self.state
        if rt is None or not rt.ready:
            return True, "starting"
        age = time.monotonic() - rt.heartbeat
        if age > HEARTBEAT_STALE_SECONDS:
            metrics.WATCH_ALIVE.set(0)
            return False, f"event loop silent for {age:.0f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        ok, why = self.alive()
        rt = self.state
        if not ok:
            return ok, why
        if rt is None or not rt.ready:
            return False, "starting"
        return (True, "ok") if rt.reconciling else (False, "catching up with the resources")


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
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
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

    from server_hardening import handlers  # noqa: F401 - registers the handlers with kopf
    from server_hardening.service import OperatorState
    from server_hardening.targets.factory import LiveTargets
    from server_hardening.targets.kubernetes import ResourceClient

    configure_logging(args.log_format, args.verbose)
    api = _kube_api(args.kubeconfig)
    state = OperatorState(
        factory=LiveTargets(api, recorder=metrics.recorder_for),
        resources=ResourceClient(api),
        kubeconfig=args.kubeconfig,
        clusterwide=bool(args.all_namespaces),
        release_timeout=float(args.release_timeout),
    )
    health = Health(state)
    server = serve_http(args.metrics_host, args.metrics_port, health)
    logging.getLogger("server_hardening").info(
        "metrics and health on http://%s:%d", args.metrics_host, server.server_port
    )
    stop = threading.Event()
    kwargs: dict[str, Any] = {"stop_flag": stop, "memo": kopf.Memo(state=state)}
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

    def run() -> None:
        asyncio.run(kopf.operator(**kwargs))

    thread = threading.Thread(target=run, name="kopf", daemon=True)
    health.kopf_thread = thread
    thread.start()
    try:
        while thread.is_alive():
            thread.join(timeout=1.0)
    except KeyboardInterrupt:
        stop.set()
        thread.join(timeout=30)
    server.shutdown()
    return 0
