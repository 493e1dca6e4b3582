"""The mistakes corpus (tests/mistakes/) on a real kube-apiserver with the project's CRD: each
file as ``kubectl apply --dry-run=server -f FILE`` sends it, and the API server's verdict equals
``hardening plan``'s (tests/unit/cli/test_mistakes.py), except where a file's header says
otherwise and why.

What kubectl does with a file, and so what this does: it splits the file into documents and a
``List`` into its items, maps each object's apiVersion and kind to a served resource (a kind the
API does not serve is refused before anything is sent: "no matches for kind"), and sends each
object with ``dryRun=All`` and ``fieldValidation=Strict`` (its default). Each document is sent
as the YAML it is, so duplicate keys and bytes that are not UTF-8 reach the API server's own YAML
decoder (the same decoder kubectl uses). Any object refused: the file is refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException

from e2e.harness import ensure_namespace, install_crd
from mistakes_corpus import CORPUS, Mistake
from server_hardening import manifest
from server_hardening.model import parse_resource, parse_spec

DEFAULT_NAMESPACE = "mistakes"
SERVER_HARDENINGS = (
    f"/apis/hardening.circleci.com/v1alpha1/namespaces/{DEFAULT_NAMESPACE}/serverhardenings"
)


@dataclass
class Verdict:
    refused: bool
    messages: list[str]
    stored: list[dict[str, Any]]  # the ServerHardenings as the API server would store them


@pytest.fixture(scope="module")
def api(admin_api: Any) -> Any:
    install_crd(admin_api)
    for namespace in (DEFAULT_NAMESPACE, "circleci-server"):
        ensure_namespace(admin_api, namespace)
    return admin_api


def _documents(data: bytes) -> list[bytes]:
    """The file's documents, split as kubectl's YAML reader splits them (on ``---`` lines)."""
    chunks = re.split(rb"(?m)^---[ \t]*(?:#.*)?$\r?\n?", data)
    return [c for c in chunks if c.strip() and not _only_comments(c)] or [data]


def _only_comments(chunk: bytes) -> bool:
    return all(not line.strip() or line.lstrip().startswith(b"#") for line in chunk.splitlines())


def _resource_path(api: Any, api_version: str, kind: str, namespace: str) -> str | None:
    """Where kubectl would send an object of this apiVersion and kind; None: not served."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    try:
        response = api.call_api(base, "GET", response_type="object", _return_http_data_only=True)
    except ApiException:
        return None
    for resource in response.get("resources") or []:
        if resource.get("kind") == kind and "/" not in resource["name"]:
            scoped = f"/namespaces/{namespace}" if resource.get("namespaced") else ""
            return f"{base}{scoped}/{resource['name']}"
    return None


def _send(api: Any, path: str, body: Any, content_type: str) -> str | dict[str, Any]:
    """A dry-run create with strict field validation: the refusal's message, or the object as
    it would be stored. An object that exists already is no refusal (``kubectl apply`` would
    patch it)."""
    try:
        response = api.call_api(
            path,
            "POST",
            query_params=[("dryRun", "All"), ("fieldValidation", "Strict")],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            _preload_content=False,
        )
    except ApiException as exc:
        assert exc.status in {400, 404, 409, 415, 422}, (exc.status, exc.body)
        status = json.loads(exc.body)
        if status.get("reason") == "AlreadyExists":
            return {}
        return str(status.get("message", exc.body))
    stored: dict[str, Any] = json.loads(response[0].data)
    return stored


def kubectl_dry_run(api: Any, data: bytes) -> Verdict:
    """``kubectl apply --dry-run=server -f`` of a file's bytes, as the module docstring says."""
    messages: list[str] = []
    stored: list[dict[str, Any]] = []
    for chunk in _documents(data):
        try:
            head = yaml.load(chunk, Loader=yaml.BaseLoader)  # noqa: S506 (BaseLoader: strings only)
        except (yaml.YAMLError, UnicodeDecodeError):
            head = None
        if not isinstance(head, dict):
            # Not an object kubectl can read: what the API server's decoder says of it.
            sent = _send(api, SERVER_HARDENINGS, chunk, "application/yaml")
            if isinstance(sent, str):
                messages.append(sent)
            continue
        objects: list[tuple[dict[str, Any], Any, str]]
        if str(head.get("kind", "")).endswith("List") and isinstance(head.get("items"), list):
            # kubectl sends a List's items one by one, as JSON.
            items = json.loads(json.dumps(yaml.safe_load(chunk)["items"], default=str))
            objects = [(i, i, "application/json") for i in items]
        else:
            objects = [(head, chunk, "application/yaml")]
        for obj, body, content_type in objects:
            metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            namespace = str(metadata.get("namespace") or DEFAULT_NAMESPACE)
            path = _resource_path(
                api, str(obj.get("apiVersion", "")), str(obj.get("kind", "")), namespace
            )
            if path is None:
                messages.append(
                    f"no matches for kind {obj.get('kind')!r} in version {obj.get('apiVersion')!r}"
                )
                continue
            sent = _send(api, path, body, content_type)
            if isinstance(sent, str):
                messages.append(sent)
            elif sent.get("kind") == "ServerHardening":
                stored.append(sent)
    return Verdict(refused=bool(messages), messages=messages, stored=stored)


JUDGED = [m for m in CORPUS if m.api != "skip"]


@pytest.mark.parametrize("mistake", JUDGED, ids=lambda m: m.name)
def test_the_api_server_gives_the_verdict_plan_gives(api: Any, mistake: Mistake) -> None:
    verdict = kubectl_dry_run(api, mistake.path.read_bytes())
    expected = mistake.api if mistake.diverges else mistake.verdict
    assert verdict.refused == (expected != "accepted"), (mistake.why, verdict.messages)
    if verdict.refused and mistake.reaches_the_api_server and mistake.field:
        # The API server (or kubectl's mapping, for apiVersion and kind) names the field too:
        # its last part, or the part that holds it (a label value's map: "ObjectMeta.labels").
        parts = [p.rstrip("]").lower() for p in re.split(r"[.\[]", mistake.field)]
        named = {parts[-1], parts[-1].removeprefix("api")} | set(parts[-2:-1])
        text = " ".join(verdict.messages).lower()
        assert any(part in text for part in named), verdict.messages
    if not verdict.refused and not mistake.refused:
        # Accepted by both, and read alike: plan plans the spec the API server would store.
        (stored,) = verdict.stored
        source = str(mistake.path)
        found = manifest.documents(manifest.decode(mistake.path.read_bytes(), source), source)
        _, planned = parse_resource(manifest.select(found, source).body)
        assert parse_spec(stored["spec"]) == planned


def test_the_divergences_are_few_and_each_says_why() -> None:
    divergent = [m for m in CORPUS if m.diverges]
    assert len(divergent) <= 3
    assert all(len(m.why) > 40 for m in divergent)
