"""``hardening run``: logging, the metrics and health server, the Kubernetes client, then kopf.

One HTTP server on ``--metrics-port`` serves ``/metrics`` (Prometheus), ``/healthz`` (liveness:
fails when the operator's event loop or its kopf task is dead, not only when the process is, and
when the watches have been down longer than a bound: see :class:`Health`) and ``/readyz``
(readiness: kopf has started its watches, and liveness holds).

As a pod's PID 1 the process gets what a container runtime sends:

- its identity (kopf's, and the Lease holder's) comes from the pod's name (``POD_NAME``, set
  by the chart), else from the host name, never from the user name: the image's uid has no
  passwd entry;
- SIGTERM (what the kubelet sends) and SIGINT stop kopf gracefully, then (with
  ``--leader-elect``) release the Lease, so a standby takes over at once instead of when the
  lease expires;
- a fatal error (kopf stopped without being asked to) exits non-zero with the reason on stderr.

With ``--leader-elect`` (the chart's ``ha.enabled``) several replicas run and one acts: each
runs a leader election on a ``coordination.k8s.io/v1`` Lease (:mod:`server_hardening.elector`,
client-go's semantics and timings). kopf, the watches and the drift checks start only once this
replica holds the Lease; a standby serves /metrics, /healthz and /readyz (ready: a standby is a
healthy replica, so rollouts and PodDisruptionBudgets count it) and writes nothing. Every write
path asks the process's write gate (:mod:`server_hardening.targets.gate`), open only until the
holder's renew deadline; when leadership is lost the process exits at once
(:data:`EXIT_LEADERSHIP_LOST`, as client-go's callers do in ``OnStoppedLeading``), so kopf's
own writes stop with it and the pod restarts as a standby. kopf's peering is never used.

The allocators are tuned and kept from holding freed memory (:mod:`server_hardening.memory`),
so the RSS after a mass converge is what is live, not the converge's high-water mark.
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
import uuid
from collections.abc import Callable, Coroutine, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST

from server_hardening import memory, metrics

if TYPE_CHECKING:
    from server_hardening.elector import LeaderElection
    from server_hardening.service import OperatorState
    from server_hardening.targets.kubeapi import KubeApi

HEARTBEAT_STALE_SECONDS = 30.0
# The watches count as down when the API server has not answered the operator's own
# credentials for this long (SERVER_HARDENING_WATCH_DOWN_SECONDS overrides it).
WATCH_DOWN_SECONDS = 60.0
WATCH_PROBE_EVERY = 5.0
#: How long a stop may take before giving up on kopf (the chart's grace period is 30 s).
STOP_GRACE_SECONDS = 20.0
#: Exit codes: a fatal error, a stop that did not complete within STOP_GRACE_SECONDS, and
#: leadership lost (the Lease not renewed within its renew deadline, or taken by another).
EXIT_FATAL = 1
EXIT_STOP_TIMEOUT = 2
EXIT_LEADERSHIP_LOST = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: How long a stop waits for the election's thread to finish its call before releasing.
RELEASE_JOIN_SECONDS = 5.0
#: How often the metrics and health server looks whether it is asked to stop (see serve_http).
HTTP_POLL_SECONDS = 1.0

log = logging.getLogger("server_hardening")


def operator_identity(environ: Mapping[str, str] | None = None) -> str:
    """This process's name: kopf's identity, the Lease's holder, and in the user agent of its
    API calls (so the API server's audit log says which replica wrote).

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
    """What /healthz and /readyz answer from, and the value of ``server_hardening_watch_alive``.

    Alive means: the kopf task runs, its event loop ticks (a heartbeat every 2 s, stale after
    30 s), and the watches can be up. kopf retries a broken watch forever without saying so,
    so the last point is measured apart: a probe thread asks the API server's ``/readyz`` with
    the operator's own client and credentials every 5 s (what every watch request needs:
    network, TLS, a valid token, a serving API server). When no probe has succeeded for
    ``watch_down_seconds`` (default 60, ``SERVER_HARDENING_WATCH_DOWN_SECONDS``) the watches
    are down: /healthz fails and the gauge is 0 until a probe succeeds again.

    A standby (leader election on, the Lease held by another) is alive while its election
    thread runs and the API server has answered a Lease call within the same bound, and then
    ready too: it is a healthy replica waiting to take over, which a rollout must count (or a
    new standby would never finish rolling out) and a PodDisruptionBudget must too (or a
    drain could never evict either pod). /readyz says ``standby`` and names the leader.
    """

    def __init__(
        self,
        state: OperatorState | None = None,
        watch_down_seconds: float | None = None,
        election: LeaderElection | None = None,
    ) -> None:
        self.kopf_thread: threading.Thread | None = None
        self.state = state
        self.election = election
        env = os.environ.get("SERVER_HARDENING_WATCH_DOWN_SECONDS")
        self.watch_down_seconds = float(
            watch_down_seconds if watch_down_seconds is not None else env or WATCH_DOWN_SECONDS
        )
        self._last_contact = time.monotonic()
        self._probe_error = ""
        self._probing = threading.Event()
        metrics.WATCH_ALIVE.set_function(lambda: 1.0 if self._watch_alive() else 0.0)

    def _watch_alive(self) -> bool:
        rt = self.state
        return rt is not None and rt.ready and self.alive()[0]

    def standing_by(self) -> bool:
        return self.election is not None and self.kopf_thread is None

    def _standby_alive(self) -> tuple[bool, str]:
        election = self.election
        assert election is not None
        if election.thread is not None and not election.thread.is_alive():
            return False, "the leader election has stopped"
        down = time.monotonic() - election.last_contact
        if down > self.watch_down_seconds:
            return False, (
                f"standby: the API server has not answered a Lease call for {down:.0f}s "
                f"(bound {self.watch_down_seconds:.0f}s): {election.error}"
            )
        return True, f"standby: the leader is {election.holder or '(none yet)'}"

    def alive(self) -> tuple[bool, str]:
        if self.standing_by():
            return self._standby_alive()
        if self.kopf_thread is not None and not self.kopf_thread.is_alive():
            return False, "the kopf operator has stopped"
        rt = self.state
        if rt is None or not rt.ready:
            return True, "starting"
        self._start_probe(rt)
        age = time.monotonic() - rt.heartbeat
        if age > HEARTBEAT_STALE_SECONDS:
            return False, f"event loop silent for {age:.0f}s"
        down = time.monotonic() - self._last_contact
        if down > self.watch_down_seconds:
            return False, (
                f"watches down: the API server has not answered for {down:.0f}s "
                f"(bound {self.watch_down_seconds:.0f}s): {self._probe_error}"
            )
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        ok, why = self.alive()
        rt = self.state
        if ok and self.standing_by() and self.election and not self.election.answered:
            return False, "standby: the Lease has not been read yet"
        if not ok or self.standing_by():
            return ok, why
        if rt is None or not rt.ready:
            return False, "starting"
        return (True, "ok") if rt.reconciling else (False, "catching up with the resources")

    def _start_probe(self, rt: Any) -> None:
        if self._probing.is_set():
            return
        self._probing.set()
        self._last_contact = time.monotonic()  # the bound counts from the first probe
        # A client of its own (same configuration, its own connection pool): the probe never
        # competes with the reconciles for a connection, and a probe cut short never hands a
        # half-read connection back to them.
        probe = rt.resources.api.fork()
        threading.Thread(
            target=self._probe_forever, args=(probe,), name="watch-probe", daemon=True
        ).start()

    def _probe_forever(self, probe: KubeApi) -> None:
        while True:
            try:
                # The whole answer is read: a connection goes back to the pool only once
                # nothing of the response is left on it.
                probe.get("/readyz", timeout=WATCH_PROBE_EVERY)
                self._last_contact = time.monotonic()
                self._probe_error = ""
            except Exception as exc:  # any failure to get an answer: network, TLS, 401, 5xx
                first = (str(exc).splitlines() or [""])[0]
                self._probe_error = f"{type(exc).__name__}: {first[:200]}"
            time.sleep(WATCH_PROBE_EVERY)


def serve_http(host: str, port: int, health: Health) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body = metrics.exposition()
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
    # The loop wakes once per poll interval to see whether shutdown() was asked for, which is
    # idle CPU of every operator: 0.15-0.31 % of a core at 0.1 s, 0.04 % at 1 s (measured, an
    # idle server alone). A stop (shutdown() waits for the next wake) takes up to 1 s longer.
    serve = lambda: server.serve_forever(poll_interval=HTTP_POLL_SECONDS)  # noqa: E731
    threading.Thread(target=serve, name="metrics-http", daemon=True).start()
    return server


def kube_api(kubeconfig: str | None, identity: str = "") -> KubeApi:
    """The API client of ``--kubeconfig``, else in-cluster, else the default kubeconfig; its
    user agent names this replica (``identity``).

    Raises :class:`~server_hardening.targets.kubeconfig.KubeConfigError` naming what is wrong."""
    from server_hardening.targets.kubeapi import USER_AGENT, KubeApi
    from server_hardening.targets.kubeconfig import load_credentials

    agent = f"{USER_AGENT} ({identity})" if identity else USER_AGENT
    return KubeApi(load_credentials(kubeconfig), user_agent=agent)


def leader_election(
    args: argparse.Namespace, api: KubeApi, identity: str, namespaces: list[str]
) -> LeaderElection:
    """The election of ``--leader-elect``: the Lease ``--lease-name`` in ``--lease-namespace``
    (else the pod's namespace, else the first watched one, else ``default``), with a client of
    its own that the write gate does not hold back. Its callbacks are set by the caller.
    Raises :class:`~server_hardening.election.TimingError` for timings that cannot work."""
    from server_hardening.election import Elector, LeaseTimings
    from server_hardening.elector import LeaderElection
    from server_hardening.targets.lease import LeaseClient

    timings = LeaseTimings(
        lease_duration=float(args.lease_duration),
        renew_deadline=float(args.renew_deadline),
        retry_period=float(args.retry_period),
    )
    namespace = (
        args.lease_namespace
        or os.environ.get("POD_NAMESPACE")
        or (namespaces[0] if namespaces else "default")
    )
    client = LeaseClient(api.fork(gated=False), namespace, args.lease_name)
    return LeaderElection(
        client,
        Elector(candidate_identity(identity), timings),
        on_started=lambda: None,
        on_lost=_leadership_lost,
    )


def candidate_identity(identity: str) -> str:
    """The Lease holder's name: this replica's identity and a suffix of its own, as
    kube-controller-manager and controller-runtime name theirs. A container restarted in the
    same pod (same pod name) is then a new candidate that waits like any other, instead of
    renewing the Lease its killed predecessor held as if it were its own."""
    return f"{identity}_{uuid.uuid4().hex[:10]}"


def _leadership_lost(why: str) -> None:
    """client-go's callers end the process in OnStoppedLeading; so does this one, at once: kopf's
    own writes stop with it (the write gate is closed already), and the pod restarts as a
    standby."""
    metrics.LEADER.set(0)
    log.error("leader election: lost the Lease: %s; exiting", why)
    sys.stderr.write(f"hardening run: fatal: lost the leader Lease: {why}\n")
    sys.stderr.flush()
    os._exit(EXIT_LEADERSHIP_LOST)


def watched_namespaces(named: list[str]) -> list[str]:
    """``--namespace`` as given, else the pod's own namespace, else ``default``."""
    return named or [os.environ.get("POD_NAMESPACE", "default")]


def run_operator(args: argparse.Namespace) -> int:
    import kopf

    from server_hardening import handlers  # noqa: F401 - registers the handlers with kopf
    from server_hardening.election import TimingError
    from server_hardening.service import OperatorState
    from server_hardening.targets.factory import LiveTargets
    from server_hardening.targets.kubeconfig import KubeConfigError
    from server_hardening.targets.kubernetes import ResourceClient

    memory.tune_allocator()  # before any thread starts
    configure_logging(args.log_format, args.verbose)
    namespaces = [] if args.all_namespaces else watched_namespaces(args.namespace)
    patterns = [ns for ns in namespaces if set(ns) & set("*?[]!")]
    if patterns:
        # kopf would take these as patterns; the operator's own watches need names.
        sys.stderr.write(f"hardening run: --namespace {patterns[0]!r}: a name, not a pattern\n")
        return EXIT_FATAL
    identity = operator_identity()
    election = None
    try:
        api = kube_api(args.kubeconfig, identity)
        if args.leader_elect:
            election = leader_election(args, api, identity, namespaces)
    except (KubeConfigError, TimingError) as exc:
        sys.stderr.write(f"hardening run: {exc}\n")
        return EXIT_FATAL
    state = OperatorState(
        factory=LiveTargets(api, recorder=metrics.recorder_for),
        resources=ResourceClient(api),
        kubeconfig=args.kubeconfig,
        credentials=api.source,
        clusterwide=bool(args.all_namespaces),
        release_timeout=float(args.release_timeout),
        watch_api=api,
        namespaces=tuple(namespaces),
    )
    health = Health(state, election=election)
    server = serve_http(args.metrics_host, args.metrics_port, health)
    log.info("metrics and health on http://%s:%d", args.metrics_host, server.server_port)
    stop = threading.Event()
    kwargs: dict[str, Any] = {
        "stop_flag": stop,
        "memo": kopf.Memo(state=state),
        "identity": identity,
        # One mechanism decides who acts: the Lease (with --leader-elect) or nothing (one
        # replica). kopf's peering would pause and resume on its own, 60 s behind a crash.
        "standalone": True,
    }
    if args.all_namespaces:
        kwargs["clusterwide"] = True
    else:
        kwargs["namespaces"] = namespaces

    threading.Thread(target=memory.upkeep, args=(stop,), name="memory-upkeep", daemon=True).start()
    kopf_run = _KopfRun(lambda: kopf.operator(**kwargs), stop, health)
    log.info("identity %s", identity)
    with _stop_on_signals(stop):
        launched = _supervise(stop, kopf_run, election)
    thread = kopf_run.thread
    if election is not None:
        election.stop(timeout=RELEASE_JOIN_SECONDS)
        if not thread.is_alive():  # kopf has stopped writing: the Lease may go
            election.release()
    server.shutdown()
    return _exit_code(stop, thread, kopf_run.failure, started=launched)


class _KopfRun:
    """kopf's operator on a thread of its own, started at most once, never after a stop."""

    def __init__(
        self,
        operator: Callable[[], Coroutine[Any, Any, Any]],
        stop: threading.Event,
        health: Health,
    ) -> None:
        self.failure: list[BaseException] = []
        self.stop = stop
        self.health = health
        self.lock = threading.Lock()

        def run() -> None:
            try:
                asyncio.run(operator())
            except BaseException as exc:  # reported by the main thread, which exits non-zero
                self.failure.append(exc)

        self.thread = threading.Thread(target=run, name="kopf", daemon=True)

    def start(self) -> None:
        """At once without election; with it, when the Lease is first held (from the
        election's thread)."""
        with self.lock:
            if self.stop.is_set() or self.health.kopf_thread is not None:
                return
            metrics.LEADER.set(1)
            self.health.kopf_thread = self.thread
            self.thread.start()

    def launched(self) -> bool:
        with self.lock:  # after this, a start sees the stop and does nothing
            return self.health.kopf_thread is not None


def _supervise(stop: threading.Event, kopf_run: _KopfRun, election: LeaderElection | None) -> bool:
    """Run until a stop is asked for or kopf ends; then give kopf its grace to stop. Returns
    whether kopf ever started (a standby's never does)."""
    if election is None:
        kopf_run.start()
    else:
        election.on_started = kopf_run.start
        election.start()
    while not stop.is_set() and (kopf_run.health.kopf_thread is None or kopf_run.thread.is_alive()):
        stop.wait(1.0)
    launched = kopf_run.launched()
    if election is not None:
        election.stand_down()  # a standby takes over once released: nothing more from here
    if launched:
        kopf_run.thread.join(timeout=STOP_GRACE_SECONDS)
    return launched


class _stop_on_signals:  # noqa: N801 - used as a context manager
    """SIGTERM and SIGINT set ``stop`` (kopf then stops gracefully); a second one exits at once.

    Python's default for SIGTERM is to die without cleanup, and as PID 1 in a container the
    kernel drops it when no handler is set: either way the Lease would never be released.
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
    stop: threading.Event,
    thread: threading.Thread,
    failure: list[BaseException],
    *,
    started: bool = True,
) -> int:
    """0 for a requested stop that completed (a standby's too: kopf never ``started``);
    otherwise non-zero, with the reason on stderr."""
    if not started and stop.is_set():
        log.info("stopped (standby)")
        return 0
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
