"""The AWS test double: moto in server mode behind a small counting/throttling HTTP proxy.

    boto3 client --HTTP--> CountingProxy (127.0.0.1:random) --HTTP--> ThreadedMotoServer

The proxy counts every request by its ``Action`` (what AWS bills and throttles), and can answer
``RequestLimitExceeded`` (HTTP 503 with EC2's XML error body) N times for a chosen action
before letting requests through again. Used by the adapter tests and by ``bench/aws_requests.py``.

Where moto differs from EC2 and what is done about it:

- ``DescribeSecurityGroupRules`` ignores ``MaxResults``/``NextToken`` (returns everything in one
  page). Patched here to page like EC2, so request counts are the real ones.
- A rule that references a security group loses its ``Description`` in
  ``DescribeSecurityGroupRules`` (moto reads it only from IP ranges). Patched here to read it
  from the group pair as EC2 does.
- ``AuthorizeSecurityGroup*`` with several permissions is not atomic in moto: on
  ``InvalidPermission.Duplicate`` the permissions before the duplicate stay added (EC2 adds
  none). And its duplicate check compares group references *with* their descriptions, so a
  second rule to the same group with another description is accepted (EC2 refuses it). The
  adapter re-reads and adds only what is missing, so it works with both; tests do not
  depend on either behaviour.
- ``AuthorizeSecurityGroup*`` returns only the last permission's rules in ``SecurityGroupRules``.
  The adapter does not use the response.
- ``ModifySecurityGroupRules`` only changes protocol, ports, description and IPv4 CIDR (not IPv6
  CIDR, group or prefix-list targets). The adapter only ever changes descriptions.
- Prefix lists: moto does not weigh a prefix-list reference by its max entries in the quota.
  No test uses prefix lists.
- IAM: moto can enforce IAM (``INITIAL_NO_AUTH_ACTION_COUNT``), but evaluates only actions:
  no ``Resource`` ARNs, no ``Condition`` (statements with conditions deny), and does not check
  the implicit ``ec2:CreateTags`` of ``TagSpecifications``. See :meth:`MotoDouble.enforce_iam`.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import boto3
from moto.server import ThreadedMotoServer

from server_hardening.targets.aws import client_config
from server_hardening_dev.moto_ec2 import patched_moto

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

REGION = "us-east-1"
DUMMY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

THROTTLE_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Response><Errors><Error><Code>RequestLimitExceeded</Code>"
    "<Message>Request limit exceeded.</Message></Error></Errors>"
    "<RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
)


def _action(path: str, body: bytes) -> str:
    query = urllib.parse.urlsplit(path).query
    for source in (body.decode("utf-8", "replace"), query):
        values = urllib.parse.parse_qs(source).get("Action")
        if values:
            return values[0]
    return "?"


class CountingProxy:
    """Forwards to moto; counts requests per Action; throttles on request."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.counts: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        self._throttle: dict[str, int] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action = _action(self.path, body)
                with proxy._lock:
                    proxy.counts[action] += 1
                    left = proxy._throttle.get(action, 0)
                    if left > 0:
                        proxy._throttle[action] = left - 1
                        proxy.throttled[action] += 1
                if left > 0:
                    data = THROTTLE_BODY.encode()
                    self.send_response(503)
                    self.send_header("Content-Type", "text/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def throttle(self, action: str, times: int) -> None:
        with self._lock:
            self._throttle[action] = times

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.throttled.clear()
            self._throttle.clear()

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


class MotoDouble:
    """One moto server and one proxy for a test session (or a benchmark run)."""

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._patch = patched_moto()
        self._patch.__enter__()
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        self.proxy = CountingProxy((host, port))
        self.proxy.start()
        self.url = self.proxy.url

    def stop(self) -> None:
        self.proxy.stop()
        self.moto.stop()
        self._patch.__exit__(None, None, None)

    def reset(self) -> None:
        """Empty every moto backend and the counters."""
        request = urllib.request.Request(f"{self.moto_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
        self.proxy.reset()

    def client(self, *, aws_access_key_id: str = "", aws_secret_access_key: str = "") -> EC2Client:
        """A client configured as the operator configures its own (one attempt per call:
        the adapter retries), signed with dummy credentials unless others are given."""
        return boto3.session.Session().client(
            "ec2",
            region_name=REGION,
            endpoint_url=self.url,
            config=client_config(),
            aws_access_key_id=aws_access_key_id or DUMMY["aws_access_key_id"],
            aws_secret_access_key=aws_secret_access_key or DUMMY["aws_secret_access_key"],
        )

    def client_for(self, service: str) -> Any:
        """A client of another service on the same moto (Auto Scaling, SQS, EventBridge)."""
        return boto3.session.Session().client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            config=client_config(),
            aws_access_key_id=DUMMY["aws_access_key_id"],
            aws_secret_access_key=DUMMY["aws_secret_access_key"],
        )

    def counts(self) -> dict[str, int]:
        return self.proxy.snapshot()

    @contextmanager
    def enforce_iam(self, actions: list[str]) -> Iterator[dict[str, str]]:
        """An IAM user allowed exactly ``actions`` (Resource "*", no conditions: moto evaluates
        neither), and moto enforcing IAM for every request until the block ends."""
        iam = boto3.session.Session().client(
            "iam",
            region_name=REGION,
            endpoint_url=self.moto_url,
            aws_access_key_id=DUMMY["aws_access_key_id"],
            aws_secret_access_key=DUMMY["aws_secret_access_key"],
        )
        iam.create_user(UserName="server-hardening")
        iam.put_user_policy(
            UserName="server-hardening",
            PolicyName="server-hardening",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
                }
            ),
        )
        key = iam.create_access_key(UserName="server-hardening")["AccessKey"]
        self._reset_auth("0")
        try:
            yield {
                "aws_access_key_id": key["AccessKeyId"],
                "aws_secret_access_key": key["SecretAccessKey"],
            }
        finally:
            self._reset_auth("inf")

    def _reset_auth(self, value: str) -> None:
        request = urllib.request.Request(
            f"{self.moto_url}/moto-api/reset-auth",
            data=value.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
