"""The docs stand alone: every relative link in README.md, docs/ and the Helm chart's README
resolves to a file inside this repository (a fresh clone has nothing beside it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
DOCS = sorted(
    [REPO / "README.md", *(REPO / "docs").glob("**/*.md"), *(REPO / "helm").glob("*/README.md")]
)
# [text](target) and [text](target "title"); images too. Code spans are dropped first.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def relative_links(doc: Path) -> list[str]:
    text = CODE.sub("", doc.read_text(encoding="utf-8"))
    return [
        target
        for target in LINK.findall(text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")
    ]


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_repository(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(REPO):
            broken.append(f"{target} (outside the repository)")
        elif not path.exists():
            broken.append(f"{target} (no such file)")
    assert broken == [], f"{doc.relative_to(REPO)}: {broken}"


def test_the_link_finder_finds_links() -> None:
    assert relative_links(REPO / "README.md"), "README.md has no relative links: parser broken?"
