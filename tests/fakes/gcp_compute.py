"""A local fake of the Compute Engine v1 firewall API (there is no emulator for it).

It serves the REST endpoints the operator uses, as the v1 REST reference documents them, on
``127.0.0.1:<random port>``, so the real ``google.cloud.compute_v1`` clients (REST transport) can
talk to it with ``client_options={"api_endpoint": fake.url}`` and anonymous credentials:

- ``GET/POST   /compute/v1/projects/{project}/global/firewalls``  (list: ``filter``,
  ``maxResults`` 0-500, ``pageToken``, ``returnPartialSuccess``; insert: ``requestId``)
- ``GET/PATCH/PUT/DELETE /compute/v1/projects/{project}/global/firewalls/{name}``
- ``GET  /compute/v1/projects/{project}/global/networks/{network}/getEffectiveFirewalls``
  (the network's VPC rules and the firewall policies seeded with ``seed_firewall_policy``,
  hierarchical and network, as Google evaluates them before the VPC rules)
- ``GET  /compute/v1/projects/{project}/global/operations/{operation}``
- ``POST /compute/v1/projects/{project}/global/operations/{operation}/wait``
- ``GET  /compute/v1/projects/{project}`` (for the FIREWALLS quota)

Writes answer ``compute#operation`` objects; by default they come back ``DONE`` (the change is
already applied), with ``pending_operations=True`` they come back ``RUNNING`` and are ``DONE`` on
the next get/wait. With ``operation_seconds=s`` an operation is ``PENDING`` for its first tenth,
then ``RUNNING``, and ``DONE`` ``s`` seconds after the write; the change takes effect only then (a
list in between does not show it), as on the real API. ``globalOperations.wait`` blocks until the
operation is ``DONE`` or ``wait_deadline_seconds`` (the API's 2 minutes by default) have passed,
then answers the current state, which may still be ``RUNNING``; ``globalOperations.get`` never
blocks. Errors use the API's JSON error shape (``error.code``, ``error.message``,
``error.errors[].reason``): 400 ``invalid``/``resourceNotReady``, 404 ``notFound``, 409
``alreadyExists``, 403 ``forbidden``/``quotaExceeded``, 429 ``rateLimitExceeded``, 503
``backendError``. :meth:`FakeCompute.not_ready` answers 400 ``resourceNotReady`` (the network is
busy with another change); :meth:`FakeCompute.fail_operations` makes the next operations end
``DONE`` with an ``error`` (``RESOURCE_NOT_READY`` by default) and nothing applied.

Test hooks: :attr:`FakeCompute.log` (every request: method, path, operation name such as
``firewalls.insert``), :meth:`FakeCompute.fail` (fault injection for the next N requests of an
operation), :attr:`FakeCompute.completed` (when each operation finished, monotonic), :attr:`FakeCompute.max_outstanding` (the most operations running at once), :meth:`FakeCompute.seed` / :meth:`FakeCompute.seed_default_network` (put rules in
place without going through the API), :attr:`FakeCompute.firewall_quota`.

What it does not model: IAM (every request is allowed unless a fault says otherwise), eventual
consistency, the newer filter syntax beyond ``=``/``!=``, ``orderBy``, ``logConfig`` metadata
validation, service-account fields, firewall policies, and real packet filtering (see
``tests/truth/gcp_eval.py`` for the semantics).
"""

from __future__ import annotations

import base64
import copy
import ipaddress
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

SELF_LINK_BASE = "https://www.googleapis.com/compute/v1"
NAME_RE = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
NAME_REGEX_TEXT = "(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)"
TAG_RE = re.compile(r"^[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?$")
PROTOCOLS = {"tcp", "udp", "icmp", "esp", "ah", "sctp", "ipip", "all"}
PORTED = {"tcp", "udp", "sctp"}
FIREWALL_FIELDS = {
    "kind",
    "id",
    "creationTimestamp",
    "name",
    "description",
    "network",
    "priority",
    "sourceRanges",
    "destinationRanges",
    "sourceTags",
    "targetTags",
    "sourceServiceAccounts",
    "targetServiceAccounts",
    "allowed",
    "denied",
    "direction",
    "logConfig",
    "disabled",
    "selfLink",
    "params",
}
OUTPUT_ONLY = {"kind", "id", "creationTimestamp", "selfLink"}
LIST_FIELDS = (
    "sourceRanges",
    "destinationRanges",
    "sourceTags",
    "targetTags",
    "sourceServiceAccounts",
    "targetServiceAccounts",
)
REQUEST_ID_WINDOW = 3600  # the API keeps request IDs "for at least 60 minutes"


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
            }
        }


