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
- ``GET  /compute/v1/projects/{project}/aggregated/instances`` (``filter`` on nested and
  repeated fields such as ``tags.items``, ``maxResults``, ``pageToken``; zones without results on
  a page answer the API's ``NO_RESULTS_ON_PAGE`` warning)
- ``GET/POST /compute/v1/projects/{project}/zones/{zone}/instances``, ``GET .../{name}``,
  ``GET .../{name}/getEffectiveFirewalls?networkInterface=nic0`` (the VPC rules that target the
  instance by any means, and the policy rules above them that apply to it)
- ``GET/POST /compute/v1/projects/{project}/zones/{zone}/operations/{operation}[/wait]``

The fake is deliberately no kinder than the documented API:

- **Operations finish later.** A write answers ``RUNNING`` and is ``DONE`` only after
  ``operation_polls`` (default 1) ``get``/``wait`` calls, or ``operation_seconds`` after it was
  sent; the change takes effect only then. ``globalOperations.wait`` may return while the
  operation is still ``RUNNING`` (the API's wait returns at its ~2-minute deadline).
- **Refusals nobody asked for.** With ``chaos_rate`` (default ``DEFAULT_CHAOS_RATE``) each request
  may answer 429 ``rateLimitExceeded``, each write 400 ``resourceNotReady``, each wait return
  early, drawn from ``random.Random(seed)`` (``seed`` defaults to ``$SH_GCP_FAKE_SEED`` or 0);
  the first read and the first write of a fake's life are always refused, so every test that
  uses the fake meets both. Such requests are in :attr:`FakeCompute.log` with ``chaos=True``
  and left out of :meth:`FakeCompute.calls` and :meth:`FakeCompute.writes` (they are the
  API's noise, not the client's choices); :meth:`FakeCompute.chaos_count` counts them.
  ``FakeCompute(chaos_rate=0)`` turns it off for tests of the fake's own shapes.
- **Unknown networks are refused** (404 on a firewall or instance insert, and on
  ``getEffectiveFirewalls``): networks exist once :meth:`FakeCompute.add_network` or a seed
  made them.
- **Field limits**: name (RFC 1035, 1-63 characters), description (2048), priority (0-65535),
  ports (``N`` or ``N-M`` for tcp/udp/sctp), at most ``MAX_RANGES`` source or destination
  ranges, ``MAX_SOURCE_TAGS``/``MAX_TARGET_TAGS`` tags and ``MAX_SERVICE_ACCOUNTS`` service
  accounts per rule; ``sourceServiceAccounts`` or ``targetServiceAccounts`` together with tags
  refused as the Firewall reference documents.

With ``pending_operations=True`` (kept for older tests) writes need one poll, as by default; with
``operation_polls=0`` they come back ``DONE``. With ``operation_seconds=s`` an operation is ``PENDING`` for its first tenth,
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

Firewall policies (hierarchical and network) are held with
:meth:`FakeCompute.seed_firewall_policy`, instances with :meth:`FakeCompute.seed_instance` (or
``instances.insert``), networks with :meth:`FakeCompute.add_network`.

What it does not model: IAM (every request is allowed unless a fault says otherwise), eventual
consistency, the newer filter syntax beyond ``=``/``!=``, ``orderBy``, ``logConfig`` metadata
validation, firewall-policy writes, and real packet filtering (see ``tests/truth/gcp_eval.py``
for the semantics).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import ipaddress
import itertools
import json
import os
import random
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
# Per-rule limits of VPC firewall rules (the brief's and GCP's documented figures).
MAX_RANGES = 256
MAX_SOURCE_TAGS = 30
MAX_TARGET_TAGS = 70
MAX_SERVICE_ACCOUNTS = 10
# The share of requests the fake refuses (or waits it returns early) without a test asking.
DEFAULT_CHAOS_RATE = 0.05
WRITES = {"firewalls.insert", "firewalls.update", "firewalls.patch", "firewalls.delete"}
POLICY_ACTIONS = {"allow", "deny", "goto_next", "apply_security_profile_group"}
POLICY_TYPES = {"HIERARCHY", "NETWORK", "NETWORK_REGIONAL", "SYSTEM_GLOBAL", "SYSTEM_REGIONAL"}


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
    chaos: bool = False  # refused (or a wait returned early) by the fake's own chaos


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
    polls: int = 1  # get/wait calls still needed when ``due`` is infinite


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


def _network_key(project: str, network: str) -> tuple[str, str]:
    """(host project, network name) of any form of network reference."""
    url = network_url(project, network)
    match = re.search(r"/projects/([^/]+)/global/networks/([^/]+)$", url)
    assert match is not None, url
    return match[1], match[2]


def _network_name(project: str, network: str) -> str:
    host, name = _network_key(project, network)
    return name if host == project else f"projects/{host}/global/networks/{name}"


def _check_limits_and_targets(rule: dict[str, Any]) -> None:
    """The Firewall reference's per-rule limits, and its rule that service accounts are not
    mixed with tags: ``sourceServiceAccounts`` "cannot be used at the same time as sourceTags or
    targetTags", ``targetServiceAccounts`` "cannot be used at the same time as targetTags or
    sourceTags"."""
    for ranges in ("sourceRanges", "destinationRanges"):
        if len(rule.get(ranges) or []) > MAX_RANGES:
            raise _invalid(
                f"resource.{ranges}", len(rule[ranges]), f"At most {MAX_RANGES} ranges per rule."
            )
    for name, limit in (
        ("sourceTags", MAX_SOURCE_TAGS),
        ("targetTags", MAX_TARGET_TAGS),
        ("sourceServiceAccounts", MAX_SERVICE_ACCOUNTS),
        ("targetServiceAccounts", MAX_SERVICE_ACCOUNTS),
    ):
        if len(rule.get(name) or []) > limit:
            raise _invalid(f"resource.{name}", len(rule[name]), f"At most {limit} per rule.")
    tags = bool(rule.get("sourceTags") or rule.get("targetTags"))
    for name in ("sourceServiceAccounts", "targetServiceAccounts"):
        if rule.get(name) and tags:
            raise _invalid(
                f"resource.{name}",
                rule[name][0],
                "Service accounts cannot be used together with source or target tags.",
            )


def _validated_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """A firewall policy as ``getEffectiveFirewalls`` answers it, its rules checked as the API
    checks them on insert."""
    out = copy.deepcopy(policy)
    if not out.get("name"):
        raise _invalid("firewallPolicy.name", "")
    kind = out.setdefault("type", "HIERARCHY")
    if kind not in POLICY_TYPES:
        raise _invalid("firewallPolicy.type", kind)
    for i, rule in enumerate(out.get("rules") or []):
        where = f"firewallPolicy.rules[{i}]"
        priority = rule.get("priority")
        if not isinstance(priority, int) or not 0 <= priority <= 2**31 - 1:
            raise _invalid(f"{where}.priority", priority)
        if rule.get("action") not in POLICY_ACTIONS:
            raise _invalid(f"{where}.action", rule.get("action"))
        if rule.get("direction") not in ("INGRESS", "EGRESS"):
            raise _invalid(f"{where}.direction", rule.get("direction"))
        match = rule.get("match") or {}
        configs = match.get("layer4Configs") or []
        if not configs:
            raise ApiError(400, "required", f"Required field '{where}.match.layer4Configs'")
        for config in configs:
            protocol = str(config.get("ipProtocol", ""))
            if protocol.lower() not in PROTOCOLS and not protocol.isdigit():
                raise _invalid(f"{where}.match.layer4Configs[].ipProtocol", protocol)
            for port in config.get("ports") or []:
                if protocol.lower() not in PORTED or not re.fullmatch(
                    r"\d{1,5}(-\d{1,5})?", str(port)
                ):
                    raise _invalid(f"{where}.match.layer4Configs[].ports[]", port)
        for ranges in ("srcIpRanges", "destIpRanges"):
            for value in match.get(ranges) or []:
                try:
                    ipaddress.ip_network(value, strict=False)
                except ValueError:
                    raise _invalid(f"{where}.match.{ranges}[]", value) from None
        if rule.get("targetServiceAccounts") and rule.get("targetSecureTags"):
            raise _invalid(
                f"{where}.targetSecureTags", "", "Cannot be used with targetServiceAccounts."
            )
        rule["kind"] = "compute#firewallPolicyRule"
        rule.setdefault("disabled", False)
    return out


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


def _values(item: Any, path: str) -> list[Any]:
    """The values at a dotted ``path``; a repeated field on the way yields each element (the
    API's filter matches a repeated field when any element does: ``tags.items = "x"``)."""
    found = [item]
    for part in path.split("."):
        step: list[Any] = []
        for value in found:
            if isinstance(value, dict) and part in value:
                inner = value[part]
                step.extend(inner if isinstance(inner, list) else [inner])
        found = step
    return found


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _matches(item: dict[str, Any], terms: list[tuple[str, str, str]]) -> bool:
    for name, op, value in terms:
        texts = [_text(v) for v in _values(item, name)] or [""]
        if op in ("eq", "ne"):
            try:
                hit = any(re.fullmatch(value, text) is not None for text in texts)
            except re.error:
                raise _invalid("filter", value) from None
        else:
            hit = value in texts
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
        operation_polls: int = 1,
        chaos_rate: float = DEFAULT_CHAOS_RATE,
        seed: int | None = None,
        networks: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.pending_operations = pending_operations
        # get/wait calls an operation needs before it is DONE (``pending_operations``: one).
        self.operation_polls = max(operation_polls, 1 if pending_operations else 0)
        self.chaos_rate = chaos_rate
        self.chaos_seed = int(os.environ.get("SH_GCP_FAKE_SEED", "0")) if seed is None else seed
        self._rng = random.Random(self.chaos_seed)  # noqa: S311 (fault injection, not cryptography)
        self._chaos_firsts = {"read", "write"} if chaos_rate > 0 else set()
        self.networks: dict[tuple[str, str], dict[str, Any]] = {}
        self.instances: dict[tuple[str, str, str], dict[str, Any]] = {}
        # Secure tags bound to instances (Resource Manager tag bindings, not instance fields).
        self.instance_secure_tags: dict[tuple[str, str, str], tuple[str, ...]] = {}
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
        for project, network in networks:
            self.add_network(project, network)

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

    @contextlib.contextmanager
    def answering_at_once(self) -> Iterator[None]:
        """Requests inside are answered as a calm fake would (no unasked refusals, operations
        DONE at once): for a test's setup through a bare client (whose ``.result()`` would poll
        the public endpoint), not for the code under test."""
        with self._lock:
            saved = (self.chaos_rate, self.operation_polls, set(self._chaos_firsts))
            self.chaos_rate, self.operation_polls = 0.0, 0
        try:
            yield
        finally:
            with self._lock:
                self.chaos_rate, self.operation_polls, self._chaos_firsts = saved

    def calm(self) -> None:
        """No refusal nobody scripted from now on: for a test that counts exactly the retries
        and sleeps of the faults it scripts itself."""
        with self._lock:
            self.chaos_rate = 0.0
            self._chaos_firsts.clear()

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
        """Store a firewall as if another client had inserted it (validated, no log entry). Its
        network is made to exist (another client created it)."""
        with self._lock:
            self.add_network(project, _network_name(project, body.get("network") or "default"))
            stored = self._validated(project, body, creating=True)
            self.firewalls[(project, stored["name"])] = stored
            return copy.deepcopy(stored)

    def add_network(
        self, project: str, network: str, *, enforcement_order: str = "AFTER_CLASSIC_FIREWALL"
    ) -> None:
        """A VPC network of ``project`` (``network`` may name another, host project:
        ``projects/<host>/global/networks/<n>``). ``enforcement_order``: where the network's
        firewall policy is evaluated, after (the API's default) or before its VPC rules."""
        with self._lock:
            key = _network_key(project, network)
            if key in self.networks:
                self.networks[key]["networkFirewallPolicyEnforcementOrder"] = enforcement_order
                return
            host, name = key
            self.networks[key] = {
                "kind": "compute#network",
                "id": str(next(self._ids)),
                "creationTimestamp": _now(),
                "name": name,
                "selfLink": network_url(host, name),
                "autoCreateSubnetworks": False,
                "routingConfig": {"routingMode": "REGIONAL"},
                "networkFirewallPolicyEnforcementOrder": enforcement_order,
                "mtu": 1460,
            }

    def seed_firewall_policy(self, project: str, network: str, policy: dict[str, Any]) -> None:
        """Associate a firewall policy with a network, as an organisation or project admin would:
        ``{"name", "type": "HIERARCHY"|"NETWORK", "shortName"?, "rules": [...]}``, each rule in
        the REST shape (``priority``, ``direction``, ``action`` allow/deny/goto_next,
        ``match.srcIpRanges``/``destIpRanges``/``layer4Configs``/``srcSecureTags``,
        ``targetServiceAccounts``, ``targetSecureTags``, ``disabled``). Validated as the API
        validates rules; answered in evaluation order (hierarchy first, then the network's)."""
        with self._lock:
            self.add_network(project, network)
            self.firewall_policies.setdefault((project, network), []).append(
                _validated_policy(policy)
            )

    def seed_instance(
        self,
        project: str,
        name: str,
        *,
        zone: str = "us-central1-a",
        network: str = "circleci",
        ip: str = "",
        tags: tuple[str, ...] | list[str] = (),
        service_accounts: tuple[str, ...] | list[str] = (),
        alias_ranges: tuple[str, ...] | list[str] = (),
        secure_tags: tuple[str, ...] | list[str] = (),
        more_interfaces: tuple[dict[str, Any], ...] = (),
    ) -> dict[str, Any]:
        """An instance as another client (a managed instance group, GKE) created it: one NIC on
        ``network`` (made to exist) with ``ip`` and alias ranges, network ``tags``, service
        accounts, and ``secure_tags`` (``tagValues/...``) bound to it. ``more_interfaces``: NICs
        in the REST shape."""
        with self._lock:
            self.add_network(project, network)
            number = len(self.instances) + 2
            body: dict[str, Any] = {
                "name": name,
                "machineType": f"zones/{zone}/machineTypes/e2-standard-4",
                "tags": {"items": list(tags)},
                "networkInterfaces": [
                    {
                        "network": network_url(project, network),
                        "networkIP": ip
                        or f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}",
                        "aliasIpRanges": [{"ipCidrRange": r} for r in alias_ranges],
                    },
                    *copy.deepcopy(list(more_interfaces)),
                ],
                "serviceAccounts": [
                    {"email": sa, "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}
                    for sa in service_accounts
                ],
            }
            stored = self._validated_instance(project, zone, body)
            self.instances[(project, zone, name)] = stored
            self.instance_secure_tags[(project, zone, name)] = tuple(secure_tags)
            return copy.deepcopy(stored)

    def chaos_count(self, operation: str | None = None, status: int | None = None) -> int:
        """How many requests (of ``operation``, answered ``status``) the chaos refused or cut
        short: what a test adds to the faults it scripted itself."""
        return sum(
            1
            for r in self.log
            if r.chaos
            and (operation is None or r.operation == operation)
            and (status is None or r.status == status)
        )

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
        """Operation names of the logged requests (optionally only one kind), less those the
        chaos refused or cut short (see :meth:`chaos_count`)."""
        return [
            r.operation
            for r in self.log
            if not r.chaos and (operation is None or r.operation == operation)
        ]

    def writes(self) -> list[LoggedRequest]:
        return [
            r
            for r in self.log
            if r.method not in ("GET",) and not r.operation.endswith("wait") and not r.chaos
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
        waiting = operation.endswith("Operations.wait")
        early = waiting and self._returns_early(params)
        if waiting and not early:
            self._block_until_done(params)
        with self._lock:
            self.log.append(entry)
            try:
                if operation == "unknown":
                    raise ApiError(404, "notFound", f"The requested URL {path} was not found.")
                self._fault(operation, after=False)
                self._chaos(operation, entry)
                payload = self._decode(body) if method in ("POST", "PATCH", "PUT") else {}
                if early:
                    # The API's wait returned at its deadline: the operation as it is, not DONE.
                    entry.chaos = True
                    status, out = (
                        200,
                        _public(self.operations[(params["project"], params["operation"])]),
                    )
                else:
                    status, out = self._dispatch(operation, params, query, payload)
                self._fault(operation, after=True)
            except ApiError as err:
                status, out = err.status, err.body()
            entry.status = status
            return status, out

    def _chaos(self, operation: str, entry: LoggedRequest) -> None:
        """Refuse a request nobody scripted: 429 for any, ``resourceNotReady`` for a write, at
        ``chaos_rate``; always the first read and the first write of the fake's life."""
        if self.chaos_rate <= 0:
            return
        kind = "write" if operation in WRITES else "read"
        forced = kind in self._chaos_firsts
        self._chaos_firsts.discard(kind)
        if not forced and self._rng.random() >= self.chaos_rate:
            return
        entry.chaos = True
        if kind == "write" and (forced or self._rng.random() < 0.5):
            raise ApiError(
                400,
                "resourceNotReady",
                f"The resource 'projects/{entry.path.split('/')[4]}/global/networks/-' is not "
                "ready",
            )
        raise ApiError(429, "rateLimitExceeded", "Rate Limit Exceeded")

    def _returns_early(self, params: dict[str, str]) -> bool:
        """Whether this wait returns before its operation is DONE (at ``chaos_rate``)."""
        if self.chaos_rate <= 0:
            return False
        key = (params.get("project", ""), params.get("operation", ""))
        with self._lock:
            running = key in self.operations and any(
                (s.project, s.op_name) == key for s in self._scheduled
            )
            return running and self._rng.random() < self.chaos_rate

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
        if operation == "networks.get":
            return 200, copy.deepcopy(self._network_exists(project, params["network"]))
        if operation == "networks.getEffectiveFirewalls":
            network = params["network"]
            self._network_exists(project, network)
            listed = self._list(project, {"filter": f'network eq ".*/global/networks/{network}$"'})
            return 200, {
                "firewalls": listed.get("items", []),
                "firewallPolicys": self._policies_of(project, network),
            }
        if operation == "firewalls.get":
            return 200, copy.deepcopy(self._get(project, params["name"]))
        if operation.startswith("instances."):
            return 200, self._instances_dispatch(operation, params, query, payload)
        if operation.endswith(("Operations.get", "Operations.wait")):
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
                asked[0].polls -= 1
                if asked[0].polls <= 0:
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

    # -- networks, firewall policies, instances ------------------------------------------------

    def _network_exists(self, project: str, network: str) -> dict[str, Any]:
        host, name = _network_key(project, network)
        found = self.networks.get((host, name))
        if found is None:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{host}/global/networks/{name}' was not found",
            )
        return found

    def _policies_of(
        self, project: str, network: str, instance: tuple[str, str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The network's firewall policies in evaluation order (hierarchy before the network's);
        for an instance, only the rules that target it (no target, its service account, or a
        secure tag bound to it)."""
        order = {"HIERARCHY": 0, "NETWORK": 1}
        policies = sorted(
            copy.deepcopy(self.firewall_policies.get((project, network), [])),
            key=lambda p: order.get(str(p.get("type")), 2),
        )
        if instance is None:
            return policies
        body = self.instances[instance]
        accounts = {sa["email"] for sa in body.get("serviceAccounts") or []}
        secure = set(self.instance_secure_tags.get(instance, ()))
        for policy in policies:
            policy["rules"] = [
                rule
                for rule in policy.get("rules") or []
                if _policy_rule_targets(rule, accounts, secure)
            ]
        return policies

    def _validated_instance(self, project: str, zone: str, body: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(body)
        name = str(out.get("name", ""))
        if not NAME_RE.match(name):
            raise _invalid("resource.name", name, f"Must be a match of regex '{NAME_REGEX_TEXT}'")
        if (project, zone, name) in self.instances:
            raise ApiError(
                409,
                "alreadyExists",
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists",
            )
        nics = out.get("networkInterfaces") or []
        if not nics:
            raise ApiError(400, "required", "Required field 'resource.networkInterfaces'")
        for i, nic in enumerate(nics):
            nic["network"] = network_url(project, nic.get("network") or "default")
            self._network_exists(project, nic["network"])
            nic.setdefault("name", f"nic{i}")
            nic.setdefault("kind", "compute#networkInterface")
            nic.setdefault("stackType", "IPV4_ONLY")
            nic.setdefault("networkIP", f"10.200.{len(self.instances) % 256}.{i + 2}")
            if not nic.get("aliasIpRanges"):
                nic.pop("aliasIpRanges", None)
        for tag in (out.get("tags") or {}).get("items") or []:
            if not TAG_RE.match(tag):
                raise _invalid("resource.tags.items[]", tag)
        out["tags"] = {**(out.get("tags") or {}), "fingerprint": "42WmSpB8rSM="}
        if not out["tags"].get("items"):
            out["tags"].pop("items", None)
        if not out.get("serviceAccounts"):
            out.pop("serviceAccounts", None)
        out.update(
            kind="compute#instance",
            id=str(next(self._ids)),
            creationTimestamp=_now(),
            zone=f"{SELF_LINK_BASE}/projects/{project}/zones/{zone}",
            status="RUNNING",
            selfLink=f"{SELF_LINK_BASE}/projects/{project}/zones/{zone}/instances/{name}",
        )
        return out

    def _instance(self, project: str, zone: str, name: str) -> dict[str, Any]:
        found = self.instances.get((project, zone, name))
        if found is None:
            raise ApiError(
                404,
                "notFound",
                f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found",
            )
        return found

    def _instances_dispatch(
        self,
        operation: str,
        params: dict[str, str],
        query: dict[str, str],
        payload: dict[str, Any],
    ) -> dict[str, Any]:
        project = params["project"]
        if operation == "instances.aggregatedList":
            return self._aggregated(project, query)
        zone = params["zone"]
        if operation == "instances.list":
            listed = [
                body
                for (p, z, _), body in sorted(self.instances.items())
                if p == project
                and z == zone
                and _matches(body, _parse_filter(query.get("filter", "")))
            ]
            out: dict[str, Any] = {
                "kind": "compute#instanceList",
                "id": f"projects/{project}/zones/{zone}/instances",
                "selfLink": f"{SELF_LINK_BASE}/projects/{project}/zones/{zone}/instances",
            }
            if listed:
                out["items"] = copy.deepcopy(listed)
            return out
        if operation == "instances.insert":
            stored = self._validated_instance(project, zone, payload)
            name = stored["name"]

            def apply() -> None:
                self.instances[(project, zone, name)] = stored

            return _public(
                self._operation(
                    project,
                    "insert",
                    name,
                    stored["id"],
                    apply,
                    scope=f"zones/{zone}",
                    collection="instances",
                )
            )
        body = self._instance(project, zone, params["name"])
        if operation == "instances.get":
            return copy.deepcopy(body)
        # instances.getEffectiveFirewalls
        nic_name = query.get("networkInterface", "")
        if not nic_name:
            raise ApiError(400, "required", "Required parameter 'networkInterface' not set")
        nic = next((n for n in body["networkInterfaces"] if n.get("name") == nic_name), None)
        if nic is None:
            raise _invalid("networkInterface", nic_name)
        host, network = _network_key(project, nic["network"])
        tags = set((body.get("tags") or {}).get("items") or [])
        accounts = {sa["email"] for sa in body.get("serviceAccounts") or []}
        firewalls = [
            copy.deepcopy(rule)
            for (p, _), rule in sorted(self.firewalls.items())
            if p == host
            and _network_key(host, rule["network"]) == (host, network)
            and _firewall_targets(rule, tags, accounts)
        ]
        return {
            "firewalls": firewalls,
            "firewallPolicys": self._policies_of(
                host, network, instance=(project, zone, params["name"])
            ),
        }

    def _aggregated(self, project: str, query: dict[str, str]) -> dict[str, Any]:
        """``instances.aggregatedList``: instances of every zone, paged across zones; a zone
        with instances but none on this page answers the API's warning."""
        terms = _parse_filter(query.get("filter", ""))
        max_results = int(query.get("maxResults", "500") or 500)
        if not 0 <= max_results <= 500:
            raise _invalid("maxResults", max_results, "Must be between 0 and 500.")
        max_results = max_results or 500
        offset = 0
        token = query.get("pageToken", "")
        if token:
            try:
                offset = int(base64.urlsafe_b64decode(token.encode()).decode().split(":")[1])
            except (ValueError, IndexError):
                raise _invalid("pageToken", token) from None
        matching = [
            (z, body)
            for (p, z, _), body in sorted(self.instances.items())
            if p == project and _matches(body, terms)
        ]
        page = matching[offset : offset + max_results]
        zones = sorted({z for (p, z, _) in self.instances if p == project})
        items: dict[str, Any] = {}
        for zone in zones:
            found = [copy.deepcopy(b) for z, b in page if z == zone]
            scope = f"zones/{zone}"
            items[scope] = (
                {"instances": found}
                if found
                else {
                    "warning": {
                        "code": "NO_RESULTS_ON_PAGE",
                        "message": f"There are no results for scope '{scope}' on this page.",
                        "data": [{"key": "scope", "value": scope}],
                    }
                }
            )
        out: dict[str, Any] = {
            "kind": "compute#instanceAggregatedList",
            "id": f"projects/{project}/aggregated/instances",
            "items": items,
            "selfLink": f"{SELF_LINK_BASE}/projects/{project}/aggregated/instances",
        }
        if offset + max_results < len(matching):
            out["nextPageToken"] = base64.urlsafe_b64encode(
                f"page:{offset + max_results}".encode()
            ).decode()
        return out

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
        self._network_exists(project, out["network"])
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
        _check_limits_and_targets(out)
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
        self,
        project: str,
        kind: str,
        name: str,
        target_id: str,
        apply: Any,
        *,
        scope: str = "global",
        collection: str = "firewalls",
    ) -> dict[str, Any]:
        """A write's operation. ``apply`` makes the change: now (DONE at once), or when the
        operation finishes (``operation_polls`` / ``operation_seconds``). ``scope``: ``global``
        or ``zones/<zone>`` (where the operation and its target live)."""
        op_name = f"operation-{int(datetime.now(UTC).timestamp() * 1000)}-{uuid.uuid4()}"
        now = _now()
        failure = self._take_operation_failure(kind)
        latency = self.operation_seconds
        deferred = self.operation_polls > 0 or latency > 0
        started = time.monotonic()
        op: dict[str, Any] = {
            "kind": "compute#operation",
            "id": str(next(self._ids)),
            "name": op_name,
            "operationType": kind,
            "targetLink": f"{SELF_LINK_BASE}/projects/{project}/{scope}/{collection}/{name}",
            "targetId": target_id,
            "status": "DONE",
            "user": "fake@example.iam.gserviceaccount.com",
            "progress": 100,
            "insertTime": now,
            "startTime": now,
            "selfLink": f"{SELF_LINK_BASE}/projects/{project}/{scope}/operations/{op_name}",
            "_running_at": started + latency / 10,
        }
        if scope.startswith("zones/"):
            op["zone"] = f"{SELF_LINK_BASE}/projects/{project}/{scope}"
        self.operations[(project, op_name)] = op
        # pending_operations without a latency: DONE when next asked about (get or wait).
        due = started + latency if latency > 0 else float("inf")
        item = _Scheduled(project, op_name, due, apply, failure, polls=self.operation_polls)
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


def _firewall_targets(rule: dict[str, Any], tags: set[str], accounts: set[str]) -> bool:
    """Whether a VPC rule applies to an instance: no target (every instance), one of its tags,
    or one of its service accounts."""
    if rule.get("targetTags"):
        return bool(set(rule["targetTags"]) & tags)
    if rule.get("targetServiceAccounts"):
        return bool(set(rule["targetServiceAccounts"]) & accounts)
    return True


def _policy_rule_targets(rule: dict[str, Any], accounts: set[str], secure: set[str]) -> bool:
    if rule.get("targetServiceAccounts"):
        return bool(set(rule["targetServiceAccounts"]) & accounts)
    if rule.get("targetSecureTags"):
        return bool({t.get("name") for t in rule["targetSecureTags"]} & secure)
    return True


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
            r"^/compute/v1/projects/(?P<project>[^/]+)/global/networks/(?P<network>[^/]+)$",
            "networks.get",
        ),
        (
            "GET",
            r"^/compute/v1/projects/(?P<project>[^/]+)/aggregated/instances$",
            "instances.aggregatedList",
        ),
        (
            "GET",
            r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances$",
            "instances.list",
        ),
        (
            "POST",
            r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances$",
            "instances.insert",
        ),
        (
            "GET",
            r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances"
            r"/(?P<name>[^/]+)$",
            "instances.get",
        ),
        (
            "GET",
            r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances"
            r"/(?P<name>[^/]+)/getEffectiveFirewalls$",
            "instances.getEffectiveFirewalls",
        ),
        (
            "GET",
            r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/operations"
            r"/(?P<operation>[^/]+)$",
            "zoneOperations.get",
        ),
        (
            "POST",
            r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/operations"
            r"/(?P<operation>[^/]+)/wait$",
            "zoneOperations.wait",
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
