"""How the operator marks what it owns, on every target. Pure: no I/O here.

Ownership is keyed on the resource's ``namespace/name``: a resource deleted and re-created under
the same name takes its rules back instead of leaving them orphaned. The UID is recorded beside
it for audit. Another resource's mark means *conflict*, never "unmanaged".

Beside the owner, every mark records the rule's *provenance*: ``created`` (the operator wrote
it) or ``adopted`` (it was there before, exactly as desired, and only the marks were added).
Release follows it (:func:`release_action`): ``deletionPolicy: Delete`` removes only what the
operator created and returns everything else unmarked, so an uninstall never takes away access
the installation had before the operator. A mark written before provenance was recorded is
``unknown``: nothing proves the operator created that rule, so it is returned unmarked, never
removed.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable

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
# Provenance: an AWS rule tag and a NetworkPolicy annotation (value "created" or "adopted"), and
# a ``provenance=<value>`` word in GCP descriptions.
PROVENANCE_TAG = f"{DOMAIN}/provenance"
PROVENANCE_ANNOTATION = PROVENANCE_TAG


class Provenance(enum.StrEnum):
    """Where a marked rule came from."""

    CREATED = "created"  # the operator wrote it
    ADOPTED = "adopted"  # it was there before the operator, exactly as desired: marks added
    UNKNOWN = "unknown"  # marked before provenance was recorded

    @classmethod
    def of(cls, value: str | None) -> Provenance:
        """The provenance a mark records; anything else (no mark, a stray value) is unknown."""
        try:
            found = cls(value or "")
        except ValueError:
            return cls.UNKNOWN
        return found

    @property
    def recorded(self) -> str:
        """The value to write in a mark, or "" when there is none to write."""
        return "" if self is Provenance.UNKNOWN else self.value


def claimed_provenance(earlier: Provenance) -> Provenance:
    """The provenance of a rule this resource adopts or takes back: what its earlier marks
    recorded (a rule the operator created, orphaned, then took back is still its creation), else
    ``adopted``: an unmarked rule is never promoted to one the operator may delete."""
    return earlier if earlier is not Provenance.UNKNOWN else Provenance.ADOPTED


class ReleaseAction(enum.Enum):
    REMOVE = "remove"  # deletionPolicy Delete, and the operator created it
    RETURN = "return"  # left in place, this resource's marks dropped


def release_action(
    provenance: Provenance, *, delete: bool, target_provenances: Iterable[Provenance] = ()
) -> ReleaseAction:
    """What release does with one owned rule.

    Only ``Delete`` removes, and only what the operator created. When any rule of the same
    target has unknown provenance, nothing there is removed: that target's rules were marked
    before provenance was recorded, and removing the created part of a set whose other part
    may be the operator's too could leave a deny (a default-deny policy, GCP's deny floor)
    without the allows beside it.
    """
    if not delete or provenance is not Provenance.CREATED:
        return ReleaseAction.RETURN
    if Provenance.UNKNOWN in set(target_provenances):
        return ReleaseAction.RETURN
    return ReleaseAction.REMOVE


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
    provenance: Provenance | None = None,
) -> str:
    """A description that marks the owner and cites the guide rows (AWS: 255 chars max).
    ``with_uid`` (GCP) adds the resource's UID, so another cluster's resource of the same
    namespace/name is told apart from this one; ``provenance`` (GCP) records where the rule
    came from (AWS records it in a tag)."""
    text = f"{DESCRIPTION_MARKER} {installation_owner_key(ref, installation)} [{','.join(rows)}]"
    if with_uid and ref.uid:
        text += f" uid={ref.uid}"
    if provenance is not None and provenance.recorded:
        text += f" provenance={provenance.recorded}"
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
_PROVENANCE_WORD = re.compile(r" provenance=(?P<value>[a-z]+)")


def description_uid(description: str) -> str:
    """The resource UID a mark carries, or "" (marks written before UIDs were recorded)."""
    match = _UID.search(description or "")
    return match["uid"] if match else ""


def description_provenance(description: str) -> Provenance:
    """The provenance a description's mark records (also after an orphaning release)."""
    match = _PROVENANCE_WORD.search(description or "")
    return Provenance.of(match["value"] if match else "")


def with_description_provenance(description: str, provenance: Provenance) -> str:
    """``description`` recording ``provenance`` (right after the rows and UID), or recording
    none for ``unknown``."""
    text = _PROVENANCE_WORD.sub("", description or "")
    if provenance is Provenance.UNKNOWN:
        return text
    word = f" provenance={provenance.value}"
    end = text.find("]")
    if end < 0:
        return (text + word)[:2048]
    uid = _UID.match(text, end)
    at = uid.end() if uid else end + 1
    return (text[:at] + word + text[at:])[:2048]


def without_description_provenance(description: str) -> str:
    """What a description says apart from its provenance word: the part compared for drift."""
    return _PROVENANCE_WORD.sub("", description or "")


def released_description(description: str) -> str:
    """The description after an orphaning release: the mark is gone, the rows stay readable."""
    text = description or ""
    if description_owner(text):
        text = f"released from {text[len(DESCRIPTION_MARKER) + 1 :]}"
    return text[:2048]
