"""The operator says what plan says: a spec the mistakes corpus refuses puts the resource in
phase Invalid with the same field-naming messages ``hardening plan`` prints for the file."""

from __future__ import annotations

import pytest

from cli_run import run
from mistakes_corpus import CORPUS, Mistake
from server_hardening import manifest, service
from unit.service.test_idle_operator import NAME, NS, Policies, make_state, resources

# Mistakes in the spec of a file that is otherwise a readable, well-named resource: the
# operator only ever sees specs the API server stored.
SPEC_MISTAKES = [
    m
    for m in CORPUS
    if m.refused and m.field.startswith("spec.") and m.reaches_the_api_server
    and "written twice" not in m.reason
]  # fmt: skip


@pytest.mark.parametrize("mistake", SPEC_MISTAKES, ids=lambda m: m.name)
def test_the_operator_reports_the_messages_plan_prints(mistake: Mistake) -> None:
    plan = run("plan", "-f", str(mistake.path))
    printed = [line.split(": ", 1)[1] for line in plan.stderr.splitlines()]
    source = str(mistake.path)
    found = manifest.documents(manifest.decode(mistake.path.read_bytes(), source), source)
    body = manifest.select(found, source).body
    state = make_state(Policies({}), spec=body["spec"])
    service.reconcile_resource(state, NS, NAME)
    (status,) = resources(state).patches
    assert status["phase"] == "Invalid"
    valid = next(c for c in status["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False"
    # The same messages, in the status's order (findings are sorted).
    assert sorted(f["message"] for f in status["findings"]) == sorted(printed)
    assert all(line in valid["message"] for line in printed)
    assert len(valid["message"]) == len("; ".join(printed))


def test_most_of_the_corpus_is_checked_here() -> None:
    assert len(SPEC_MISTAKES) >= 60
