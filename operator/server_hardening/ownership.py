"""How the operator marks what it owns, on every target. Pure: no I/O here.

Ownership is keyed on the resource's ``namespace/name``: a resource deleted and re-created under
the same name takes its rules back instead of leaving them orphaned. The UID is recorded beside
it for audit. Another resource's mark means *conflict*, never "unmanaged".
"""

from __future__ import annotations

import hashlib
import re

from server_hardening.model import ResourceRef

DOMAIN = "hardening.circleci.com"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "server-hardening"
OWNER_LABEL = f"{DOMAIN}/owner"  # label value: "<namespace>.<name>" (label-safe), see owner_label
OWNER_ANNOTATION = f"{DOMAIN}/owner"  # "<namespace>/<name>/<uid>"
ROWS_ANNOTATION = f"{DOMAIN}/guide-rows"  # "LB-IN-1,LB-IN-2"

# AWS tag keys (security-group rules) and the marker in descriptions (AWS and GCP).
OWNER_TAG = f"{DOMAIN}/owner"  # "<namespace>/<name>"
OWNER_UID_TAG = f"{DOMAIN}/owner-uid"
DESCRIPTION_MARKER = "server-hardening"


def owner_key(ref: ResourceRef) -> str:
    """The identity ownership is matched on."""
    return f"{ref.namespace}/{ref.name}"


def owner_annotation(ref: ResourceRef) -> str:
    """``namespace/name/uid``; ``namespace/name`` when the UID is not known (an offline plan:
    the API server assigns it), never a trailing empty UID."""
    return f"{ref.namespace}/{ref.name}/{ref.uid}" if ref.uid else owner_key(ref)


def owner_from_annotation(value: str) -> str:
    """``ns/name/uid`` -> ``ns/name`` (the part ownership is matched on)."""
    parts = value.split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 else value


def owner_label(ref: ResourceRef) -> str:
    """A label value (<= 63 chars, [a-z0-9.-_]) that identifies the owner for label selectors."""
    raw = f"{ref.namespace}.{ref.name}"
    if len(raw) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9_.]*[a-z0-9])?", raw):
        return raw
    # Too long, or a name the API server would not take (offline plans read any file): a
    # readable prefix of label-safe characters and a digest of the whole, never an invalid value.
    digest = hashlib.sha256(raw.encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9_.-]+", "-", raw.lower())[:52].strip(".-_")
    return f"{readable}-{digest}" if readable else digest


def installation_owner_key(ref: ResourceRef, installation: str = "") -> str:
    """The identity ownership is matched on where names are shared by several clusters (a GCP
    project): ``namespace/name``, plus ``@installation`` when the spec sets one."""
    return f"{owner_key(ref)}@{installation}" if installation else owner_key(ref)


def gcp_name_prefix(ref: ResourceRef, installation: str = "") -> str:
    """A firewall-name prefix unique per resource and installation, within GCP's 63-character
    name limit.

    ``svh-`` + a 10-hex digest of namespace/name (and the installation ID when set): collision
    proof across resources, namespaces and installations that set different IDs, leaving room
    for a readable rule suffix. The description carries the readable owner too.
    """
    digest = hashlib.sha256(installation_owner_key(ref, installation).encode()).hexdigest()[:10]
    return f"svh-{digest}-"


def describe(
    rows: tuple[str, ...] | list[str],
    ref: ResourceRef,
    purpose: str = "",
    *,
    installation: str = "",
    with_uid: bool = False,
) -> str:
    """A description that marks the owner and cites the guide rows (AWS: 255 chars max).
    ``with_uid`` (GCP) adds the resource's UID, so another cluster's resource of the same
    namespace/name is told apart from this one."""
    text = f"{DESCRIPTION_MARKER} {installation_owner_key(ref, installation)} [{','.join(rows)}]"
    if with_uid and ref.uid:
        text += f" uid={ref.uid}"
    if purpose:
        text += f" {purpose}"
    return text[:255]


_MARK = re.compile(rf"^{re.escape(DESCRIPTION_MARKER)} (?P<owner>[^/\s]+/[^/\s]+) \[")


def description_owner(description: str) -> str:
    """``ns/name`` (``ns/name@installation``) of the resource that marked this description, or
    "" when unmarked."""
    match = _MARK.match(description or "")
    return match["owner"] if match else ""


_UID = re.compile(r"\] uid=(?P<uid>[0-9A-Za-z-]+)")


def description_uid(description: str) -> str:
    """The resource UID a mark carries, or "" (marks written before UIDs were recorded)."""
    match = _UID.search(description or "")
    return match["uid"] if match else ""


def released_description(description: str) -> str:
    """The description after an orphaning release: the mark is gone, the rows stay readable."""
    text = description or ""
    if description_owner(text):
        text = f"released from {text[len(DESCRIPTION_MARKER) + 1 :]}"
    return text[:2048]
