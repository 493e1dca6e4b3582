"""Golden files: `hardening plan -o json` of each example, byte for byte.

A change to what the product writes shows up here as a diff a reviewer reads. Regenerate after
an intended change with ``UPDATE_GOLDEN=1 scripts/test tests/golden`` and review the diff. The
truth tables (tests/unit/renderers, tests/truth) check what the output *means*.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builders import example
from server_hardening.plan import build_plan

GOLDEN = Path(__file__).resolve().parent
EXAMPLES = sorted(p.stem for p in (GOLDEN.parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("name", EXAMPLES)
def test_plan_matches_the_golden_file(name: str) -> None:
    ref, spec = example(name)
    rendered = json.dumps(build_plan(spec, ref).as_json(), indent=2, sort_keys=True) + "\n"
    golden = GOLDEN / name / "plan.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file for {name}: run with UPDATE_GOLDEN=1"
    assert rendered == golden.read_text(), f"{name}: plan differs from {golden}"
