"""The mistakes corpus (tests/mistakes/*.yaml): each file and the verdict its header expects.
See tests/mistakes/README.md for the header's keys."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DIRECTORY = Path(__file__).parent / "mistakes"
_HEADER = re.compile(rb"^# (verdict|field|reason|planned|api|why): (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class Mistake:
    path: Path
    verdict: str  # "refused" or "accepted"
    field: str
    reason: str
    planned: str
    api: str  # the API server's verdict where it differs; else the same as verdict
    why: str

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def refused(self) -> bool:
        return self.verdict == "refused"

    @property
    def reaches_the_api_server(self) -> bool:
        """False where kubectl itself refuses the file (not YAML, not UTF-8, no object)."""
        return self.api != "refused-client"

    @property
    def diverges(self) -> bool:
        """The API server would judge the file otherwise than plan (``why`` says why)."""
        return self.reaches_the_api_server and self.api != self.verdict


def load() -> list[Mistake]:
    out = []
    for path in sorted(DIRECTORY.glob("*.yaml")):
        header = {k.decode(): v.decode().strip() for k, v in _HEADER.findall(path.read_bytes())}
        verdict = header["verdict"]
        assert verdict in {"refused", "accepted"}, f"{path.name}: verdict {verdict!r}"
        api = header.get("api", verdict)
        assert api == verdict or header.get("why"), f"{path.name}: api: without why:"
        out.append(
            Mistake(
                path=path,
                verdict=verdict,
                field=header.get("field", ""),
                reason=header.get("reason", ""),
                planned=header.get("planned", ""),
                api=api,
                why=header.get("why", ""),
            )
        )
    return out


CORPUS = load()
