"""The operator's Kubernetes API client: the few REST calls it makes, as JSON over urllib3.

Why its own and not the official ``kubernetes`` package: importing that package loads about
1,000 generated model modules, about half of the operator's resident memory with one resource
(104 against 55 MiB) and half a second of every start, and kopf imports it as well whenever it
is installed. The operator uses none of those models: every call here sends and reads JSON.
Credentials come from :mod:`server_hardening.targets.kubeconfig`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3

from server_hardening.targets import gate
from server_hardening.targets.kubeconfig import (
    Credentials,
    CredentialSource,
    KubeConfigError,
    ResolvedCredentials,
)

USER_AGENT = "server-hardening"
# No call the operator makes should take long; one that hangs must not hold a reconcile forever
# (the official client's default is no timeout at all).
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"

#: Requests that change nothing (the write gate lets them through).
READS = frozenset({"GET", "HEAD", "OPTIONS"})

# The API groups the operator calls, for namespaced() and the watches.
CORE = "/api/v1"
NETWORKING = "/apis/networking.k8s.io/v1"


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        self.status = status
        self.reason = reason
        self.body = body
        try:
            parsed = json.loads(body or "{}")
        except ValueError:
            parsed = None
        api_status: Mapping[str, Any] = parsed if isinstance(parsed, dict) else {}
        #: The ``message`` of the API's Status object, else the HTTP reason.
        self.message = str(api_status.get("message") or reason)
        #: The Status object's ``details`` (e.g. ``kind`` of what was not found), or empty.
        self.details: Mapping[str, Any] = api_status.get("details") or {}
        super().__init__(f"HTTP {status} {self.message}")


# What a call through KubeApi raises: an error status, or a connection that failed.
CLIENT_ERRORS = (ApiError, urllib3.exceptions.HTTPError, OSError)


class KubeApi:
    """JSON over HTTPS to one API server, with a pool of keep-alive connections.

    Errors: :class:`ApiError` for an error status; urllib3's ``HTTPError`` (and ``OSError``)
    for a connection that failed. Nothing is retried here: the adapters' retry policy decides.
    Every request that is not a read first asks the process's write gate
    (:mod:`server_hardening.targets.gate`; :class:`~.gate.NotLeading` when it is closed),
    unless the client is built with ``gated=False`` (the leader election's own).
    ``user_agent`` names the caller to the API server (its audit log records it).
    """

    def __init__(
        self,
        credentials: Credentials | CredentialSource,
        *,
        pool_size: int = 10,
        read_timeout: float = READ_TIMEOUT,
        gated: bool = True,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.gated = gated
        self.user_agent = user_agent
        self.source = (
            credentials
            if isinstance(credentials, CredentialSource)
            else CredentialSource(credentials)
        )
        self.read_timeout = read_timeout
        # Tokens are read again at every call (see CredentialSource); a client certificate is
        # loaded into the TLS context once, so one that an exec plugin rotates takes a restart.
        first = self.source.current()
        creds = first.credentials
        self.server = creds.server.rstrip("/")
        self._pool = urllib3.PoolManager(
            num_pools=1,
            maxsize=pool_size,
            retries=False,
            ssl_context=_ssl_context(first),
            server_hostname=creds.tls_server_name,
        )

    def fork(self, *, gated: bool | None = None) -> KubeApi:
        """The same credentials, connections of its own (for a probe that must never wait
        behind the reconciles, nor hand them a half-read connection). The same write gate
        unless ``gated`` says otherwise."""
        return KubeApi(
            self.source,
            pool_size=1,
            read_timeout=self.read_timeout,
            gated=self.gated if gated is None else gated,
            user_agent=self.user_agent,
        )

    def close(self) -> None:
        """Close the pooled connections (a later call opens new ones)."""
        self._pool.clear()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = JSON,
        timeout: float | None = None,
    ) -> Any:
        """One call; the decoded JSON answer (a text answer comes back as ``str``)."""
        if self.gated and method not in READS:
            gate.WRITES.check(f"{method} {path}")
        headers = self._headers()
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        url = self.server + path
        read = self.read_timeout if timeout is None else timeout
        response = self._pool.request(
            method,
            url,
            body=data,
            headers=headers,
            timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT, read), read=read),
            redirect=False,
        )
        text = response.data.decode("utf-8", errors="replace")
        if not 200 <= response.status < 300:
            raise ApiError(response.status, response.reason or "", text)
        if "json" not in (response.headers.get("Content-Type") or ""):
            return text
        return json.loads(text) if text else {}

    def _headers(self) -> dict[str, str]:
        """Every call's headers; the token as it is now (re-read, or renewed, when due)."""
        headers = {"Accept": JSON, "User-Agent": self.user_agent}
        token = self.source.current().token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def watch(self, path: str, *, since: str, timeout_seconds: int) -> WatchStream:
        """Open one watch call on a collection from resourceVersion ``since``; its events come
        from the stream until the API server ends the call (after about ``timeout_seconds``) or
        the connection fails. Bookmarks are asked for: they keep the version a watch resumes
        from fresh while nothing changes. Raises :class:`ApiError` for an error status."""
        query = (
            f"?watch=1&allowWatchBookmarks=true&resourceVersion={quote(since, safe='')}"
            f"&timeoutSeconds={timeout_seconds}"
        )
        response = self._pool.request(
            "GET",
            self.server + path + query,
            headers=self._headers(),
            # The server ends the call; the read timeout only catches a connection gone silent.
            timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=timeout_seconds + 30.0),
            redirect=False,
            preload_content=False,
        )
        if not 200 <= response.status < 300:
            text = response.read().decode("utf-8", errors="replace")
            response.release_conn()
            raise ApiError(response.status, response.reason or "", text)
        return WatchStream(response)

    def create(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body=body)

    def replace(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body=body)

    def merge_patch(self, path: str, patch: Any) -> Any:
        return self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    def delete(self, path: str, *, uid: str | None = None) -> Any:
        """Delete; with ``uid``, only that object (not one re-created under the same name)."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        return self.request("DELETE", path, body=body)


class WatchStream:
    """The events of one watch call, one decoded JSON object each."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pending = b""
        try:
            for chunk in self._response.stream(64 * 1024):
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    if line.strip():
                        yield json.loads(line)
        finally:
            self.close()

    def close(self) -> None:
        """End the call, also from another thread while one reads it (the socket is shut
        down, so the read returns); the connection is not reused."""
        connection = getattr(self._response, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._response.close()
        self._response.release_conn()


def namespaced(api_path: str, namespace: str, plural: str, name: str | None = None) -> str:
    """``/api/v1`` or ``/apis/<group>/<version>`` plus a namespaced collection or object."""
    path = f"{api_path}/namespaces/{quote(namespace, safe='')}/{plural}"
    return path if name is None else f"{path}/{quote(name, safe='')}"


def _ssl_context(resolved: ResolvedCredentials) -> ssl.SSLContext:
    creds = resolved.credentials
    try:
        context = ssl.create_default_context(cafile=creds.ca_path, cadata=creds.ca_data)
        if creds.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if resolved.cert_data or creds.cert_path:
            with tempfile.TemporaryDirectory(prefix="server-hardening-tls-") as directory:
                cert = _file_of(creds.cert_path, resolved.cert_data, Path(directory) / "tls.crt")
                key = _file_of(creds.key_path, resolved.key_data, Path(directory) / "tls.key")
                context.load_cert_chain(cert, key)  # read now: the files may go afterwards
    except (OSError, ssl.SSLError) as exc:
        raise KubeConfigError(f"{creds.source}: the TLS settings do not load: {exc}") from exc
    return context


def _file_of(path: str | None, data: bytes | None, spill: Path) -> str:
    if path:
        return path
    spill.touch(mode=0o600)
    spill.write_bytes(data or b"")
    return str(spill)