@dataclass
class LoggedRequest:
    method: str
    path: str
    operation: str
    query: dict[str, str] = field(default_factory=dict)
    status: int = 0
    at: float = field(default_factory=time.monotonic)


@dataclass
class Completion:
    """An operation that finished: its name, type (``insert``...), firewall, and when."""

    operation: str
    kind: str
    firewall: str
    at: float
    failed: bool = False


@dataclass
class _Scheduled:
    """A write accepted but not yet in effect: ``apply`` runs when the operation is DONE."""

    project: str
    op_name: str
    due: float
    apply: Any
    failure: tuple[str, str] | None = None


@dataclass
class Fault:
    operation: str
    status: int
    reason: str
    message: str
    remaining: int
    after: bool = False  # apply the request, then answer the error (a lost response)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _invalid(field_name: str, value: Any, why: str = "") -> ApiError:
    text = f"Invalid value for field '{field_name}': '{value}'."
    if why:
        text += f" {why}"
    return ApiError(400, "invalid", text)


def network_url(project: str, network: str) -> str:
    """The API's canonical form of a network reference (what it stores and returns)."""
    for prefix in (
        "https://www.googleapis.com/compute/v1/",
        "https://compute.googleapis.com/compute/v1/",
    ):
        network = network.removeprefix(prefix)
    if network.startswith("projects/"):
        return f"{SELF_LINK_BASE}/{network}"
    if network.startswith("global/networks/"):
        return f"{SELF_LINK_BASE}/projects/{project}/{network}"
    return f"{SELF_LINK_BASE}/projects/{project}/global/networks/{network}"


# ---------------------------------------------------------------------------------------------
# The list filter: `field eq regex`, `field ne regex`, `(a) (b)` (AND), `field = "x"`, `!=`.

_TERM = re.compile(
    r"""^\s*(?P<field>[A-Za-z][A-Za-z0-9_.]*)\s*(?P<op>eq|ne|=|!=)\s*
        (?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s()]+))\s*$""",
    re.VERBOSE,
)


def _parse_filter(text: str) -> list[tuple[str, str, str]]:
    text = text.strip()
    if not text:
        return []
    parts = re.findall(r"\(([^()]*)\)", text) if text.startswith("(") else [text]
    if text.startswith("(") and re.sub(r"\([^()]*\)", "", text).strip():
        raise _invalid("filter", text, "Only AND of parenthesised terms is supported.")
    terms = []
    for part in parts:
        match = _TERM.match(part)
        if not match:
            raise _invalid("filter", text)
        value = match["dq"] if match["dq"] is not None else match["sq"]
        if value is None:
            value = match["bare"]
        terms.append((match["field"], match["op"], value))
    return terms


def _matches(item: dict[str, Any], terms: list[tuple[str, str, str]]) -> bool:
    for name, op, value in terms:
        actual = item.get(name)
        text = (
            ""
            if actual is None
            else str(actual).lower()
            if isinstance(actual, bool)
            else str(actual)
        )
        if op in ("eq", "ne"):
            try:
                hit = re.fullmatch(value, text) is not None
            except re.error:
                raise _invalid("filter", value) from None
        else:
            hit = text == value
        negate = op in ("ne", "!=")
        if hit == negate:
            return False
    return True


# ---------------------------------------------------------------------------------------------


