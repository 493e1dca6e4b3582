"""Every file of the mistakes corpus (tests/mistakes/) through ``hardening plan``: refused ones
name the file, the field and the reason in words; accepted ones plan. The same files go to the
real API server in tests/e2e/test_mistakes.py."""

from __future__ import annotations

import inspect
import json
import re

import pytest
from pydantic import BaseModel

from cli_run import run
from mistakes_corpus import CORPUS, Mistake
from server_hardening import model

# What a person should never read: Python's and pydantic's words.
JARGON = ("Traceback", "Input should", "instance of", "pydantic", "Value error", "errors.pydantic")
CLASS_NAMES = sorted(
    name
    for name, obj in inspect.getmembers(model, inspect.isclass)
    if issubclass(obj, BaseModel | Exception) and name != model.KIND
)


def test_the_corpus_is_large_and_both_verdicts_are_in_it() -> None:
    refused = [m for m in CORPUS if m.refused]
    assert len(CORPUS) >= 80
    assert len(refused) >= 60 and len(CORPUS) - len(refused) >= 10
    assert len([m for m in CORPUS if m.diverges]) <= 5


@pytest.mark.parametrize("mistake", CORPUS, ids=lambda m: m.name)
def test_plan_gives_the_verdict_in_words(mistake: Mistake) -> None:
    result = run("plan", "-f", str(mistake.path), "-o", "json")
    for word in JARGON:
        assert word not in result.stderr
    for name in CLASS_NAMES:
        assert not re.search(rf"\b{name}\b", result.stderr), f"{name} in {result.stderr}"
    if not mistake.refused:
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["profile"]
        if mistake.planned:
            assert f"({mistake.planned}): ServerHardening circleci-server/" in result.stderr
        else:
            assert result.stderr == ""
        return
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines and all(str(mistake.path) in line for line in lines), result.stderr
    assert any(mistake.field in line and mistake.reason in line for line in lines), (
        f"expected {mistake.field!r} and {mistake.reason!r} on one line of:\n{result.stderr}"
    )
