"""A ServerHardening from a file's bytes, read as kubectl reads them. Pure: no I/O here (the
caller reads the file).

What kubectl does, and so what this does:

- The file is UTF-8 (a byte-order mark is allowed). kubectl's YAML decoder refuses other bytes
  ("invalid leading UTF-8 octet"), so a Latin-1 comment is refused here too, naming the byte
  offset and the line, rather than guessed at.
- A key written twice in one mapping is an error: kubectl refuses the file ("mapping key "mode"
  already defined at line 7") and so does the API server under strict field validation. Last
  one wins would be a silent choice between ``Audit`` and ``Enforce``.
- Scalars are read as kubectl's YAML-to-JSON conversion reads them: ``2027-03-31`` stays the
  string it is (not a date object), ``4.8`` is a number, ``yes`` a boolean (YAML 1.1, as
  kubectl).
- ``---``-separated documents and ``List`` objects (``kubectl get svh -o yaml``) are read item
  by item; one ServerHardening among them is planned, and which one is said. Several are
  refused unless a name picks one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from server_hardening.model import API_VERSION, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR


class ManifestError(ValueError):
    """The file cannot be read as a ServerHardening; the message names the file and why."""


@dataclass(frozen=True)
class Found:
    """One object of the file: where it is (``document 2``, ``document 1, items[3]``)."""

    where: str
    body: Mapping[str, Any]

    @property
    def kind(self) -> object:
        return self.body.get("kind")

    @property
    def name(self) -> str:
        metadata = self.body.get("metadata")
        return str(metadata.get("name")) if isinstance(metadata, Mapping) else ""


@dataclass(frozen=True)
class Selected:
    body: Mapping[str, Any]
    where: str  # "" when the file holds only this object
    objects: int


class _KubectlLoader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as strings (see below)."""


def _duplicate_keys(node: yaml.Node, path: str) -> str | None:
    """The first key written twice in one mapping under ``node``, as ``spec.mode: ...``."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            here = f"{path}.{key}" if path else str(key)
            line = key_node.start_mark.line + 1
            if key is not None and key in seen:
                return (
                    f"{here}: written twice (lines {seen[key]} and {line}); keep one (kubectl "
                    "and the API server refuse a duplicate key rather than pick one)"
                )
            if key is not None:
                seen[key] = line
            found = _duplicate_keys(value_node, here)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found = _duplicate_keys(item, f"{path}[{index}]")
            if found:
                return found
    return None


# kubectl's YAML-to-JSON conversion turns timestamps into strings: no implicit timestamp type.
_KubectlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def decode(data: bytes, source: str) -> str:
    """The file's text; refuses bytes that are not UTF-8, naming the offset and the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        byte = data[exc.start]
        raise ManifestError(
            f"{source}: byte {exc.start} (line {line}) is 0x{byte:02x}, which is not UTF-8 "
            "(kubectl refuses it too): save the file as UTF-8"
        ) from None


def documents(text: str, source: str) -> list[Found]:
    """Every object of the file: each document, and each item of a ``List``."""
    docs: list[object] = []
    loader = _KubectlLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            duplicate = _duplicate_keys(node, "") if node is not None else None
            if duplicate:
                where = f"document {len(docs) + 1}, " if docs else ""
                raise ManifestError(f"{source}: {where}{duplicate}")
            docs.append(loader.construct_document(node) if node is not None else None)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{source}: not valid YAML{where}: {problem}") from None
    finally:
        loader.dispose()
    out: list[Found] = []
    for index, doc in enumerate(docs, start=1):
        if doc is None:
            continue
        where = f"document {index}"
        if not isinstance(doc, Mapping):
            raise ManifestError(
                f"{source}: {where} is {_what(doc)}, not an object: a resource starts with "
                f"apiVersion: {API_VERSION} and kind: {KIND}"
            )
        if _is_list(doc):
            items = doc.get("items")
            if not isinstance(items, list):
                raise ManifestError(f"{source}: {where} is a {doc.get('kind')} without items")
            for i, item in enumerate(items):
                if not isinstance(item, Mapping):
                    raise ManifestError(f"{source}: {where}, items[{i}] is not an object")
                out.append(Found(f"{where}, items[{i}]", item))
        else:
            out.append(Found(where, doc))
    return out


def _is_list(doc: Mapping[str, Any]) -> bool:
    kind = doc.get("kind")
    return isinstance(kind, str) and kind.endswith("List") and "items" in doc


def _what(value: object) -> str:
    return "a list" if isinstance(value, list) else f"a {type(value).__name__} ({value!r:.40})"


def _looks_like_ours(kind: object) -> bool:
    """A kind that was meant to be ServerHardening: another case, the plural or short name."""
    if not isinstance(kind, str):
        return False
    squashed = kind.replace("-", "").replace("_", "").lower()
    return squashed in {KIND.lower(), PLURAL, SINGULAR, *SHORT_NAMES} or squashed.startswith(
        "serverharden"
    )


def select(found: list[Found], source: str, name: str | None = None) -> Selected:
    """The one ServerHardening to plan, or a :class:`ManifestError` that says what the file
    holds and what is expected."""
    ours = [f for f in found if f.kind == KIND]
    if name is not None:
        ours = [f for f in ours if f.name == name]
    if len(ours) == 1:
        only = len(found) == 1 and "items" not in ours[0].where
        return Selected(ours[0].body, "" if only else ours[0].where, len(found))
    if len(ours) > 1:
        listed = ", ".join(f"{f.where}: {f.name or '(no name)'}" for f in ours)
        raise ManifestError(
            f"{source}: {len(ours)} ServerHardening resources ({listed}): plan one at a time "
            "with --name NAME"
        )
    if name is not None and any(f.kind == KIND for f in found):
        names = ", ".join(f.name for f in found if f.kind == KIND)
        raise ManifestError(f"{source}: no ServerHardening named {name!r} (the file has {names})")
    if not found:
        raise ManifestError(
            f"{source}: no document: expected a ServerHardening (apiVersion: {API_VERSION}, "
            f"kind: {KIND})"
        )
    near = [f for f in found if _looks_like_ours(f.kind)]
    described = ", ".join(
        f"{f.where} is kind {f.kind!r}" if f.kind is not None else f"{f.where} has no kind"
        for f in (near or found)[:5]
    )
    api_version = next(
        (
            f.body.get("apiVersion")
            for f in found
            if str(f.body.get("apiVersion", "")).startswith(GROUP)
        ),
        None,
    )
    hint = (
        f" (apiVersion {API_VERSION})"
        if api_version is None or api_version == API_VERSION
        else f" (apiVersion {API_VERSION}, not {api_version})"
    )
    raise ManifestError(f"{source}: no ServerHardening: {described}; expected kind: {KIND}{hint}")