class FakeCompute:
    """The fake API's state and its HTTP server. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        *,
        pending_operations: bool = False,
        firewall_quota: int = 200,
        operation_seconds: float = 0.0,
        wait_deadline_seconds: float = 120.0,
    ) -> None:
        self.pending_operations = pending_operations
        self.firewall_quota = firewall_quota
        self.operation_seconds = operation_seconds
        self.wait_deadline_seconds = wait_deadline_seconds
        self.completed: list[Completion] = []
        self.max_outstanding = 0
        self._scheduled: list[_Scheduled] = []
        self._operation_failures: list[list[Any]] = []
        self.firewalls: dict[tuple[str, str], dict[str, Any]] = {}
        self.firewall_policies: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.operations: dict[tuple[str, str], dict[str, Any]] = {}
        self.request_ids: dict[tuple[str, str], str] = {}
        self.log: list[LoggedRequest] = []
        self.faults: list[Fault] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(1_000_000_000_000_000_001, 7919)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(_Handler):
            state = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeCompute:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- test hooks --------------------------------------------------------------------------

    def fail(
        self,
        operation: str,
        *,
        status: int,
        reason: str,
        message: str = "",
        times: int = 1,
        after: bool = False,
    ) -> None:
        """The next ``times`` requests of ``operation`` (e.g. ``firewalls.insert``) answer this.
        With ``after`` the request is carried out first and only its answer is lost."""
        with self._lock:
            self.faults.append(Fault(operation, status, reason, message or reason, times, after))

    def throttle(self, operation: str, times: int = 1) -> None:
        self.fail(
            operation,
            status=429,
            reason="rateLimitExceeded",
            message="Rate Limit Exceeded",
            times=times,
        )

    def unavailable(self, operation: str, times: int = 1) -> None:
        self.fail(
            operation,
            status=503,
            reason="backendError",
            message="The service is currently unavailable.",
            times=times,
        )

    def deny_permission(self, operation: str, permission: str, resource: str = "") -> None:
        self.fail(
            operation,
            status=403,
            reason="forbidden",
            message=f"Required '{permission}' permission for '{resource or 'projects/-'}'",
            times=1_000_000,
        )

    def not_ready(self, operation: str, times: int = 1, network: str = "circleci") -> None:
        """400 ``resourceNotReady``: the network is busy (e.g. GKE writing its own rules)."""
        self.fail(
            operation,
            status=400,
            reason="resourceNotReady",
            message=f"The resource 'projects/-/global/networks/{network}' is not ready",
            times=times,
        )

    def fail_operations(
        self,
        kind: str,
        *,
        times: int = 1,
        code: str = "RESOURCE_NOT_READY",
        message: str = "The resource 'projects/-/global/networks/circleci' is not ready",
    ) -> None:
        """The next ``times`` operations of ``kind`` (``insert``, ``update``, ``delete``) end
        ``DONE`` with ``error.errors[{code, message}]``, the change not applied."""
        with self._lock:
            self._operation_failures.append([kind, times, code, message])

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()
            self._operation_failures.clear()

    def settle(self) -> None:
        """Finish every operation that is due (called before every request and read)."""
        with self._lock:
            now = time.monotonic()
            due = [s for s in self._scheduled if s.due <= now]
            for item in sorted(due, key=lambda s: s.due):
                self._scheduled.remove(item)
                self._finish(item, now)

    def _finish(self, item: _Scheduled, now: float) -> None:
        op = self.operations[(item.project, item.op_name)]
        if item.failure is None:
            item.apply()
        else:
            code, message = item.failure
            op["error"] = {"errors": [{"code": code, "message": message}]}
            op["httpErrorStatusCode"] = 400
            op["httpErrorMessage"] = "BAD REQUEST"
        op.update(status="DONE", progress=100, endTime=_now())
        self.completed.append(
            Completion(
                item.op_name,
                op["operationType"],
                op["targetLink"].rsplit("/", 1)[-1],
                now,
                failed=item.failure is not None,
            )
        )

    def seed(self, project: str, body: dict[str, Any]) -> dict[str, Any]:
        """Store a firewall as if another client had inserted it (validated, no log entry)."""
        with self._lock:
            stored = self._validated(project, body, creating=True)
            self.firewalls[(project, stored["name"])] = stored
            return copy.deepcopy(stored)

    def seed_firewall_policy(self, project: str, network: str, policy: dict[str, Any]) -> None:
        """Associate a firewall policy (``{"name", "type": "HIERARCHY"|"NETWORK", "rules":
        [...]}``, the REST shape) with a network, as an organisation or project admin would."""
        with self._lock:
            self.firewall_policies.setdefault((project, network), []).append(copy.deepcopy(policy))

    def seed_default_network(self, project: str, network: str = "default") -> None:
        """The rules GCP creates with an auto-mode network named ``default``."""
        net = f"global/networks/{network}"
        self.seed(
            project,
            {
                "name": f"{network}-allow-internal",
                "description": "Allow internal traffic on the default network",
                "network": net,
                "priority": 65534,
                "sourceRanges": ["10.128.0.0/9"],
                "allowed": [
                    {"IPProtocol": "tcp", "ports": ["0-65535"]},
                    {"IPProtocol": "udp", "ports": ["0-65535"]},
                    {"IPProtocol": "icmp"},
                ],
                "direction": "INGRESS",
            },
        )
        for name, allowed in (
            ("ssh", [{"IPProtocol": "tcp", "ports": ["22"]}]),
            ("rdp", [{"IPProtocol": "tcp", "ports": ["3389"]}]),
            ("icmp", [{"IPProtocol": "icmp"}]),
        ):
            self.seed(
                project,
                {
                    "name": f"{network}-allow-{name}",
                    "description": f"Allow {name.upper()} from anywhere",
                    "network": net,
                    "priority": 65534,
                    "sourceRanges": ["0.0.0.0/0"],
                    "allowed": allowed,
                    "direction": "INGRESS",
                },
            )

    def edit(self, project: str, name: str, **changes: Any) -> None:
        """Change a stored firewall behind the operator's back (drift)."""
        with self._lock:
            current = copy.deepcopy(self.firewalls[(project, name)])
            current.update(changes)
            stored = self._validated(project, current, creating=False)
            stored["id"] = self.firewalls[(project, name)]["id"]
            stored["creationTimestamp"] = self.firewalls[(project, name)]["creationTimestamp"]
            self.firewalls[(project, name)] = stored

    def remove(self, project: str, name: str) -> None:
        with self._lock:
            del self.firewalls[(project, name)]

    def rules(self, project: str) -> dict[str, dict[str, Any]]:
        self.settle()
        with self._lock:
            return {n: copy.deepcopy(b) for (p, n), b in self.firewalls.items() if p == project}

    def calls(self, operation: str | None = None) -> list[str]:
        """Operation names of the logged requests (optionally only one kind)."""
        return [r.operation for r in self.log if operation is None or r.operation == operation]

    def writes(self) -> list[LoggedRequest]:
        return [
            r for r in self.log if r.method not in ("GET",) and not r.operation.endswith("wait")
        ]

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()

    # -- the API -----------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        path = split.path
        operation, params = _route(method, path)
        entry = LoggedRequest(method, path, operation, query)
        self.settle()
        if operation == "globalOperations.wait":
            self._block_until_done(params)
        with self._lock:
            self.log.append(entry)
            try:
                if operation == "unknown":
                    raise ApiError(404, "notFound", f"The requested URL {path} was not found.")
                self._fault(operation, after=False)
                payload = self._decode(body) if method in ("POST", "PATCH", "PUT") else {}
                status, out = self._dispatch(operation, params, query, payload)
                self._fault(operation, after=True)
            except ApiError as err:
                status, out = err.status, err.body()
            entry.status = status
            return status, out

    def _block_until_done(self, params: dict[str, str]) -> None:
        """``wait``: hold the request until the operation is DONE or the deadline passes."""
        key = (params.get("project", ""), params.get("operation", ""))
        deadline = time.monotonic() + self.wait_deadline_seconds
        while True:
            with self._lock:
                pending = [s for s in self._scheduled if (s.project, s.op_name) == key]
                if not pending or pending[0].due == float("inf"):
                    return
                due = pending[0].due
            now = time.monotonic()
            if now >= deadline:
                return
            time.sleep(max(0.0, min(due, deadline) - now))
            self.settle()

    def _fault(self, operation: str, *, after: bool) -> None:
        for fault in self.faults:
            if fault.operation == operation and fault.remaining > 0 and fault.after == after:
                fault.remaining -= 1
                raise ApiError(fault.status, fault.reason, fault.message)

    @staticmethod
    def _decode(body: bytes) -> dict[str, Any]:
        if not body:
            return {}
        try:
            out = json.loads(body)
        except ValueError:
            raise ApiError(400, "parseError", "Parse Error") from None
        if not isinstance(out, dict):
            raise ApiError(400, "parseError", "Parse Error")
        return out

    def _dispatch(  # noqa: PLR0911 - one answer per route
        self,
        operation: str,
        params: dict[str, str],
        query: dict[str, str],
        payload: dict[str, Any],
    ) -> tuple[int, dict[str, Any]]:
        project = params["project"]
        if operation == "projects.get":
            return 200, self._project(project)
        if operation == "firewalls.list":
            return 200, self._list(project, query)
        if operation == "networks.getEffectiveFirewalls":
            network = params["network"]
            listed = self._list(project, {"filter": f'network eq ".*/global/networks/{network}$"'})
            return 200, {
                "firewalls": listed.get("items", []),
                "firewallPolicys": copy.deepcopy(
                    self.firewall_policies.get((project, network), [])
                ),
            }
        if operation == "firewalls.get":
            return 200, copy.deepcopy(self._get(project, params["name"]))
        if operation in ("globalOperations.get", "globalOperations.wait"):
            op = self.operations.get((project, params["operation"]))
            if op is None:
                raise ApiError(
                    404,
                    "notFound",
                    f"The resource 'projects/{project}/global/operations/"
                    f"{params['operation']}' was not found",
                )
            key = (project, params["operation"])
            asked = [s for s in self._scheduled if (s.project, s.op_name) == key]
            if asked and asked[0].due == float("inf"):
                self._scheduled.remove(asked[0])
                self._finish(asked[0], time.monotonic())
            elif op["status"] == "PENDING" and time.monotonic() >= op["_running_at"]:
                op.update(status="RUNNING", progress=10)
            return 200, _public(op)
        request_id = query.get("requestId", "")
        if request_id:
            try:
                uuid.UUID(request_id)
            except ValueError:
                raise _invalid("requestId", request_id, "Must be a UUID.") from None
            seen = self.request_ids.get((project, request_id))
            if seen is not None:
                return 200, _public(self.operations[(project, seen)])
        if operation == "firewalls.insert":
            op = self._insert(project, payload)
        elif operation == "firewalls.delete":
            op = self._delete(project, params["name"])
        elif operation in ("firewalls.patch", "firewalls.update"):
            op = self._modify(
                project, params["name"], payload, replace=operation.endswith("update")
            )
        else:  # pragma: no cover - _route knows no other operations
            raise ApiError(404, "notFound", operation)
        if request_id:
            self.request_ids[(project, request_id)] = op["name"]
        return 200, _public(op)

    def _project(self, project: str) -> dict[str, Any]:
        usage = sum(1 for (p, _) in self.firewalls if p == project)
        return {
            "kind": "compute#project",
            "id": str(abs(hash(project)) % 10**18),
            "name": project,
            "selfLink": f"{SELF_LINK_BASE}/projects/{project}",
            "quotas": [
                {"metric": "FIREWALLS", "limit": float(self.firewall_quota), "usage": float(usage)},
                {"metric": "NETWORKS", "limit": 15.0, "usage": 1.0},
            ],
        }

    def _get(self, project: str, name: str) -> dict[str, Any]:
        found = self.firewalls.get((project, name))
        if found is None:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{project}/global/firewalls/{name}' was not found",
            )
        return found

    def _list(self, project: str, query: dict[str, str]) -> dict[str, Any]:
        terms = _parse_filter(query.get("filter", ""))
        try:
            max_results = int(query.get("maxResults", "500"))
        except ValueError:
            raise _invalid("maxResults", query["maxResults"]) from None
        if not 0 <= max_results <= 500:
            raise _invalid("maxResults", max_results, "Must be between 0 and 500.")
        if max_results == 0:
            max_results = 500
        offset = 0
        token = query.get("pageToken", "")
        if token:
            try:
                offset = int(base64.urlsafe_b64decode(token.encode()).decode().split(":")[1])
            except (ValueError, IndexError):
                raise _invalid("pageToken", token) from None
        items = [
            copy.deepcopy(body)
            for (p, name), body in sorted(self.firewalls.items())
            if p == project and _matches(body, terms)
        ]
        page = items[offset : offset + max_results]
        out: dict[str, Any] = {
            "kind": "compute#firewallList",
            "id": f"projects/{project}/global/firewalls",
            "selfLink": f"{SELF_LINK_BASE}/projects/{project}/global/firewalls",
        }
        if page:
            out["items"] = page
        if offset + max_results < len(items):
            out["nextPageToken"] = base64.urlsafe_b64encode(
                f"page:{offset + max_results}".encode()
            ).decode()
        return out

    def _validated(self, project: str, body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        unknown = set(body) - FIREWALL_FIELDS
        if unknown:
            name = sorted(unknown)[0]
            raise ApiError(
                400,
                "invalid",
                f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.',
            )
        out = {k: copy.deepcopy(v) for k, v in body.items() if k not in OUTPUT_ONLY}
        name = out.get("name", "")
        if not name:
            raise ApiError(400, "required", "Required field 'resource.name' not specified")
        if not NAME_RE.match(name):
            raise _invalid("resource.name", name, f"Must be a match of regex '{NAME_REGEX_TEXT}'")
        out["network"] = network_url(project, out.get("network") or "default")
        direction = out.setdefault("direction", "INGRESS")
        if direction not in ("INGRESS", "EGRESS"):
            raise _invalid("resource.direction", direction)
        priority = out.setdefault("priority", 1000)
        if not isinstance(priority, int) or not 0 <= priority <= 65535:
            raise _invalid("resource.priority", priority, "Must be between 0 and 65535.")
        description = out.get("description", "")
        if len(description) > 2048:
            raise _invalid("resource.description", description[:20] + "...", "Too long.")
        allowed, denied = out.get("allowed") or [], out.get("denied") or []
        if allowed and denied:
            raise _invalid("resource.denied", "", "Cannot specify both allowed and denied.")
        if not allowed and not denied:
            raise ApiError(
                400, "required", "Required field 'resource.allowed' or 'resource.denied' not set"
            )
        key = "allowed" if allowed else "denied"
        for i, entry in enumerate(allowed or denied):
            protocol = str(entry.get("IPProtocol", ""))
            if set(entry) - {"IPProtocol", "ports"}:
                raise _invalid(f"resource.{key}[{i}]", entry)
            if protocol.lower() not in PROTOCOLS and not protocol.isdigit():
                raise _invalid(f"resource.{key}[{i}].IPProtocol", protocol)
            for port in entry.get("ports") or []:
                if protocol.lower() not in PORTED:
                    raise _invalid(
                        f"resource.{key}[{i}].ports", port, "Ports need tcp, udp or sctp."
                    )
                if not re.fullmatch(r"\d{1,5}(-\d{1,5})?", str(port)):
                    raise _invalid(f"resource.{key}[{i}].ports[]", port)
                bounds = [int(b) for b in str(port).split("-")]
                if bounds[-1] > 65535 or bounds[0] > bounds[-1]:
                    raise _invalid(f"resource.{key}[{i}].ports[]", port)
        if direction == "EGRESS" and (out.get("sourceTags") or out.get("sourceServiceAccounts")):
            raise _invalid("resource.sourceTags", out.get("sourceTags"), "Not allowed for EGRESS.")
        if direction == "INGRESS" and not (
            out.get("sourceRanges") or out.get("sourceTags") or out.get("sourceServiceAccounts")
        ):
            # The API documents one of them as needed (gcloud fills in 0.0.0.0/0 itself).
            raise ApiError(
                400,
                "required",
                "Required field 'resource.sourceRanges' not specified: an INGRESS rule needs "
                "sourceRanges, sourceTags or sourceServiceAccounts",
            )
        for ranges_field in ("sourceRanges", "destinationRanges"):
            versions = set()
            for value in out.get(ranges_field) or []:
                try:
                    versions.add(ipaddress.ip_network(value, strict=False).version)
                except ValueError:
                    raise _invalid(f"resource.{ranges_field}[]", value) from None
            if len(versions) > 1:
                raise _invalid(
                    f"resource.{ranges_field}", "", "Cannot mix IPv4 and IPv6 ranges in one rule."
                )
        for tag_field in ("sourceTags", "targetTags"):
            for tag in out.get(tag_field) or []:
                if not TAG_RE.match(tag):
                    raise _invalid(f"resource.{tag_field}[]", tag)
        for list_field in LIST_FIELDS:
            if list_field in out and not out[list_field]:
                del out[list_field]  # the API omits empty lists
        out.setdefault("disabled", False)
        out.setdefault("logConfig", {"enable": False})
        out.setdefault("description", "")
        if not out["description"]:
            del out["description"]
        out["kind"] = "compute#firewall"
        out["selfLink"] = f"{SELF_LINK_BASE}/projects/{project}/global/firewalls/{name}"
        if creating:
            out["id"] = str(next(self._ids))
            out["creationTimestamp"] = _now()
        return out

    def _operation(
        self, project: str, kind: str, name: str, target_id: str, apply: Any
    ) -> dict[str, Any]:
        """A write's operation. ``apply`` makes the change: now (DONE at once), or when the
        operation finishes (``pending_operations`` / ``operation_seconds``)."""
        op_name = f"operation-{int(datetime.now(UTC).timestamp() * 1000)}-{uuid.uuid4()}"
        now = _now()
        failure = self._take_operation_failure(kind)
        latency = self.operation_seconds
        deferred = self.pending_operations or latency > 0
        started = time.monotonic()
        op: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(next(self._ids)),
            "name": op_name,
            "operationType": kind,
            "targetLink": f"{SELF_LINK_BASE}/projects/{project}/global/firewalls/{name}",
            "targetId": target_id,
            "status": "DONE",
            "user": "fake@example.iam.gserviceaccount.com",
            "progress": 100,
            "insertTime": now,
            "startTime": now,
            "selfLink": f"{SELF_LINK_BASE}/projects/{project}/global/operations/{op_name}",
            "_running_at": started + latency / 10,
        }
        self.operations[(project, op_name)] = op
        # pending_operations without a latency: DONE when next asked about (get or wait).
        due = started + latency if latency > 0 else float("inf")
        item = _Scheduled(project, op_name, due, apply, failure)
        if not deferred:
            self._finish(item, started)
            return op
        op.update(status="PENDING" if latency > 0 else "RUNNING", progress=0)
        op.pop("endTime", None)
        self._scheduled.append(item)
        self.max_outstanding = max(self.max_outstanding, len(self._scheduled))
        return op

    def _take_operation_failure(self, kind: str) -> tuple[str, str] | None:
        for entry in self._operation_failures:
            if entry[0] == kind and entry[1] > 0:
                entry[1] -= 1
                return str(entry[2]), str(entry[3])
        return None

    def _pending_names(self, project: str) -> set[str]:
        return {
            self.operations[(s.project, s.op_name)]["targetLink"].rsplit("/", 1)[-1]
            for s in self._scheduled
            if s.project == project
        }

    def _insert(self, project: str, payload: dict[str, Any]) -> dict[str, Any]:
        stored = self._validated(project, payload, creating=True)
        name = stored["name"]
        if (project, name) in self.firewalls or name in self._pending_names(project):
            raise ApiError(
                409,
                "alreadyExists",
                f"The resource 'projects/{project}/global/firewalls/{name}' already exists",
            )
        usage = sum(1 for (p, _) in self.firewalls if p == project)
        if usage >= self.firewall_quota:
            raise ApiError(
                403,
                "quotaExceeded",
                f"Quota 'FIREWALLS' exceeded.  Limit: {float(self.firewall_quota)} globally.",
            )

        def apply() -> None:
            self.firewalls[(project, name)] = stored

        return self._operation(project, "insert", name, stored["id"], apply)

    def _delete(self, project: str, name: str) -> dict[str, Any]:
        stored = self._get(project, name)

        def apply() -> None:
            self.firewalls.pop((project, name), None)

        return self._operation(project, "delete", name, stored["id"], apply)

    def _modify(
        self, project: str, name: str, payload: dict[str, Any], *, replace: bool
    ) -> dict[str, Any]:
        current = self._get(project, name)
        if payload.get("name", name) != name:
            raise _invalid("resource.name", payload["name"], "The name cannot be changed.")
        if replace:
            merged = {k: v for k, v in payload.items() if k not in OUTPUT_ONLY}
            merged["name"] = name
        else:
            # JSON merge patch: the fields present replace; the rest stay.
            merged = copy.deepcopy(current)
            for k, v in payload.items():
                if v is None:
                    merged.pop(k, None)
                else:
                    merged[k] = v
        merged.setdefault("network", current["network"])
        if network_url(project, merged["network"]) != current["network"]:
            raise _invalid("resource.network", merged["network"], "The network cannot be changed.")
        if merged.get("direction", "INGRESS") != current["direction"]:
            raise _invalid("resource.direction", merged.get("direction"), "Cannot be changed.")
        stored = self._validated(project, merged, creating=False)
        stored["id"] = current["id"]
        stored["creationTimestamp"] = current["creationTimestamp"]

        def apply() -> None:
            self.firewalls[(project, name)] = stored

        kind = "patch" if not replace else "update"
        return self._operation(project, kind, name, current["id"], apply)


def _public(op: dict[str, Any]) -> dict[str, Any]:
    """An operation as the API answers it (without the fake's bookkeeping)."""
    return {k: copy.deepcopy(v) for k, v in op.items() if not k.startswith("_")}


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), op)
    for m, p, op in (
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)$", "projects.get"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/global/firewalls$", "firewalls.list"),
        ("POST", r"^/compute/v1/projects/(?P<project>[^/]+)/global/firewalls$", "firewalls.insert"),
        (
            "GET",
            r"^/compute/v1/projects/(?P<project>[^/]+)/global/firewalls/(?P<name>[^/]+)$",
            "firewalls.get",
        ),
        (
            "PATCH",
            r"^/compute/v1/projects/(?P<project>[^/]+)/global/firewalls/(?P<name>[^/]+)$",
            "firewalls.patch",
        ),
        (
            "PUT",
            r"^/compute/v1/projects/(?P<project>[^/]+)/global/firewalls/(?P<name>[^/]+)$",
            "firewalls.update",
        ),
        (
            "DELETE",
            r"^/compute/v1/projects/(?P<project>[^/]+)/global/firewalls/(?P<name>[^/]+)$",
            "firewalls.delete",
        ),
        (
            "GET",
            r"^/compute/v1/projects/(?P<project>[^/]+)/global/networks/(?P<network>[^/]+)"
            r"/getEffectiveFirewalls$",
            "networks.getEffectiveFirewalls",
        ),
        (
            "GET",
            r"^/compute/v1/projects/(?P<project>[^/]+)/global/operations/(?P<operation>[^/]+)$",
            "globalOperations.get",
        ),
        (
            "POST",
            r"^/compute/v1/projects/(?P<project>[^/]+)/global/operations/(?P<operation>[^/]+)/wait$",
            "globalOperations.wait",
        ),
    )
]


def _route(method: str, path: str) -> tuple[str, dict[str, str]]:
    for route_method, pattern, operation in _ROUTES:
        match = pattern.match(path)
        if match and route_method == method:
            return operation, match.groupdict()
    return "unknown", {}


class _Handler(BaseHTTPRequestHandler):
    state: FakeCompute
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, out = self.state.handle(self.command, self.path, body)
        data = json.dumps(out).encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
        return


def operation_names(log: list[LoggedRequest]) -> Iterator[str]:
    return (entry.operation for entry in log)
